"""Blue/green with --public-hold: a new instance takes no public traffic until told, and the
deployer switches the shared port between instances (and back) with no failed request."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import requests

import bundlewriter as bw
from conftest import Hammer, ServerProc, free_port, infer_body

SHARED = ["--reuse-port", "--drain-seconds", "3"]
HOLD = [*SHARED, "--public-hold"]
THREADS = 6


def _body(rows: np.ndarray) -> bytes:
    return json.dumps(infer_body(rows[:1])).encode()


def _listeners(port: int) -> int:
    """How many sockets LISTEN on PORT (IPv4), as the kernel lists them."""
    tcp = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1
        for line in tcp
        if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"  # 0A = LISTEN
    )


def _public(s: ServerProc, action: str) -> dict[str, object]:
    r = s.admin("POST", f"/admin/public/{action}")
    assert r.status_code == 200, r.text
    return r.json()


def _fresh_connection_versions(url: str, body: bytes, n: int) -> set[str]:
    """Versions answering N requests, each on a new connection (the kernel picks a listener)."""
    seen = set()
    for _ in range(n):
        r = requests.post(url, data=body, timeout=10, headers={"Connection": "close"})
        assert r.status_code == 200, r.text
        seen.add(r.json()["model_version"])
    return seen


def _switch(h: Hammer, to: ServerProc, away: ServerProc, version: str) -> None:
    """Open TO, close AWAY; then every answer comes from VERSION."""
    assert _public(to, "open")["public"] == "open"
    assert _public(away, "close")["public"] == "closed"
    # Keep-alive clients get at most a few more answers from AWAY (each told
    # "Connection: close"); after that, only TO answers.
    assert h.wait_for(THREADS * 5 + 100)
    mark = h.mark()
    assert h.wait_for(200)
    assert set(h.answers_since(mark)) == {version}


def test_held_instance_takes_no_traffic_until_opened_then_switches_back_and_forth(
    make_server, bundle_root: Path, rows: np.ndarray
) -> None:
    port = free_port()
    body = _body(rows)
    blue = make_server(bundle_root, version="1", port=port, extra=SHARED)
    assert blue.wait_ready()
    green = make_server(bundle_root, version="2", port=port, extra=HOLD, wait_live="admin")
    assert green.wait(lambda: green.admin("GET", "/v2/models/digits/ready").status_code == 200), green.logs()
    assert green.admin("GET", "/admin/public").json()["public"] == "held"
    assert green.admin("GET", "/v2/repository/models/digits/status").json()["public"] == "held"
    assert blue.admin("GET", "/admin/public").json()["public"] == "open"
    assert _listeners(port) == 1  # green never opened a socket on the port
    url = blue.url + "/v2/models/digits/infer"
    with Hammer(url, body, threads=THREADS, max_requests=200_000, max_seconds=120) as h:
        assert h.wait_for(300)
        assert _fresh_connection_versions(url, body, 50) == {"1"}
        assert h.wait_for(100)
        assert set(h.answers_since(0)) == {"1"}
        _switch(h, green, blue, "2")
        assert _fresh_connection_versions(url, body, 50) == {"2"}
        assert blue.admin("GET", "/admin/public").json()["public"] == "closed"
        # The closed instance stays up with its model, reachable on its admin port.
        assert blue.admin("GET", "/v2/models/digits/ready").status_code == 200
        assert blue.proc.poll() is None
        # Back and forth twice more.
        _switch(h, blue, green, "1")
        _switch(h, green, blue, "2")
        _switch(h, blue, green, "1")
    assert h.failures == [], h.failures[:5]
    assert set(h.versions) == {"1", "2"}
    assert _listeners(port) == 1
    assert blue.stop() == 0, blue.logs()
    assert green.stop() == 0, green.logs()
    for proc, opened in ((green, 2), (blue, 3)):  # blue: at start, then twice on request
        lines = proc.log_path.read_text().splitlines()
        msgs = [json.loads(line).get("msg") for line in lines if line.startswith("{")]
        assert msgs.count("public listener open") == opened
        assert msgs.count("public listener drained") == opened  # each opening drained once


def test_open_and_close_are_idempotent_and_refuse_without_a_model(
    make_server, bundle_root: Path, models: dict[str, bytes], rows: np.ndarray
) -> None:
    bw.write_bundle(bundle_root, "digits", "9", models["b"], tamper_outputs=True)
    s = make_server(bundle_root, version="9", extra=HOLD, wait_live="admin")
    assert s.wait(lambda: "initial load failed" in str(s.admin("GET", "/v2/models/digits/status").json()["error"]))
    r = s.admin("POST", "/admin/public/open")
    assert r.status_code == 409 and "no model is ready" in r.json()["error"] and r.json()["public"] == "held"
    assert _listeners(s.port) == 0
    # Repaired in place: still held (only /admin/public/open opens it) ...
    assert s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "1"}}).ok
    assert s.admin("GET", "/admin/public").json()["public"] == "held" and _listeners(s.port) == 0
    # ... then opened, twice.
    assert _public(s, "open")["public"] == "open"
    assert _public(s, "open")["public"] == "open"
    assert _listeners(s.port) == 1
    assert s.post("/v2/models/digits/infer", data=_body(rows)).json()["model_version"] == "1"
    assert s.get("/v2/models/digits/status").json()["public"] == "open"
    s.session.close()
    # Closed, twice; reopened.
    assert _public(s, "close")["public"] == "closed"
    assert _public(s, "close")["public"] == "closed"
    assert s.wait(lambda: _listeners(s.port) == 0)
    assert s.admin("GET", "/admin/public").json()["public"] == "closed"
    assert _public(s, "open")["public"] == "open"
    assert requests.get(s.url + "/v2/health/ready", timeout=5).status_code == 200
    # Methods and unknown actions.
    assert s.admin("GET", "/admin/public/open").status_code == 405
    assert s.admin("POST", "/admin/public").status_code == 405
    assert s.admin("POST", "/admin/public/ajar").status_code == 404
    assert s.admin("GET", "/admin/nothing").status_code == 404
    # Not on the public port.
    assert requests.post(s.url + "/admin/public/close", timeout=5).status_code == 404
    assert s.stop() == 0


def test_close_without_hold_keeps_the_process_up(make_server, bundle_root: Path, rows: np.ndarray) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    assert s.admin("GET", "/admin/public").json()["public"] == "open"
    assert _public(s, "close")["public"] == "closed"
    assert s.wait(lambda: _listeners(s.port) == 0)
    assert s.proc.poll() is None and s.admin("GET", "/v2/health/ready").status_code == 200
    assert _public(s, "open")["public"] == "open"
    r = requests.post(s.url + "/v2/models/digits/infer", data=_body(rows), timeout=10)
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    # SIGTERM with the public listener closed: a clean exit too.
    assert _public(s, "close")["public"] == "closed"
    assert s.stop() == 0
