"""Open Inference Protocol datatype names <-> numpy / onnxruntime types."""

from __future__ import annotations

import numpy as np

# OIP datatype -> numpy dtype. BYTES maps to object arrays of ``bytes``, which is
# what onnxruntime accepts for tensor(string).
NP_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}

DATATYPES = frozenset(NP_DTYPES)

# onnxruntime's type strings for tensors.
ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INT_TYPES = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"})

# numpy dtype -> OIP name, for outputs whose runtime dtype is authoritative.
_NP_TO_OIP = {v: k for k, v in NP_DTYPES.items() if k != "BYTES"}


def oip_from_numpy(dtype: np.dtype) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    name = _NP_TO_OIP.get(dtype)
    if name is None:
        raise ValueError(f"unsupported numpy dtype {dtype}")
    return name
