"""deploy_model.yml and rollback.yml refuse a --limit that leaves out localhost, where the
rollout is planned, reported and judged (without those plays a rollout updated nothing and
a failed rollback ended "ok"). Real ansible-playbook runs; the check happens on the
controller before any host is contacted (the hosts' addresses accept no connection)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUNS = {
    "deploy_model.yml": {"model_version": "1.0.0"},
    "rollback.yml": {"rollback_to": "1.0.0"},
}


def run(tmp_path: Path, playbook: str, limit: str | None) -> subprocess.CompletedProcess:
    inventory = tmp_path / "hosts.yml"
    # Port 9 on 127.0.0.1: nothing listens there, so a host contacted would be unreachable.
    hosts = {name: {"ansible_host": "127.0.0.1", "ansible_port": 9} for name in ("edge-1", "edge-2")}
    inventory.write_text(json.dumps({"all": {"children": {"edge": {"hosts": hosts}}}}))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    return subprocess.run(
        [BIN / "ansible-playbook", "-i", inventory, ROOT / "playbooks" / playbook, "-e", json.dumps(RUNS[playbook]),
         *(["--limit", limit] if limit else [])],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )


@pytest.mark.parametrize("playbook", list(RUNS))
@pytest.mark.parametrize("limit", ["edge-2", "all"])
def test_a_limit_without_localhost_is_refused_before_any_host_is_contacted(tmp_path, playbook, limit):
    result = run(tmp_path, playbook, limit)
    assert result.returncode != 0
    assert f"--limit {limit} leaves out localhost" in result.stdout, result.stdout[-3000:]
    assert "UNREACHABLE" not in result.stdout


@pytest.mark.parametrize("playbook", list(RUNS))
def test_a_limit_keeping_localhost_passes_the_check(tmp_path, playbook):
    """The run goes on, fails on edge-2 (it cannot be reached or deployed to here), and is
    reported and judged on localhost: the plays a limit without localhost would skip."""
    result = run(tmp_path, playbook, "edge-2,localhost")
    assert "leaves out localhost" not in result.stdout
    assert "TASK [Check that the limit keeps localhost" in result.stdout
    assert "TASK [Print the rollout summary]" in result.stdout, result.stdout[-3000:]
    assert "edge-2" in result.stdout and "edge-1" not in result.stdout
    assert result.returncode != 0
