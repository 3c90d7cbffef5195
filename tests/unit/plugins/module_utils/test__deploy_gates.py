# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The gates against the REAL model server (subprocess on free 127.0.0.1 ports, real
bundles, real HTTP through ansible.module_utils.urls). Nothing is mocked here."""

from __future__ import annotations

import json
import threading
import time

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import ServerClient
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import (
    Gates,
    GateSettings,
    histogram_quantile,
    parse_metrics,
    percentile,
    request_counts,
    surely_over,
)
from ansible_collections.edgeml.fleet.tests.unit.plugins.module_utils import test__deploy_fakes as fx


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real server with four bundles; tests switch versions through the admin API."""
    root = tmp_path_factory.mktemp("gates") / "bundles"
    fx.write_bundle(root, "1", expected=[0, 0, 0, 0])  # ground truth agrees
    fx.write_bundle(root, "2", expected=[0, 1, 0, 1])  # half of the ground truth disagrees
    fx.write_bundle(root, "3", model=fx.reshape_model())  # fails (HTTP 500) on batch 2
    fx.write_bundle(root, "4")  # no ground truth at all
    fx.set_pointer(root, "1")
    proc, port, admin = fx.start_server(root, root.parent / "server.log")
    client = ServerClient(admin, "digits")
    assert fx.wait_for(lambda: client.version_ready("1").ok), (root.parent / "server.log").read_text()
    yield {"root": root, "client": client, "port": port}
    fx.stop_server(proc)


def gates(server, version, **settings):
    client = server["client"]
    answer = client.load(version, timeout=30)
    assert answer.ok, answer.text
    manifest = json.loads((server["root"] / "digits" / version / "model.json").read_text())
    return Gates(client, GateSettings(**settings), manifest, version)


def test_readiness_passes_when_the_version_serves(server):
    result = gates(server, "1", readiness_timeout=5).readiness()
    assert result.passed and result.name == "readiness"
    assert result.measured["seconds_to_ready"] is not None
    assert result.threshold == {"timeout_seconds": 5}


def test_readiness_times_out_on_another_version(server):
    g = gates(server, "1", readiness_timeout=0.5)
    g.version = "2"  # the slot keeps serving 1: never ready for 2
    result = g.readiness()
    assert not result.passed and result.measured["timed_out"] is True
    assert "not ready within 0.5 s" in result.detail and "serving '1'" in result.detail


def test_every_gate_records_how_long_it_took(server):
    """Reports show where a deployment's time goes: each gate's own seconds."""
    g = gates(server, "1", readiness_timeout=0.5)
    g.version = "2"
    waited = g.readiness()
    assert 0.5 <= waited.seconds < 5 and waited.as_dict()["seconds"] == waited.seconds
    quick = gates(server, "1", readiness_timeout=5).readiness()
    assert 0 <= quick.seconds < waited.seconds


def test_readiness_watches_the_service(server):
    failed = gates(server, "1", readiness_timeout=30).readiness(lambda: ("edgeml-digits-blue.service failed", None))
    assert not failed.passed and "the service failed" in failed.detail
    # The model answers ready, but systemd still waits for the health check: not ready.
    waiting = gates(server, "1", readiness_timeout=0.5).readiness(lambda: (None, "x.service is activating"))
    assert not waiting.passed and "the model is ready but x.service is activating" in waiting.detail


def test_readiness_without_a_server(server):
    g = Gates(ServerClient(fx.free_port(), "digits"), GateSettings(readiness_timeout=0.3), {}, "1")
    result = g.readiness()
    assert not result.passed and "cannot connect" in result.detail


@pytest.mark.parametrize(
    "version, source, ratio, passed, sources",
    [
        ("1", None, 1.0, True, ["expected"]),
        ("2", None, 1.0, False, ["expected"]),
        ("2", None, 0.5, True, ["expected"]),
        ("2", "recorded", 1.0, True, ["recorded"]),
        ("4", None, 1.0, True, ["recorded"]),  # no ground truth: recorded outputs
    ],
)
def test_smoke(server, version, source, ratio, passed, sources):  # noqa: PLR0917 - parametrized
    result = gates(server, version, smoke_source=source, smoke_min_pass_ratio=ratio).smoke()
    assert result.passed is passed, result
    assert result.measured["vectors"] == 4 and result.measured["sources"] == sources
    if not passed:
        assert result.detail.startswith("2 of 4 vectors wrong (vector 1: label expected [")
        assert result.measured["pass_ratio"] == 0.5


def test_smoke_waits_for_a_slow_answer_and_the_latency_gate_judges_its_speed(tmp_path):
    """A version slower than the client's usual request timeout but right: the smoke gate
    waits for its answers (up to the readiness timeout) and passes it; the latency gate
    fails it, saying so."""
    root = tmp_path / "bundles"
    fx.write_bundle(root, "1", model=fx.bw.make_slow_onnx(fx.models.digits_model(), layers=40), expected=[0] * 4)
    fx.set_pointer(root, "1")
    proc, _port, admin = fx.start_server(root, tmp_path / "server.log")
    try:
        assert fx.wait_for(lambda: ServerClient(admin, "digits").version_ready("1").ok, timeout=60)
        client = ServerClient(admin, "digits", timeout=0.05)  # shorter than one answer (about 0.3 s)
        manifest = json.loads((root / "digits" / "1" / "model.json").read_text())
        slow = Gates(client, GateSettings(readiness_timeout=30, latency_requests=4, latency_p95_ms=50), manifest, "1")
        smoke = slow.smoke()
        assert smoke.passed and smoke.measured["passed"] == 4, smoke
        latency = slow.latency()
        assert latency.name == "latency" and not latency.passed
        assert latency.detail.startswith("request 1 of 4 failed"), latency.detail
    finally:
        fx.stop_server(proc)


def test_smoke_expected_source_without_ground_truth_fails(server):
    result = gates(server, "4", smoke_source="expected").smoke()
    assert not result.passed and "no expected outputs" in result.detail


def test_latency_budget(server):
    # The nearest-rank p95 of 20 is the 19th value: over the budget once 2 requests were.
    over = gates(server, "1", latency_requests=20, latency_p95_ms=0.001).latency()
    assert not over.passed and over.measured["requests"] == 2 and over.measured["over_budget"] == 2
    assert "stopped after 2 of 20 requests" in over.detail and "over the budget of 0.001 ms" in over.detail
    # The p95 of 10 is the slowest: the first request over the budget decides.
    assert gates(server, "1", latency_requests=10, latency_p95_ms=0.001).latency().measured["requests"] == 1
    within = gates(server, "1", latency_requests=10, latency_p95_ms=60000).latency()
    assert within.passed and within.measured["requests"] == 10 and within.measured["p95_ms"] <= 60000
    measured_only = gates(server, "1", latency_requests=3).latency()
    assert measured_only.passed and "measured only" in measured_only.detail


def test_error_rate_passes_on_a_healthy_slot(server):
    result = gates(server, "1", soak_seconds=0.3).error_rate()
    assert result.passed, result
    assert result.measured["server_errors"] == 0 and result.measured["requests"] >= result.measured["probes"] >= 1


def test_error_rate_catches_server_errors_of_real_traffic(server):
    """Version 3 passes its self-test (batch 1) but fails batch-2 traffic with HTTP 500."""
    g = gates(server, "3", soak_seconds=0.5)
    assert g.smoke().passed  # recorded outputs: the model loads and answers batch 1
    batch2 = [{"name": "X", "datatype": "FP32", "shape": [2, 64], "data": fx.rows(2).reshape(-1).tolist()}]
    stop = threading.Event()
    codes = []

    def traffic():
        while not stop.is_set():
            codes.append(server["client"].infer(batch2).status)
            time.sleep(0.02)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        result = g.error_rate()
    finally:
        stop.set()
        worker.join()
    assert 500 in codes
    assert not result.passed and result.measured["server_errors"] > 0
    assert result.measured["errors_by_type"].get("inference_failed", 0) > 0
    assert 0 < result.measured["ratio"] <= 1 and result.threshold == {"max_ratio": 0.0, "soak_seconds": 0.5}
    tolerant = gates(server, "1", soak_seconds=0.2, max_error_ratio=1.0).error_rate()
    assert tolerant.passed


def test_after_ready_stops_at_the_first_failure(server):
    results = gates(server, "2", latency_requests=2, soak_seconds=0.1).after_ready()
    assert [r.name for r in results] == ["smoke"] and not results[0].passed
    results = gates(server, "1", latency_requests=2, soak_seconds=0.1, smoke_enabled=False).after_ready()
    assert [r.name for r in results] == ["latency", "error_rate"] and all(r.passed for r in results)


def test_metrics_parsing():
    text = "\n".join(
        [
            "# HELP edgeml_requests_total requests",
            'edgeml_requests_total{model="d",version="1",endpoint="infer",code="200"} 7.0',
            'edgeml_requests_total{model="d",version="1",endpoint="infer",code="500"} 2.0',
            'edgeml_requests_total{model="d",version="1",endpoint="infer",code="400"} 1.0',
            'edgeml_errors_total{model="d",type="bad_input"} 1.0',
            'edgeml_errors_total{model="d",type="inference_failed"} 2.0',
            'edgeml_requests_total{model="d",version="2",endpoint="infer",code="500"} 5.0',
            'edgeml_model_info{model="d",version="1",sha256="x"} 1.0',
            'edgeml_request_duration_seconds_bucket{model="d",version="1",endpoint="infer",le="0.01"} 4.0',
            'edgeml_request_duration_seconds_bucket{model="d",version="1",endpoint="infer",le="0.1"} 9.0',
            'edgeml_request_duration_seconds_bucket{model="d",version="1",endpoint="infer",le="+Inf"} 10.0',
            'edgeml_request_duration_seconds_bucket{model="d",version="2",endpoint="infer",le="+Inf"} 5.0',
        ]
    )
    assert len(parse_metrics(text, ["edgeml_model_info"])) == 1
    errors = {"bad_input": 1.0, "inference_failed": 2.0}
    assert request_counts(text, "1") == {
        "requests": 10.0,
        "server_errors": 2.0,
        "errors_by_type": errors,
        "buckets": {0.01: 4.0, 0.1: 9.0, float("inf"): 10.0},
    }
    assert request_counts(text)["requests"] == 15.0 and request_counts(text)["server_errors"] == 7.0
    assert percentile([5, 1, 3, 2, 4], 95) == 5 and percentile([5, 1, 3, 2, 4], 50) == 3
    assert percentile(list(range(1, 101)), 95) == 95


def test_histogram_quantile_interpolates_inside_the_bucket_as_prometheus_does():
    # 100 observations: 50 under 10 ms, 40 in (10, 100] ms, 10 above 100 ms.
    buckets = {0.01: 50.0, 0.1: 90.0, 1.0: 100.0, float("inf"): 100.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    assert histogram_quantile(0.95, {0.01: 0.0, float("inf"): 0.0}) is None
    assert histogram_quantile(0.95, {0.01: 1.0, float("inf"): 10.0}) == 0.01  # beyond the last bound


def test_surely_over_counts_only_what_lies_above_the_bound_at_or_over_the_budget():
    buckets = {0.1: 2.0, 1.0: 5.0, 2.5: 7.0, 5.0: 9.0, float("inf"): 10.0}
    assert surely_over(buckets, 2.5) == 3  # above 2.5 s: 2 in (2.5, 5], 1 beyond 5
    assert surely_over(buckets, 2.0) == 3  # (1, 2.5] straddles 2 s: counted as within
    assert surely_over(buckets, 0.05) == 8
    assert surely_over(buckets, 20.0) == 0  # beyond the last finite bound: nothing is sure
    assert surely_over({}, 1.0) == 0
