"""Open Inference Protocol tensor codec: JSON tensors and the binary tensor extension.

Every problem with a request raises ``RequestError`` carrying the HTTP status and a
message that names the offending tensor, so the client learns what to fix.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bundle import LoadedModel
from .datatypes import FLOAT_TYPES, INT_TYPES, NP_DTYPES, oip_from_numpy

HEADER_LEN = "inference-header-content-length"


class RequestError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind  # label for the errors counter: a small fixed set
        self.message = message


def bad(message: str, kind: str = "bad_input") -> RequestError:
    return RequestError(400, kind, message)


@dataclass
class InferRequest:
    id: Any
    feeds: dict[str, np.ndarray]
    outputs: list[str] | None  # None = all
    binary_outputs: set[str]


def split_body(body: bytes, header_len: str | None) -> tuple[Any, bytes]:
    """Parse the JSON part; return it with the trailing binary section (maybe empty)."""
    if header_len is not None:
        try:
            n = int(header_len)
        except ValueError:
            raise bad(
                f"Inference-Header-Content-Length {header_len!r} is not an integer", "bad_header"
            ) from None
        if n < 0 or n > len(body):
            raise bad(
                f"Inference-Header-Content-Length {n} is outside the body of {len(body)} bytes", "bad_header"
            )
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise bad(f"request body is not valid JSON: {exc}", "bad_json") from None
    return doc, rest


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value
    ):
        raise bad(
            f"input {name!r}: shape must be a list of non-negative integers, got {value!r}", "bad_shape"
        )
    return tuple(value)


def _flatten_bytes(data: Any, out: list[bytes], name: str) -> None:
    for item in data:
        if isinstance(item, list):
            _flatten_bytes(item, out, name)
        elif isinstance(item, str):
            out.append(item.encode("utf-8"))
        elif isinstance(item, (bytes, bytearray)):
            out.append(bytes(item))
        else:
            raise bad(
                f"input {name!r}: BYTES data must hold strings, got {type(item).__name__}", "bad_datatype"
            )


def _json_array(data: Any, datatype: str, name: str) -> np.ndarray:
    if not isinstance(data, list):
        raise bad(f"input {name!r}: data must be a (possibly nested) list", "bad_data")
    if datatype == "BYTES":
        flat: list[bytes] = []
        _flatten_bytes(data, flat, name)
        return np.array(flat, dtype=object)
    try:
        # Let numpy infer first so a string or a float sent for an integer input is
        # refused instead of silently converted; nested lists come out n-dimensional.
        arr = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise bad(
            f"input {name!r}: nested data is ragged (rows of different lengths) or too deep", "bad_data"
        ) from None
    kind = arr.dtype.kind
    if arr.size == 0:
        return np.zeros(0, dtype=NP_DTYPES[datatype])
    if datatype in FLOAT_TYPES:
        ok = kind in "fiu"
    elif datatype in INT_TYPES:
        ok = kind in "iu"
    else:  # BOOL
        ok = kind == "b"
    if not ok:
        raise bad(
            f"input {name!r}: data of kind {arr.dtype} does not fit datatype {datatype}", "bad_datatype"
        )
    target = NP_DTYPES[datatype]
    if datatype in INT_TYPES:
        info = np.iinfo(target)
        if arr.min() < info.min or arr.max() > info.max:
            raise bad(f"input {name!r}: values outside the {datatype} range", "bad_datatype")
    return arr.astype(target, copy=False)


def _binary_array(chunk: bytes, datatype: str, name: str) -> np.ndarray:
    if datatype == "BYTES":
        items: list[bytes] = []
        pos = 0
        while pos < len(chunk):
            if pos + 4 > len(chunk):
                raise bad(f"input {name!r}: truncated BYTES length prefix in binary data", "bad_data")
            (n,) = struct.unpack_from("<I", chunk, pos)
            pos += 4
            if pos + n > len(chunk):
                raise bad(f"input {name!r}: BYTES element overruns binary data", "bad_data")
            items.append(chunk[pos : pos + n])
            pos += n
        return np.array(items, dtype=object)
    dtype = NP_DTYPES[datatype].newbyteorder("<")
    if len(chunk) % dtype.itemsize:
        raise bad(
            f"input {name!r}: {len(chunk)} binary bytes is not a multiple of "
            f"the {datatype} size {dtype.itemsize}",
            "bad_data",
        )
    return np.frombuffer(chunk, dtype=dtype).astype(NP_DTYPES[datatype], copy=False)


def _input_spec(
    i: int, t: Any, model: LoadedModel, seen: dict[str, np.ndarray]
) -> tuple[str, str, tuple[int, ...]]:
    """Check one input's name, datatype and shape against the model; return them."""
    if not isinstance(t, dict):
        raise bad(f"inputs[{i}] must be an object")
    name = t.get("name")
    if not isinstance(name, str):
        raise bad(f"inputs[{i}] has no string 'name'", "bad_input")
    spec = model.input_by_name.get(name)
    if spec is None:
        takes = [s.name for s in model.inputs]
        raise bad(f"unknown input {name!r}; model {model.name!r} takes {takes}", "unknown_input")
    if name in seen:
        raise bad(f"input {name!r} given twice", "bad_input")
    dt = t.get("datatype")
    if dt != spec.datatype:
        raise bad(
            f"input {name!r}: datatype {dt!r} does not match the model's {spec.datatype}", "bad_datatype"
        )
    shape = _shape(t.get("shape"), name)
    if len(shape) != len(spec.shape) or any(d not in (-1, s) for d, s in zip(spec.shape, shape, strict=True)):
        raise bad(
            f"input {name!r}: shape {list(shape)} does not match the model's {list(spec.shape)} (-1 = any)",
            "bad_shape",
        )
    return name, dt, shape


def _input_array(t: dict[str, Any], name: str, dt: str, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """Decode one input's values (JSON data or its slice of the binary section)."""
    tparams = t.get("parameters") or {}
    if not isinstance(tparams, dict):
        raise bad(f"input {name!r}: 'parameters' must be an object")
    bsize = tparams.get("binary_data_size")
    if bsize is None:
        if "data" not in t:
            raise bad(f"input {name!r} has neither 'data' nor a binary_data_size parameter", "bad_data")
        return _json_array(t["data"], dt, name), offset
    if not isinstance(bsize, int) or isinstance(bsize, bool) or bsize < 0:
        raise bad(f"input {name!r}: binary_data_size must be a non-negative integer", "bad_data")
    if offset + bsize > len(binary):
        raise bad(
            f"input {name!r}: binary_data_size {bsize} runs past the {len(binary)} binary bytes sent",
            "bad_data",
        )
    return _binary_array(binary[offset : offset + bsize], dt, name), offset + bsize


def _requested_outputs(
    doc: dict[str, Any], model: LoadedModel, binary_all: bool
) -> tuple[list[str] | None, set[str]]:
    binary_outputs: set[str] = set(model.output_names) if binary_all else set()
    wanted = doc.get("outputs")
    if wanted is None:
        return None, binary_outputs
    if not isinstance(wanted, list):
        raise bad("'outputs' must be a list")
    out_names: list[str] = []
    for j, o in enumerate(wanted):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise bad(f"outputs[{j}] must be an object with a string 'name'")
        oname = o["name"]
        if oname not in model.output_by_name:
            raise bad(
                f"unknown output {oname!r}; model {model.name!r} has {model.output_names}", "unknown_output"
            )
        if oname in out_names:
            continue
        out_names.append(oname)
        op = o.get("parameters") or {}
        if isinstance(op, dict) and "binary_data" in op:
            if op["binary_data"] is True:
                binary_outputs.add(oname)
            else:
                binary_outputs.discard(oname)
    return out_names or None, binary_outputs


def decode_request(doc: Any, binary: bytes, model: LoadedModel) -> InferRequest:
    if not isinstance(doc, dict):
        raise bad("request body must be a JSON object", "bad_json")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad("request needs a non-empty 'inputs' list", "missing_input")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad("'parameters' must be an object")
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for i, t in enumerate(inputs):
        name, dt, shape = _input_spec(i, t, model, feeds)
        arr, offset = _input_array(t, name, dt, binary, offset)
        need = math.prod(shape)
        if arr.size != need:
            raise bad(
                f"input {name!r}: data has {arr.size} elements but shape {list(shape)} needs {need}",
                "bad_data",
            )
        feeds[name] = arr.reshape(shape)
    if offset != len(binary):
        raise bad(
            f"{len(binary) - offset} binary bytes after the header are not claimed by any input", "bad_data"
        )
    missing = [s.name for s in model.inputs if s.name not in feeds]
    if missing:
        raise bad(f"missing input(s) {missing}", "missing_input")
    out_names, binary_outputs = _requested_outputs(doc, model, params.get("binary_data_output") is True)
    return InferRequest(doc.get("id"), feeds, out_names, binary_outputs)


def _to_bytes(arr: np.ndarray) -> bytes:
    if arr.dtype.kind in ("O", "S", "U"):
        parts = []
        for item in arr.reshape(-1):
            b = item.encode("utf-8") if isinstance(item, str) else bytes(item)
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()


def _to_json_data(arr: np.ndarray) -> list[Any]:
    if arr.dtype.kind in ("O", "S", "U"):
        return [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1)]
    return arr.reshape(-1).tolist()


def encode_response(
    model: LoadedModel, req_id: Any, names: list[str], arrays: list[Any], binary_outputs: set[str]
) -> tuple[bytes, int | None]:
    """Return (body, json_header_length or None when no binary section)."""
    outs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, value in zip(names, arrays, strict=True):
        arr = np.asarray(value)
        entry: dict[str, Any] = {
            "name": name,
            "datatype": oip_from_numpy(arr.dtype),
            "shape": list(arr.shape),
        }
        if name in binary_outputs:
            blob = _to_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _to_json_data(arr)
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": model.name, "model_version": model.version, "outputs": outs}
    if req_id is not None:
        doc["id"] = req_id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
