# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Reference profile of a bundle (docs/bundle-format.md, profile.json).

From the inputs a model was validated on, and the outputs the model gives for them:
per input feature (each element of a row, flattened) quantile cut points and the
share of the reference rows in each bin, with the feature's minimum and maximum; per
output, its classes and their shares (integer outputs with few values) or binned
features like an input. The model server (server/edgeml_server/drift.py) compares a
sliding window of live rows with it. A value goes to bin i when i cut points are <= it,
here and in the server.
"""

from __future__ import annotations

import io
import json
import os
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import NUMPY_DTYPES, read_file
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import PROFILE_SCHEMA_VERSION
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

try:
    import numpy as np
except ImportError:  # pragma: no cover - _bundle_client reports the missing library
    np = None

# The server exports PSI only from 100 rows on; a reference smaller than that says little.
MIN_REFERENCE_ROWS = 100
MAX_FEATURES = 4096
# An integer output with at most this many values is profiled as classes.
MAX_CLASSES = 32
# Rows per onnxruntime call when running the reference through the model.
RUN_CHUNK = 256

LOAD_HINT = (
    "reference_inputs_file holds the inputs the model was validated on, one row per sample: "
    "a .npz with one array per model input (named as the input), a .npy array (single-input "
    'models), or JSON {"INPUT": [[...], ...]} (or a list of rows for a single-input model).'
)


def _round(value: float) -> float:
    # Nine significant digits: stable bytes for the same data on another controller.
    return float(f"{value:.9g}")


def load_reference_inputs(path: str, inputs: list[dict[str, t.Any]]) -> dict[str, t.Any]:
    """Read PATH into {input name: array with the batch as dimension 0}."""
    data = read_file(path, "reference_inputs_file", LOAD_HINT)
    names = [spec["name"] for spec in inputs]
    try:
        if path.endswith(".npz"):
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        elif path.endswith(".npy"):
            if len(names) != 1:
                raise EdgeMLError(
                    f"reference_inputs_file {path} is a .npy array but the model has {len(names)} inputs.",
                    LOAD_HINT,
                )
            arrays = {names[0]: np.load(io.BytesIO(data), allow_pickle=False)}
        else:
            doc = json.loads(data.decode("utf-8"))
            if isinstance(doc, list) and len(names) == 1:
                doc = {names[0]: doc}
            if not isinstance(doc, dict):
                raise EdgeMLError(f"reference_inputs_file {path} has an unexpected layout.", LOAD_HINT)
            arrays = {key: np.asarray(value) for key, value in doc.items()}
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise EdgeMLError(f"reference_inputs_file {path} cannot be read: {exc}.", LOAD_HINT) from None
    unknown = sorted(set(arrays) - set(names))
    missing = [name for name in names if name not in arrays]
    if unknown or missing:
        raise EdgeMLError(
            f"reference_inputs_file {path} names inputs {sorted(arrays)}, the model's are {names}.",
            "Give one array per model input, named as the input.",
        )
    return arrays


def _check_reference(arrays: dict[str, t.Any], inputs: list[dict[str, t.Any]], path: str) -> dict[str, t.Any]:
    """Cast to the model's datatypes, check shapes against the signature; same row count."""
    feeds = {}
    rows = None
    for spec in inputs:
        name, shape = spec["name"], spec["shape"]
        where = f"reference_inputs_file {path}, input {name!r}"
        try:
            array = np.asarray(arrays[name]).astype(NUMPY_DTYPES[spec["datatype"]])
        except (ValueError, TypeError) as exc:
            raise EdgeMLError(f"{where}: values do not fit {spec['datatype']} ({exc}).", LOAD_HINT) from None
        if array.ndim != len(shape) or any(d >= 0 and d != a for d, a in zip(shape[1:], array.shape[1:])):
            raise EdgeMLError(
                f"{where}: shape {list(array.shape)} does not fit the model's {shape} (-1 = any size).",
                "Stack the reference samples along dimension 0, each shaped as one model input row.",
            )
        if rows is not None and array.shape[0] != rows:
            raise EdgeMLError(
                f"{where} has {array.shape[0]} rows, the other inputs {rows}.", "Give every input the same rows."
            )
        rows = array.shape[0]
        feeds[name] = array
    if rows is None or rows < MIN_REFERENCE_ROWS:
        raise EdgeMLError(
            f"reference_inputs_file {path} has {rows or 0} rows; a reference profile needs at least "
            f"{MIN_REFERENCE_ROWS}.",
            "Use the validation set the model was evaluated on (hundreds of rows or more).",
        )
    return feeds


def _binned(name: str, rows: t.Any, bins: int) -> dict[str, t.Any]:
    matrix = rows.reshape(rows.shape[0], -1).astype(np.float64)
    if matrix.shape[1] > MAX_FEATURES:
        raise EdgeMLError(
            f"{name!r} has {matrix.shape[1]} elements per row; a reference profile takes at most {MAX_FEATURES}.",
            "Leave reference_inputs_file out for this model (drift is then not measured).",
        )
    finite = np.isfinite(matrix).all(axis=1)
    if finite.sum() < MIN_REFERENCE_ROWS:
        raise EdgeMLError(
            f"{name!r}: only {int(finite.sum())} of {matrix.shape[0]} reference rows have finite values (NaN or"
            f" infinity in the others); a reference profile needs at least {MIN_REFERENCE_ROWS}.",
            "Clean the reference data (or the model's outputs for it) of NaN and infinity.",
        )
    matrix = matrix[finite]
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    features = []
    for col in matrix.T:
        edges = sorted({_round(v) for v in np.quantile(col, quantiles)})
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        features.append(
            {
                "edges": edges,
                "expected": [_round(c / len(col)) for c in counts],
                "min": _round(col.min()),
                "max": _round(col.max()),
            }
        )
    return {"name": name, "features": features}


def _output_profile(name: str, datatype: str, values: t.Any, bins: int) -> dict[str, t.Any] | None:
    if datatype == "BYTES":
        return None  # strings have no bins; their drift is not measured
    one_column = values.reshape(values.shape[0], -1).shape[1] == 1
    if datatype == "BOOL" or (datatype.startswith(("INT", "UINT")) and one_column):
        flat = values.reshape(-1)
        classes, counts = np.unique(flat, return_counts=True)
        if len(classes) <= MAX_CLASSES:
            shares = [_round(c / flat.size) for c in counts]
            return {"name": name, "classes": [int(c) for c in classes], "expected": [*shares, 0.0]}
    return _binned(name, values, bins)


def build_profile(model: t.Any, signature: dict[str, t.Any], path: str, bins: int) -> dict[str, t.Any]:
    """The reference profile of the inputs in PATH and of the model's outputs for them."""
    if not 2 <= bins <= 63:
        raise EdgeMLError(f"profile_bins is {bins}; it must be 2..63.", "The usual choice is 10 (deciles).")
    feeds = _check_reference(load_reference_inputs(path, signature["inputs"]), signature["inputs"], path)
    outputs = model.run_arrays(feeds, RUN_CHUNK, f"reference_inputs_file {os.path.basename(path)}")
    profile_inputs = [
        _binned(spec["name"], feeds[spec["name"]], bins) for spec in signature["inputs"] if spec["datatype"] != "BYTES"
    ]
    profile_outputs = []
    for spec in signature["outputs"]:
        item = _output_profile(spec["name"], spec["datatype"], outputs[spec["name"]], bins)
        if item is not None:
            profile_outputs.append(item)
    rows = next(iter(feeds.values())).shape[0]
    return {
        "schema_version": PROFILE_SCHEMA_VERSION,
        "rows": int(rows),
        "bins": bins,
        "inputs": profile_inputs,
        "outputs": profile_outputs,
    }
