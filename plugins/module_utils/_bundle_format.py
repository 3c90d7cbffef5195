# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The model bundle format (docs/bundle-format.md), schema_version 1. Pure Python.

Names, regexes, datatypes, the deterministic manifest serialisation, and the pure
tensor helpers (nested lists <-> shape + flat data, value checks, the tolerance
rule) shared by the model_bundle service and by anything that reads bundles.
"""

from __future__ import annotations

import json
import math
import re
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "model.json"
# The reference profile (drift): written by _bundle_profile, read by the server's drift.py.
PROFILE_FILE = "profile.json"
PROFILE_SCHEMA_VERSION = 1

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-5

# Open Inference Protocol datatype -> onnxruntime type string.
DATATYPES = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}
ORT_TO_DATATYPE = {v: k for k, v in DATATYPES.items()}

INT_RANGES = {
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
}
FLOAT_TYPES = ("FP16", "FP32", "FP64")


def validate_name(name: str) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise EdgeMLError(
            f"Invalid bundle name {name!r}.",
            "Use 1-63 lowercase letters, digits, '-' or '_', starting and ending with a "
            f"letter or digit (regex {NAME_RE.pattern}), for example 'digits' or 'face-detect'.",
        )


def validate_version(version: str) -> None:
    if not isinstance(version, str) or version in (".", "..") or not VERSION_RE.fullmatch(version):
        raise EdgeMLError(
            f"Invalid bundle version {version!r}.",
            "Use 1-64 characters from letters, digits, '.', '_', '+', '-', starting with a "
            f"letter or digit (regex {VERSION_RE.pattern}), for example '1.0.0' or '2024.05.1+cpu'. Quote "
            "versions in YAML so 1.0 is not read as a number.",
        )


def dumps_manifest(manifest: dict[str, t.Any]) -> bytes:
    """Serialise a manifest deterministically: sorted keys, 2-space indent, final newline."""
    try:
        text = json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise EdgeMLError(
            f"The manifest contains a value JSON cannot hold ({exc}).",
            "Check that metrics and the model's outputs on the sample inputs are finite numbers "
            "(no NaN or infinity).",
        ) from None
    return (text + "\n").encode("utf-8")


def loads_manifest(data: bytes, where: str) -> dict[str, t.Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgeMLError(f"{where} is not valid JSON ({exc}).") from None
    if not isinstance(manifest, dict):
        raise EdgeMLError(f"{where} does not hold a JSON object.")
    return manifest


# ---------------------------------------------------------------------------
# Tensors as JSON: {"name", "datatype", "shape", "data"} with row-major flat data.


def prod(shape: t.Iterable[int]) -> int:
    result = 1
    for dim in shape:
        result *= int(dim)
    return result


def nested_shape(value: t.Any, where: str) -> tuple[list[int], list[t.Any]]:
    """Return (shape, flat data) of a rectangular nested list; a scalar has shape []."""
    if not isinstance(value, (list, tuple)):
        return [], [value]
    if not value:
        return [0], []
    shapes = []
    flat: list[t.Any] = []
    for item in value:
        sub_shape, sub_flat = nested_shape(item, where)
        shapes.append(sub_shape)
        flat.extend(sub_flat)
    if any(s != shapes[0] for s in shapes):
        raise EdgeMLError(
            f"{where} is a ragged nested list (rows of different lengths).",
            "Give a rectangular nested list, or flat 'data' with an explicit 'shape'.",
        )
    return [len(value)] + shapes[0], flat


def is_flat(value: t.Any) -> bool:
    return isinstance(value, (list, tuple)) and all(not isinstance(v, (list, tuple)) for v in value)


def _check_float(value: t.Any) -> tuple[t.Any, str | None]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value, "a number"
    return float(value), None if math.isfinite(value) else "a finite number"


def _check_int(datatype: str, value: t.Any) -> tuple[t.Any, str | None]:
    low, high = INT_RANGES[datatype]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return value, "an integer"
    return value, None if low <= value <= high else f"an integer in [{low}, {high}]"


def _check_value(datatype: str, value: t.Any) -> tuple[t.Any, str | None]:
    """Return (normalised value, None) or (value, what the datatype needs)."""
    if datatype in FLOAT_TYPES:
        return _check_float(value)
    if datatype in INT_RANGES:
        return _check_int(datatype, value)
    if datatype == "BOOL":
        return value, None if isinstance(value, bool) else "a boolean (true/false)"
    return value, None if isinstance(value, str) else "a string"


def check_values(datatype: str, data: list[t.Any], where: str) -> list[t.Any]:
    """Check (and normalise) flat data for an OIP datatype; return the normalised list."""
    out: list[t.Any] = []
    for index, raw in enumerate(data):
        value, needs = _check_value(datatype, raw)
        if needs:
            raise EdgeMLError(
                f"{where}: element {index} is {value!r}, but datatype {datatype} needs {needs}.",
                "Fix the sample data or its datatype so it matches the model signature.",
            )
        out.append(value)
    return out


def values_match(datatype: str, actual: list[t.Any], recorded: list[t.Any], rtol: float, atol: float) -> bool:
    """The readiness rule of the format: tolerance for floats, equality otherwise."""
    if len(actual) != len(recorded):
        return False
    if datatype in FLOAT_TYPES:
        for a, r in zip(actual, recorded):
            if isinstance(a, bool) or isinstance(r, bool):
                return False
            if not isinstance(a, (int, float)) or not isinstance(r, (int, float)):
                return False
            if not abs(float(a) - float(r)) <= atol + rtol * abs(float(r)):
                return False
        return True
    return list(actual) == list(recorded)


def tensors_match(
    actual: list[dict[str, t.Any]], recorded: list[dict[str, t.Any]], rtol: float, atol: float
) -> bool:
    """Compare two tensor lists by name; every recorded tensor must be matched."""
    by_name = {tensor["name"]: tensor for tensor in actual}
    for rec in recorded:
        act = by_name.get(rec["name"])
        if act is None or list(act["shape"]) != list(rec["shape"]):
            return False
        if act["datatype"] != rec["datatype"]:
            return False
        if not values_match(rec["datatype"], act["data"], rec["data"], rtol, atol):
            return False
    return True


def manifest_paths_differ(before: t.Any, after: t.Any, prefix: str = "") -> list[str]:
    """Return the dotted paths at which two JSON values differ (for messages)."""
    if isinstance(before, dict) and isinstance(after, dict):
        paths: list[str] = []
        for key in sorted(set(before) | set(after)):
            sub = f"{prefix}.{key}" if prefix else str(key)
            if key not in before or key not in after:
                paths.append(sub)
            else:
                paths.extend(manifest_paths_differ(before[key], after[key], sub))
        return paths
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        paths = []
        for index, (b, a) in enumerate(zip(before, after)):
            paths.extend(manifest_paths_differ(b, a, f"{prefix}[{index}]"))
        return paths
    return [] if before == after else [prefix or "(root)"]


def file_differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """How ACTUAL (file -> sha256) differs from EXPECTED: changed, added and missing files."""
    found = [f"{name} changed" for name in sorted(actual) if name in expected and actual[name] != expected[name]]
    found += [f"{name} added" for name in sorted(set(actual) - set(expected))]
    found += [f"{name} missing" for name in sorted(set(expected) - set(actual))]
    return found
