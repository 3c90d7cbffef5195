"""Blue/green on one host: --reuse-port, --bind-when-ready, the API on the admin port,
and a SIGTERM that drains (no request dropped while the other instance takes over)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import requests

import bundlewriter as bw
from conftest import Hammer, free_port, infer_body

REUSE = ["--reuse-port", "--bind-when-ready", "--drain-seconds", "3"]


def _body(rows: np.ndarray) -> bytes:
    return json.dumps(infer_body(rows[:1])).encode()


def _listening(port: int) -> bool:
    """Whether any socket LISTENs on PORT (IPv4), as the kernel lists it."""
    tcp = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(
        line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"  # 0A = LISTEN
        for line in tcp
    )


def _open(s) -> bool:
    """Ready on its admin port and its public listener open (read from its log)."""
    return s.wait(
        lambda: (
            s.admin("GET", "/v2/models/digits/ready").status_code == 200
            and any(r.get("msg") == "public listener open" for r in s.log_records())
        )
    )


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_two_instances_share_the_public_port(make_server, bundle_root: Path, rows: np.ndarray) -> None:
    port = free_port()
    blue = make_server(bundle_root, version="1", port=port, extra=REUSE, wait_live="admin")
    assert _open(blue), blue.logs()
    green = make_server(bundle_root, version="2", port=port, extra=REUSE, wait_live="admin")
    assert _open(green), green.logs()
    # Each instance is addressable on its own admin port, whatever the public port does.
    assert blue.admin("GET", "/v2/models/digits/status").json()["serving_version"] == "1"
    assert green.admin("GET", "/v2/models/digits/status").json()["serving_version"] == "2"
    seen = set()
    for _ in range(200):  # new connections: the kernel spreads them over both listeners
        r = requests.post(blue.url + "/v2/models/digits/infer", data=_body(rows), timeout=10)
        assert r.status_code == 200
        seen.add(r.json()["model_version"])
        if seen == {"1", "2"}:
            break
    assert seen == {"1", "2"}


def test_bind_when_ready_never_opens_public_port_on_a_bad_bundle(
    make_server, bundle_root: Path, models: dict[str, bytes]
) -> None:
    bw.write_bundle(bundle_root, "digits", "9", models["b"], tamper_outputs=True)
    s = make_server(bundle_root, version="9", extra=REUSE, wait_live="admin")
    assert s.wait(lambda: "initial load failed" in str(s.admin("GET", "/v2/models/digits/status").json()["error"])), (
        s.logs()
    )
    r = s.admin("GET", "/v2/models/digits/ready")
    assert r.status_code == 503 and "differs from the recorded value" in r.json()["error"]
    assert _refused(s.port) and not _listening(s.port)
    assert not any(rec.get("msg") == "public listener open" for rec in s.log_records())
    # Repaired in place (a good version loaded through the admin port): the port opens then.
    r = s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "1"}})
    assert r.status_code == 200, r.text
    assert s.wait(lambda: not _refused(s.port)), s.logs()
    assert s.get("/v2/models/digits/ready").status_code == 200


def test_admin_port_serves_the_public_api(make_server, bundle_root: Path, rows: np.ndarray) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    r = s.admin("POST", "/v2/models/digits/infer", data=_body(rows))
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert s.admin("GET", "/v2/models/digits").json()["versions"] == ["1"]
    assert s.admin("GET", "/v2/models/digits/versions/1/ready").status_code == 200
    assert s.admin("GET", "/v2/health/ready").json() == {"ready": True}
    assert s.admin("GET", "/v2/models/digits/status").json()["serving_version"] == "1"
    assert any(
        line.startswith("edgeml_requests_total{") and 'endpoint="infer"' in line
        for line in s.admin("GET", "/metrics").text.splitlines()
    )
    assert s.admin("GET", "/v2/models/nope/ready").status_code == 404
    # ... while the repository (swap) API stays off the public port.
    assert s.post("/v2/repository/models/digits/load", json={}).status_code == 404


def test_sigterm_under_load_drops_no_request(make_server, bundle_root: Path, rows: np.ndarray) -> None:
    port = free_port()
    old = make_server(bundle_root, version="1", port=port, extra=REUSE, wait_live="admin")
    assert _open(old), old.logs()
    new = make_server(bundle_root, version="2", port=port, extra=REUSE, wait_live="admin")
    assert _open(new), new.logs()
    with Hammer(old.url + "/v2/models/digits/infer", _body(rows), threads=6) as h:
        assert h.wait_for(300)
        assert old.stop() == 0, old.log_path.read_text()
        assert h.wait_for(300)
    assert h.failures == [], h.failures[:5]
    assert h.versions.get("2", 0) >= 300
    msgs = [json.loads(line).get("msg") for line in old.log_path.read_text().splitlines() if line.startswith("{")]
    assert "public listener drained" in msgs


def test_new_flags_in_help_and_bad_env_boolean() -> None:
    from test_cli import _run

    out = _run(["--help"]).stdout
    for flag in ("--reuse-port", "--bind-when-ready", "--drain-seconds", "EDGEML_REUSE_PORT"):
        assert flag in out
    r = _run(["--bundles", "/tmp", "--model", "digits"], env={"EDGEML_BIND_WHEN_READY": "maybe"})
    assert r.returncode == 2 and "EDGEML_BIND_WHEN_READY='maybe' is not a boolean" in r.stderr
    r = _run(["--bundles", "/tmp", "--model", "digits", "--drain-seconds", "-1"])
    assert r.returncode == 2 and "--drain-seconds" in r.stderr
