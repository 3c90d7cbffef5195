"""In-place version swap under concurrent load: zero failed requests, version changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import bundlewriter as bw
from conftest import Hammer, infer_body

THREADS = 6


def _body(rows: np.ndarray) -> bytes:
    return json.dumps(infer_body(rows[:1])).encode()


def _metric(text: str, key: str) -> float:
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(key)


def test_swap_by_pointer_and_sighup_under_load(make_server, bundle_root: Path, rows: np.ndarray) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    with Hammer(s.url + "/v2/models/digits/infer", _body(rows), threads=THREADS) as h:
        assert h.wait_for(200)
        bw.set_pointer(bundle_root, "digits", "2")
        s.hup()
        assert s.wait(lambda: s.serving() == "2"), s.logs()
        assert h.wait_for(200)
        # ... and back again, to show the old version was really unloaded and reloadable.
        bw.set_pointer(bundle_root, "digits", "1")
        s.hup()
        assert s.wait(lambda: s.serving() == "1"), s.logs()
        assert h.wait_for(200)
    assert h.failures == [], h.failures[:5]
    assert set(h.versions) == {"1", "2"}
    st = s.get("/v2/models/digits/status").json()
    assert (
        st["last_swap"]["result"] == "success"
        and st["last_swap"]["trigger"] == "sighup"
        and st["swaps"] == {"success": 2, "failure": 0}
    )
    assert st["draining_versions"] == []
    text = s.get("/metrics").text
    assert _metric(text, 'edgeml_model_swaps_total{model="digits",result="success"}') == 2
    assert f'edgeml_model_info{{model="digits",sha256="{st["sha256"]}",version="1"}} 1.0' in text
    assert 'version="2"} 1.0' not in text.split("edgeml_model_info")[1].split("\n# ")[0]
    msgs = [r.get("msg") for r in s.log_records()]
    assert "swap done; now serving" in msgs and "unloaded old version" in msgs


def test_swap_by_admin_endpoint_under_load(make_server, bundle_root: Path, rows: np.ndarray) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    with Hammer(s.url + "/v2/models/digits/infer", _body(rows), threads=THREADS) as h:
        assert h.wait_for(200)
        r = s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "2"}})
        assert (
            r.status_code == 200 and r.json()["status"] == "swapped" and r.json()["previous_version"] == "1"
        )
        # The load call returns after the switch: the very next metadata read shows it.
        assert s.get("/v2/models/digits").json()["versions"] == ["2"]
        assert s.get("/v2/models/digits/versions/2/ready").status_code == 200
        assert h.wait_for(200)
    assert h.failures == [], h.failures[:5]
    assert set(h.versions) == {"1", "2"}
    # Same version again: a no-op, not a swap.
    r = s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "2"}})
    assert r.status_code == 200 and r.json()["status"] == "unchanged"
    # No version parameter: the pointer file (still 1) is re-read.
    r = s.admin("POST", "/v2/repository/models/digits/load")
    assert r.status_code == 200 and r.json()["version"] == "1"
    idx = s.admin("POST", "/v2/repository/index").json()
    assert idx == [{"name": "digits", "version": "1", "state": "READY", "reason": ""}]


def test_failed_swap_keeps_old_version(
    make_server, bundle_root: Path, models: dict[str, bytes], rows: np.ndarray
) -> None:
    bw.write_bundle(bundle_root, "digits", "3", models["b"], sha256="f" * 64)
    bw.write_bundle(bundle_root, "digits", "4", models["b"], tamper_outputs=True)
    s = make_server(bundle_root)
    assert s.wait_ready()
    with Hammer(s.url + "/v2/models/digits/infer", _body(rows), threads=THREADS) as h:
        assert h.wait_for(100)
        r = s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "3"}})
        assert (
            r.status_code == 422
            and "sha256 mismatch" in r.json()["error"]
            and r.json()["serving_version"] == "1"
        )
        st = s.get("/v2/models/digits/status").json()
        assert st["serving_version"] == "1" and st["ready"] is True
        assert st["last_swap"]["result"] == "failure" and st["last_swap"]["requested_version"] == "3"
        assert "sha256 mismatch" in st["last_swap"]["reason"]
        # The self-test failure path, via the pointer file + SIGHUP.
        bw.set_pointer(bundle_root, "digits", "4")
        s.hup()
        assert s.wait(lambda: s.get("/v2/models/digits/status").json()["swaps"]["failure"] == 2)
        assert h.wait_for(100)
    assert h.failures == [] and set(h.versions) == {"1"}
    st = s.get("/v2/models/digits/status").json()
    assert st["serving_version"] == "1" and "differs from the recorded value" in st["last_swap"]["reason"]
    r = s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "99"}})
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
    text = s.get("/metrics").text
    assert _metric(text, 'edgeml_model_swaps_total{model="digits",result="failure"}') == 3
    assert _metric(text, 'edgeml_model_last_swap_success{model="digits"}') == 0
    assert s.get("/v2/health/ready").status_code == 200
    assert any(
        r.get("msg") == "swap failed; still serving the previous version"
        and r.get("requested_version") == "3"
        for r in s.log_records()
    )


def test_admin_endpoint_errors_and_loopback_only(make_server, bundle_root: Path) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    assert s.admin("POST", "/v2/repository/models/nope/load").status_code == 404
    assert s.admin("GET", "/v2/repository/models/digits/load").status_code == 405
    assert s.admin("POST", "/v2/repository/models/digits/load", data=b"{bad").status_code == 400
    assert (
        s.admin("POST", "/v2/repository/models/digits/load", json={"parameters": {"version": 3}}).status_code
        == 400
    )
    assert (
        s.admin(
            "POST", "/v2/repository/models/digits/load", json={"parameters": {"version": "../x"}}
        ).status_code
        == 422
    )
    assert s.admin("POST", "/v2/repository/models/digits/unload").status_code == 400
    assert s.admin("GET", "/v2/repository/models/digits/status").json()["serving_version"] == "1"
    assert s.admin("GET", "/nothing").status_code == 404
    # The admin API is not on the public port.
    assert s.post("/v2/repository/models/digits/load", json={}).status_code == 404
    # Bound to 127.0.0.1 only: listed that way by the kernel.
    tcp = Path("/proc/net/tcp").read_text().splitlines()[1:]
    local = {line.split()[1] for line in tcp if line.split()[3] == "0A"}  # 0A = LISTEN
    assert f"0100007F:{s.admin_port:04X}" in local
    assert not any(
        addr.endswith(f":{s.admin_port:04X}") and not addr.startswith("0100007F") for addr in local
    )


def test_admin_port_zero_disables_it(make_server, bundle_root: Path) -> None:
    s = make_server(bundle_root, admin=False)
    assert s.wait_ready()
    running = [r["msg"] for r in s.log_records() if str(r.get("msg", "")).startswith("Uvicorn running on")]
    assert running == [f"Uvicorn running on http://127.0.0.1:{s.port} (Press CTRL+C to quit)"]
