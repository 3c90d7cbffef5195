"""Every public endpoint on a ready server, JSON and binary tensors."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnxruntime as ort
import pytest

from conftest import ServerProc, infer_body


def test_health_and_server_metadata(server: ServerProc) -> None:
    assert server.get("/v2/health/live").json() == {"live": True}
    r = server.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}
    meta = server.get("/v2").json()
    assert meta["name"] == "edgeml-server" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("path", ["/v2/models/digits", "/v2/models/digits/versions/1"])
def test_model_metadata(server: ServerProc, path: str) -> None:
    r = server.get(path)
    assert r.status_code == 200
    assert r.json() == {
        "name": "digits",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }


@pytest.mark.parametrize("path", ["/v2/models/digits/ready", "/v2/models/digits/versions/1/ready"])
def test_model_ready(server: ServerProc, path: str) -> None:
    r = server.get(path)
    assert r.status_code == 200 and r.json()["ready"] is True and r.json()["version"] == "1"


def test_other_version_is_not_ready(server: ServerProc) -> None:
    r = server.get("/v2/models/digits/versions/2/ready")
    assert r.status_code == 404 and r.json()["ready"] is False and "serving '1'" in r.json()["error"]


def _expected(models: dict[str, bytes], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sess = ort.InferenceSession(models["a"], providers=["CPUExecutionProvider"])
    label, proba = sess.run(["label", "probabilities"], {"X": x})
    return label, proba


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"])
def test_infer_json_matches_onnxruntime(
    server: ServerProc, models: dict[str, bytes], rows: np.ndarray, path: str
) -> None:
    x = rows[:4]
    # Deliberately a non-JSON content type: the protocol says JSON bodies are accepted regardless.
    r = server.post(path, data=json.dumps(infer_body(x, id="req-7")), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["model_name"] == "digits" and doc["model_version"] == "1" and doc["id"] == "req-7"
    outs = {o["name"]: o for o in doc["outputs"]}
    label, proba = _expected(models, x)
    assert outs["label"]["datatype"] == "INT64" and outs["label"]["shape"] == [4]
    assert outs["label"]["data"] == label.tolist()
    assert outs["probabilities"]["shape"] == [4, 10] and outs["probabilities"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(outs["probabilities"]["data"]).reshape(4, 10), proba, rtol=1e-6)


def test_infer_nested_data_and_requested_outputs(server: ServerProc, rows: np.ndarray) -> None:
    body = {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [2, 64], "data": rows[:2].tolist()}],
        "outputs": [{"name": "label"}],
    }
    r = server.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert [o["name"] for o in outs] == ["label"] and outs[0]["shape"] == [2]
    assert "id" not in r.json()


def test_infer_binary_input_and_output(
    server: ServerProc, models: dict[str, bytes], rows: np.ndarray
) -> None:
    x = rows[:3].astype("<f4")
    raw = x.tobytes()
    header = json.dumps(
        {
            "id": "bin",
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": [3, 64],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": "probabilities", "parameters": {"binary_data": True}},
                {"name": "label", "parameters": {"binary_data": False}},
            ],
        }
    ).encode()
    r = server.post(
        "/v2/models/digits/infer",
        data=header + raw,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    hlen = int(r.headers["Inference-Header-Content-Length"])
    doc = json.loads(r.content[:hlen])
    outs = {o["name"]: o for o in doc["outputs"]}
    label, proba = _expected(models, x)
    assert outs["label"]["data"] == label.tolist()
    size = outs["probabilities"]["parameters"]["binary_data_size"]
    assert "data" not in outs["probabilities"] and size == 3 * 10 * 4 == len(r.content) - hlen
    got = np.frombuffer(r.content[hlen:], dtype="<f4").reshape(3, 10)
    np.testing.assert_array_equal(got, proba)


def test_binary_data_output_request_parameter(server: ServerProc, rows: np.ndarray) -> None:
    r = server.post(
        "/v2/models/digits/infer", json=infer_body(rows[:1], parameters={"binary_data_output": True})
    )
    assert r.status_code == 200
    hlen = int(r.headers["Inference-Header-Content-Length"])
    doc = json.loads(r.content[:hlen])
    sizes = [o["parameters"]["binary_data_size"] for o in doc["outputs"]]
    assert sum(sizes) == len(r.content) - hlen
    label_bytes = r.content[hlen : hlen + sizes[0]]
    assert len(label_bytes) == 8 and struct.unpack("<q", label_bytes)[0] in range(10)


def test_status_endpoint(server: ServerProc) -> None:
    st = server.get("/v2/models/digits/status").json()
    assert st["ready"] is True and st["serving_version"] == "1" and len(st["sha256"]) == 64
    assert st["error"] is None and st["last_swap"] is None


def test_metrics(server: ServerProc, rows: np.ndarray) -> None:
    x = rows[:2]
    assert server.post("/v2/models/digits/infer", json=infer_body(x)).status_code == 200
    server.post("/v2/models/digits/infer", data=b"{nope")
    r = server.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    assert samples['edgeml_requests_total{code="200",endpoint="infer",model="digits",version="1"}'] >= 1
    assert samples['edgeml_errors_total{model="digits",type="bad_json"}'] >= 1
    assert any(k.startswith('edgeml_request_duration_seconds_bucket{endpoint="infer"') for k in samples)
    sha = server.get("/v2/models/digits/status").json()["sha256"]
    assert samples[f'edgeml_model_info{{model="digits",sha256="{sha}",version="1"}}'] == 1
    assert samples['edgeml_model_ready{model="digits"}'] == 1
    assert 'edgeml_model_swaps_total{model="digits",result="success"}' in samples
    assert 'edgeml_model_swaps_total{model="digits",result="failure"}' in samples
    lab = 'input="X",model="digits",version="1"'
    n = samples[f"edgeml_input_values_total{{{lab}}}"]
    assert n >= x.size and n % 64 == 0
    assert samples[f"edgeml_input_values_sum{{{lab}}}"] > 0
    assert samples[f"edgeml_input_values_sum_of_squares{{{lab}}}"] > 0
    assert samples[f"edgeml_input_values_min{{{lab}}}"] == 0.0
    assert samples[f"edgeml_input_values_max{{{lab}}}"] <= 1.0


def test_drift_stats_are_exact(make_server, bundle_root, rows: np.ndarray) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    x = rows[:5]
    for i in range(5):
        assert s.post("/v2/models/digits/infer", json=infer_body(x[i : i + 1])).status_code == 200
    text = s.get("/metrics").text
    vals = {}
    for line in text.splitlines():
        if line.startswith("edgeml_input_values"):
            key, _, value = line.rpartition(" ")
            vals[key.split("{")[0]] = float(value)
    x64 = x.astype(np.float64)
    assert vals["edgeml_input_values_total"] == x.size
    assert vals["edgeml_input_values_sum"] == pytest.approx(x64.sum())
    assert vals["edgeml_input_values_sum_of_squares"] == pytest.approx((x64**2).sum())
    assert vals["edgeml_input_values_min"] == x.min() and vals["edgeml_input_values_max"] == pytest.approx(
        x.max()
    )


def test_input_stats_fold_and_nonfinite() -> None:
    from edgeml_server.bundle import InputStats

    st = InputStats()
    a = np.array([[1.0, 2.0, np.nan]], dtype=np.float32)
    b = np.array([[-3.0, np.inf, 4.0]], dtype=np.float32)
    for _ in range(300):  # crosses the fold threshold once, the rest is folded on snapshot
        st.observe(a)
        st.observe(b)
    count, total, sq, lo, hi, nonfinite = st.snapshot()
    assert count == 600 * 2 and nonfinite == 600
    assert total == pytest.approx(300 * (1 + 2 - 3 + 4)) and sq == pytest.approx(300 * (1 + 4 + 9 + 16))
    assert lo == -3.0 and hi == 4.0
