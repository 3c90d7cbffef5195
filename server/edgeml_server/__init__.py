"""edgeml.fleet model server: one ONNX model bundle over the Open Inference Protocol."""

from __future__ import annotations

__version__ = "0.1.0"
