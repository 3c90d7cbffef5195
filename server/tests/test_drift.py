"""Drift against a reference profile: the statistics (known shift -> known PSI), the
sliding window, and the gauges a real server exports."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from edgeml_server.drift import PSI_FLOOR, DriftMonitor, ProfileError, parse_profile, psi
from edgeml_server.probe import PROBE_REQUEST_ID

import bundlewriter as bw
from conftest import ServerProc, infer_body

DECILES = [0.1 * i for i in range(1, 10)]


def _uniform_profile(features: int = 1) -> dict[str, Any]:
    """Inputs uniform on [0, 1]: decile cut points, a tenth of the data in each bin."""
    feat = {"edges": DECILES, "expected": [0.1] * 10, "min": 0.0, "max": 1.0}
    return {"schema_version": 1, "inputs": [{"name": "X", "features": [feat] * features}], "outputs": []}


def _monitor(doc: dict[str, Any], window: int = 1000, outputs: set[str] | None = None) -> DriftMonitor:
    ins, outs = parse_profile(doc, {"X"}, outputs or set())
    return DriftMonitor(ins, outs, window)


def _rows_with_shares(shares: list[float], n: int) -> np.ndarray:
    """N one-feature rows, SHARES[i] of them in the middle of decile bin i."""
    counts = [round(s * n) for s in shares]
    values = np.concatenate([np.full(c, 0.05 + 0.1 * i) for i, c in enumerate(counts)])
    return values.reshape(-1, 1)


def test_psi_of_a_known_shift() -> None:
    # Half the bins lose half their share to the other half: PSI = ln(3) / 4.
    live = np.array([0.15] * 5 + [0.05] * 5)
    assert psi(live, np.full(10, 0.1)) == pytest.approx(math.log(3) / 4, rel=1e-12)
    assert psi(np.full(10, 0.1), np.full(10, 0.1)) == 0.0
    # An empty bin is floored, not infinite.
    assert math.isfinite(psi(np.array([1.0, 0.0]), np.array([0.5, 0.5])))


def test_monitor_gives_the_known_psi_and_forgets_what_left_the_window() -> None:
    mon = _monitor(_uniform_profile(), window=1000)
    mon.observe({"X": _rows_with_shares([0.15] * 5 + [0.05] * 5, 1000)}, {})
    snap = mon.snapshot()
    assert snap.rows == 1000
    assert snap.overall_psi == pytest.approx(math.log(3) / 4, rel=1e-9)
    # 1,000 rows like the reference push every shifted row out of the window.
    mon.observe({"X": _rows_with_shares([0.1] * 10, 1000)}, {})
    assert mon.snapshot().overall_psi == pytest.approx(0.0, abs=1e-12)


def test_window_counts_equal_a_recount_of_the_last_rows() -> None:
    rng = np.random.default_rng(7)
    mon = _monitor(_uniform_profile(features=3), window=500)
    seen = []
    for _ in range(60):  # requests of 1..40 rows, some crossing the ring's end
        batch = rng.random((int(rng.integers(1, 41)), 3)) ** 2  # skewed to low values
        seen.append(batch)
        mon.observe({"X": batch}, {})
    last = np.concatenate(seen)[-500:]
    fresh = _monitor(_uniform_profile(features=3), window=500)
    fresh.observe({"X": last}, {})
    assert mon.snapshot() == fresh.snapshot()
    expected = [
        psi(np.histogram(last[:, j], bins=[-np.inf, *DECILES, np.inf])[0] / 500, np.full(10, 0.1))
        for j in range(3)
    ]
    assert mon.snapshot().inputs[0].feature_psi == pytest.approx(expected, rel=1e-9)


def test_classes_output_and_out_of_range_inputs() -> None:
    doc = _uniform_profile()
    doc["outputs"] = [{"name": "label", "classes": [0, 1], "expected": [0.5, 0.5, 0.0]}]
    mon = _monitor(doc, window=100, outputs={"label"})
    xs = np.concatenate([np.full((90, 1), 0.5), np.full((10, 1), 7.0)])  # 10% beyond the max
    labels = np.array([0] * 50 + [1] * 40 + [5] * 10)  # 10% of a class never seen
    mon.observe({"X": xs}, {"label": labels})
    snap = mon.snapshot()
    assert snap.inputs[0].out_of_range_ratio == pytest.approx(0.1)
    want = psi(np.array([0.5, 0.4, 0.1]), np.array([0.5, 0.5, 0.0]))
    assert snap.outputs[0].psi == pytest.approx(want)
    assert want > 0.5  # the unseen class weighs in through PSI_FLOOR
    assert PSI_FLOOR > 0


def test_rows_of_another_width_are_left_out_not_failed() -> None:
    mon = _monitor(_uniform_profile(features=2))
    mon.observe({"X": np.zeros((4, 3))}, {})
    mon.observe({"X": np.array([[np.nan, 0.5], [0.5, 0.5]])}, {})
    assert mon.snapshot().rows == 1


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 1"),
        (lambda d: d["inputs"][0].update(name="Y"), "must name one of the model's inputs"),
        (lambda d: d["inputs"][0]["features"][0].update(edges=[0.5, 0.2]), "strictly increasing"),
        (lambda d: d["inputs"][0]["features"][0].update(expected=[0.5, 0.2]), "len(edges) + 1 shares"),
        (lambda d: d["inputs"][0]["features"][0].update(min=float("nan")), "finite numbers"),
    ],
)
def test_malformed_profile_says_where(change: Any, message: str) -> None:
    doc = _uniform_profile()
    doc["inputs"][0]["features"] = [dict(f) for f in doc["inputs"][0]["features"]]
    change(doc)
    with pytest.raises(ProfileError, match=re.escape(message)):
        parse_profile(doc, {"X"}, set())


# --- a real server ----------------------------------------------------------------------


def digits_profile(rows: np.ndarray) -> dict[str, Any]:
    """Quartile bins of each pixel of ROWS (test data: the collection's builder is tested
    against the server in tests/unit/plugins/module_utils/test__bundle_profile.py)."""
    feats = []
    for col in rows.T:
        edges = sorted(set(np.quantile(col, [0.25, 0.5, 0.75]).tolist()))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        feats.append(
            {"edges": edges, "expected": (counts / len(col)).tolist(), "min": float(col.min()), "max": float(col.max())}
        )
    return {"schema_version": 1, "inputs": [{"name": "X", "features": feats}], "outputs": []}


def _gauges(text: str, name: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.MULTILINE)
    }


def test_server_exports_drift_of_live_traffic(tmp_path: Path, models: dict[str, bytes], make_server: Any) -> None:
    x = bw.digits_data()[0]
    root = tmp_path / "bundles"
    bw.write_bundle(root, "digits", "1", models["a"], pointer=True, profile=digits_profile(x[:1000]))
    srv: ServerProc = make_server(root, extra=["--drift-window", "200"])
    assert srv.wait_ready(), srv.logs()
    metrics = srv.get("/metrics").text
    assert _gauges(metrics, "edgeml_drift_window_rows") == {'model="digits",version="1"': 0.0}
    assert "edgeml_drift_psi{" not in metrics  # under MIN_ROWS rows: no PSI yet

    def psi_after(batch: np.ndarray) -> float:
        for i in range(0, len(batch), 20):
            assert srv.post("/v2/models/digits/infer", json=infer_body(batch[i : i + 20])).status_code == 200
        return _gauges(srv.get("/metrics").text, "edgeml_drift_psi")['model="digits",version="1"']

    like_reference = psi_after(x[1000:1200])
    # Brighter images: every pixel scaled up and clipped to the reference's range.
    drifted = psi_after(np.clip(x[1200:1400] * 1.8 + 0.1, 0, 1).astype(np.float32))
    assert like_reference < 0.1, like_reference
    assert drifted > 0.25, drifted
    ratio = _gauges(srv.get("/metrics").text, "edgeml_drift_out_of_range_ratio")
    assert 0 <= ratio['input="X",model="digits",version="1"'] < 1


def test_only_live_traffic_enters_the_window(tmp_path: Path, models: dict[str, bytes], make_server: Any) -> None:
    """The deployment gates (on the admin listener) and readiness probes (their request id,
    on any port) are not the population: after a deploy, the window holds live inputs only."""
    x = bw.digits_data()[0]
    root = tmp_path / "bundles"
    bw.write_bundle(root, "digits", "1", models["a"], pointer=True, profile=digits_profile(x[:300]))
    srv: ServerProc = make_server(root)
    assert srv.wait_ready(), srv.logs()

    def rows() -> float:
        return _gauges(srv.get("/metrics").text, "edgeml_drift_window_rows")['model="digits",version="1"']

    gate = requests.post(f"{srv.admin_url}/v2/models/digits/infer", json=infer_body(x[:20]), timeout=10)
    probe = srv.post("/v2/models/digits/infer", json=infer_body(x[:5], id=PROBE_REQUEST_ID))
    assert gate.status_code == 200 and probe.status_code == 200
    assert rows() == 0
    assert srv.post("/v2/models/digits/infer", json=infer_body(x[:7], id="client-1")).status_code == 200
    assert rows() == 7


def test_tampered_profile_is_refused_before_loading(
    tmp_path: Path, models: dict[str, bytes], make_server: Any
) -> None:
    x = bw.digits_data()[0]
    root = tmp_path / "bundles"
    bdir = bw.write_bundle(root, "digits", "1", models["a"], pointer=True, profile=digits_profile(x[:300]))
    text = (bdir / "profile.json").read_text()
    (bdir / "profile.json").write_text(text.replace('"min": 0.0', '"min": 0.5', 1))
    srv: ServerProc = make_server(root)
    assert not srv.wait_ready(timeout=3)
    status = srv.get("/v2/health/ready").json()
    assert "sha256 mismatch" in status["error"] and "profile.json" in status["error"], status


def test_drift_window_zero_switches_drift_off(tmp_path: Path, models: dict[str, bytes], make_server: Any) -> None:
    root = tmp_path / "bundles"
    bw.write_bundle(root, "digits", "1", models["a"], pointer=True, profile=digits_profile(bw.digits_data()[0][:300]))
    srv: ServerProc = make_server(root, extra=["--drift-window", "0"])
    assert srv.wait_ready(), srv.logs()
    assert "edgeml_drift_window_rows{" not in srv.get("/metrics").text


def test_queue_between_scrapes_is_bounded_by_the_window() -> None:
    """Requests are only queued; without a scrape, what cannot reach the window is dropped."""
    mon = _monitor(_uniform_profile(), window=100)
    for i in range(5000):
        mon.observe({"X": np.array([[0.05 if i < 4900 else 0.95]])}, {})
    assert len(mon._pending) == 100
    snap = mon.snapshot()
    # Only the last 100 rows (all in the top bin) are in the window.
    assert snap.rows == 100
    assert snap.overall_psi == pytest.approx(psi(np.array([0.0] * 9 + [1.0]), np.full(10, 0.1)))
