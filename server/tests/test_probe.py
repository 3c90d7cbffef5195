"""The healthcheck probe says ready only when the server is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SERVER_SRC = Path(__file__).resolve().parents[1]


def _probe(*args: str) -> int:
    command = [sys.executable, "-m", "edgeml_server.probe", *args]
    return subprocess.run(command, check=False, cwd=SERVER_SRC, capture_output=True, timeout=30).returncode


def test_probe_follows_readiness(server):
    assert _probe(f"{server.url}/v2/health/ready") == 0
    assert _probe(f"{server.url}/v2/models/nosuchmodel/ready") == 1


def test_probe_fails_when_nothing_listens():
    assert _probe("http://127.0.0.1:9/v2/health/ready") == 1


def test_probe_needs_exactly_one_url():
    assert _probe("") == 1
    assert _probe() == 2
