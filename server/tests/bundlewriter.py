"""Tiny writer of model bundles per docs/bundle-format.md, for tests and the bench.

Models are scikit-learn MLPs on the bundled digits dataset, converted with skl2onnx:
no downloads, a few kilobytes, trained in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y.astype(np.int64)


def make_mlp_onnx(seed: int = 0, hidden: int = 16, max_iter: int = 60) -> bytes:
    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data()
    clf = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return onx.SerializeToString()


def _tensor(name: str, arr: np.ndarray) -> dict[str, Any]:
    dt = {"float32": "FP32", "int64": "INT64", "float64": "FP64"}[str(arr.dtype)]
    return {"name": name, "datatype": dt, "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}


def write_bundle(
    root: Path,
    name: str,
    version: str,
    model_bytes: bytes,
    rows: np.ndarray | None = None,
    *,
    tamper_outputs: bool = False,
    sha256: str | None = None,
    pointer: bool = False,
    profile: dict[str, Any] | None = None,
) -> Path:
    """Write ROOT/NAME/VERSION/{model.onnx,model.json} (and profile.json); return the bundle dir."""
    import onnx
    import onnxruntime as ort

    if rows is None:
        rows = digits_data()[0][:3]
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    vectors = []
    for i in range(len(rows)):
        xin = rows[i : i + 1].astype(np.float32)
        label, proba = sess.run(["label", "probabilities"], {"X": xin})
        if tamper_outputs:
            proba = proba.copy()
            proba[0, 0] += 0.5
        vectors.append(
            {
                "inputs": [_tensor("X", xin)],
                "outputs": [_tensor("label", label), _tensor("probabilities", proba)],
            }
        )
    proto = onnx.load_from_string(model_bytes)
    manifest = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "model": {
            "file": "model.onnx",
            "sha256": sha256 or hashlib.sha256(model_bytes).hexdigest(),
            "size": len(model_bytes),
            "opsets": {o.domain: o.version for o in proto.opset_import},
            "producer": f"{proto.producer_name} {proto.producer_version}",
            "ir_version": proto.ir_version,
        },
        "signature": {
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
            "outputs": [
                {"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            ],
        },
        "metadata": {"description": "digits MLP (test)", "metrics": {}, "labels": {}},
        "smoke_tests": {"tolerance": {"rtol": 1e-4, "atol": 1e-5}, "vectors": vectors},
    }
    bdir = root / name / version
    bdir.mkdir(parents=True, exist_ok=True)
    if profile is not None:
        blob = (json.dumps(profile, sort_keys=True, indent=2) + "\n").encode()
        (bdir / "profile.json").write_bytes(blob)
        manifest["reference_profile"] = {
            "file": "profile.json",
            "sha256": hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
        }
    (bdir / "model.onnx").write_bytes(model_bytes)
    (bdir / "model.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    if pointer:
        set_pointer(root, name, version)
    return bdir


def set_pointer(root: Path, name: str, version: str) -> None:
    # Write-then-rename, as a deployer should: a reader never sees a half-written file.
    tmp = root / name / ".current.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(root / name / "current")
