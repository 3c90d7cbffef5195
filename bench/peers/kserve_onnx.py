"""KServe Python SDK model server with an onnxruntime predictor (peer for the benchmark).

Runs in the bench venv (.venv-bench-kserve). Parameters come from the environment,
not flags, because kserve parses sys.argv itself at import time.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.sess: ort.InferenceSession | None = None
        self.load()

    def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1  # same as edgeml-server's default
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        self.ready = True
        return self.ready

    def predict(
        self,
        payload: InferRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> InferResponse:
        x = payload.inputs[0].as_numpy().astype(np.float32, copy=False)
        label, proba = self.sess.run(["label", "probabilities"], {"X": x})
        outputs = [
            InferOutput(name="label", shape=list(label.shape), datatype="INT64", data=label),
            InferOutput(name="probabilities", shape=list(proba.shape), datatype="FP32", data=proba),
        ]
        # kserve refuses a response without an id, and clients need not send one.
        rid = payload.id or str(uuid.uuid4())
        return InferResponse(response_id=rid, model_name=self.name, infer_outputs=outputs)


if __name__ == "__main__":
    model = OnnxModel("digits", os.environ["BENCH_MODEL_PATH"])
    # gRPC off (edgeml-server has none) and per-request latency logging off: the peer
    # is measured at its best, not slowed by features we do not compare.
    ModelServer(
        http_port=int(os.environ["BENCH_PORT"]), enable_grpc=False, workers=1, enable_latency_logging=False
    ).start([model])
