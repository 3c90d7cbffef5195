"""MLServer custom runtime running an ONNX model with onnxruntime (benchmark peer).

MLServer 1.7 ships no onnxruntime runtime of its own; this is the documented
custom-runtime way (an MLModel subclass). Runs in .venv-bench-mlserver.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(
            self.settings.parameters.uri, so, providers=["CPUExecutionProvider"]
        )
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        label, proba = self._sess.run(["label", "probabilities"], {"X": x})
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[
                NumpyCodec.encode_output("label", label),
                NumpyCodec.encode_output("probabilities", proba),
            ],
        )
