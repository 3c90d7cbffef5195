"""A real third-party Open Inference Protocol client: tritonclient[http]."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

httpclient = pytest.importorskip("tritonclient.http")


@pytest.mark.parametrize("binary", [False, True])
def test_tritonclient(server, models: dict[str, bytes], rows: np.ndarray, binary: bool) -> None:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("digits")
        meta = client.get_model_metadata("digits")
        assert meta["versions"] == ["1"] and meta["inputs"][0]["name"] == "X"
        x = rows[:5].astype(np.float32)
        inp = httpclient.InferInput("X", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [
            httpclient.InferRequestedOutput("probabilities", binary_data=binary),
            httpclient.InferRequestedOutput("label", binary_data=binary),
        ]
        res = client.infer("digits", [inp], outputs=outs, request_id="tc-1")
        sess = ort.InferenceSession(models["a"], providers=["CPUExecutionProvider"])
        label, proba = sess.run(["label", "probabilities"], {"X": x})
        np.testing.assert_array_equal(res.as_numpy("label"), label)
        np.testing.assert_allclose(res.as_numpy("probabilities"), proba, rtol=1e-6)
        assert res.get_response()["id"] == "tc-1" and res.get_response()["model_version"] == "1"
    finally:
        client.close()
