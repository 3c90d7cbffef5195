"""CLI flags, environment equivalents, clear failures, JSON logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from conftest import SERVER_DIR, free_port


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeml_server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, "PYTHONPATH": str(SERVER_DIR), **(env or {})},
    )


@pytest.mark.parametrize(
    "args,words",
    [
        ([], "--bundles"),
        (["--bundles", "/tmp"], "--model"),
        (["--bundles", "/tmp", "--model", "Bad Name"], "not a valid bundle name"),
        (["--bundles", "/tmp", "--model", "digits", "--version", ".."], "not a valid bundle version"),
        (["--bundles", "/tmp", "--model", "digits", "--port", "0"], "--port"),
        (["--bundles", "/tmp", "--model", "digits", "--port", "9000", "--admin-port", "9000"], "must differ"),
        (["--bundles", "/tmp", "--model", "digits", "--signature-policy", "sometimes"], "--signature-policy"),
    ],
)
def test_bad_arguments_exit_2(args: list[str], words: str) -> None:
    r = _run(args)
    assert r.returncode == 2 and words in r.stderr


def test_help_lists_flags() -> None:
    r = _run(["--help"])
    for flag in (
        "--bundles",
        "--model",
        "--version",
        "--host",
        "--port",
        "--admin-port",
        "--max-body-bytes",
        "--log-level",
        "--intra-op-threads",
        "--signature-policy",
        "--trusted-keys",
    ):
        assert flag in r.stdout
        assert "EDGEML_" in r.stdout


def test_env_vars_configure_the_server(bundle_root: Path, tmp_path: Path) -> None:
    # No flags at all: everything comes from the environment.
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(SERVER_DIR),
        "EDGEML_BUNDLES": str(bundle_root),
        "EDGEML_MODEL": "digits",
        "EDGEML_VERSION": "2",
        "EDGEML_PORT": str(port),
        "EDGEML_HOST": "127.0.0.1",
        "EDGEML_ADMIN_PORT": "0",
        "EDGEML_LOG_LEVEL": "debug",
    }
    log = open(tmp_path / "env.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeml_server"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}"
        ok = False
        for _ in range(300):
            try:
                if requests.get(url + "/v2/health/ready", timeout=1).status_code == 200:
                    ok = True
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        assert ok, (tmp_path / "env.log").read_text()
        assert requests.get(url + "/v2/models/digits", timeout=5).json()["versions"] == ["2"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        log.close()
    lines = (tmp_path / "env.log").read_text().splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def test_port_in_use_exits_non_zero(make_server, bundle_root: Path) -> None:
    s = make_server(bundle_root)
    r = _run(
        [
            "--bundles",
            str(bundle_root),
            "--model",
            "digits",
            "--host",
            "127.0.0.1",
            "--port",
            str(s.port),
            "--admin-port",
            "0",
        ]
    )
    assert r.returncode != 0


def test_public_hold_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeml_server.cli import parse

    base = ["--bundles", "/tmp", "--model", "digits"]
    assert parse(base).public_hold is False
    assert parse([*base, "--public-hold"]).public_hold is True
    for text, value in (("1", True), ("yes", True), ("off", False), ("", False)):
        monkeypatch.setenv("EDGEML_PUBLIC_HOLD", text)
        assert parse(base).public_hold is value
    assert "--public-hold" in _run(["--help"]).stdout and "EDGEML_PUBLIC_HOLD" in _run(["--help"]).stdout


@pytest.mark.parametrize(
    "args,env,words",
    [
        ([], {"EDGEML_PUBLIC_HOLD": "maybe"}, "EDGEML_PUBLIC_HOLD='maybe' is not a boolean"),
        (["--public-hold", "--admin-port", "0"], {}, "--public-hold (EDGEML_PUBLIC_HOLD) needs the admin listener"),
        (["--admin-port", "0"], {"EDGEML_PUBLIC_HOLD": "1"}, "needs the admin listener"),
    ],
)
def test_bad_public_hold_exits_2(args: list[str], env: dict[str, str], words: str) -> None:
    r = _run(["--bundles", "/tmp", "--model", "digits", *args], env=env)
    assert r.returncode == 2 and words in r.stderr, r.stderr


def test_signature_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from edgeml_server.cli import parse
    from edgeml_server.signing import SignaturePolicy

    base = ["--bundles", "/tmp", "--model", "digits"]
    monkeypatch.delenv("EDGEML_SIGNATURE_POLICY", raising=False)
    monkeypatch.delenv("EDGEML_TRUSTED_KEYS", raising=False)
    assert parse(base).signatures == SignaturePolicy("optional", Path("/etc/edgeml/trusted-keys"))
    monkeypatch.setenv("EDGEML_SIGNATURE_POLICY", "required")
    monkeypatch.setenv("EDGEML_TRUSTED_KEYS", "/srv/keys")
    assert parse(base).signatures == SignaturePolicy("required", Path("/srv/keys"))
    flags = [*base, "--signature-policy", "optional", "--trusted-keys", "/k"]
    assert parse(flags).signatures == SignaturePolicy("optional", Path("/k"))
    # argparse checks choices of flags only, not of defaults taken from the environment.
    r = _run(base, env={"EDGEML_SIGNATURE_POLICY": "sometimes"})
    assert r.returncode == 2 and "EDGEML_SIGNATURE_POLICY='sometimes' is not one of required, optional" in r.stderr
