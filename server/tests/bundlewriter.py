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


def make_slow_onnx(base: bytes, layers: int = 100, width: int = 512) -> bytes:
    """BASE with its probabilities plus 0 * (a chain of LAYERS width x width MatMuls over X
    tiled to WIDTH rows): the same answers, about LAYERS * 0.27 GFLOP a request."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load_from_string(base)
    graph = model.graph
    for node in graph.node:  # the base's probabilities become an inner tensor
        for names in (node.input, node.output):
            names[:] = ["fast_probabilities" if name == "probabilities" else name for name in names]
    rng = np.random.default_rng(0)
    weights = {
        "slow_repeats": np.array([width, 1], dtype=np.int64),
        "slow_w_in": (rng.standard_normal((64, width)) / 64).astype(np.float32),
        "slow_w": (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32),
        "slow_zero": np.zeros((1,), dtype=np.float32),
    }
    graph.initializer.extend(numpy_helper.from_array(value, key) for key, value in weights.items())
    nodes = [helper.make_node("Tile", ["X", "slow_repeats"], ["slow_0"])]
    nodes.append(helper.make_node("MatMul", ["slow_0", "slow_w_in"], ["slow_1"]))
    for i in range(1, layers + 1):
        nodes.append(helper.make_node("MatMul", [f"slow_{i}", "slow_w"], [f"slow_{i}_lin"]))
        nodes.append(helper.make_node("Tanh", [f"slow_{i}_lin"], [f"slow_{i + 1}"]))
    nodes += [
        helper.make_node("ReduceSum", [f"slow_{layers + 1}"], ["slow_sum"], keepdims=0),
        helper.make_node("Mul", ["slow_sum", "slow_zero"], ["slow_nothing"]),
        helper.make_node("Add", ["fast_probabilities", "slow_nothing"], ["probabilities"]),
    ]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return model.SerializeToString()


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


def make_key(directory: Path, name: str) -> tuple[Path, Path]:
    """A fresh EC P-256 key pair as PEM files DIRECTORY/NAME.key (private, PKCS#8) and
    DIRECTORY/NAME.pub (public, SubjectPublicKeyInfo); return (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    private, public = directory / f"{name}.key", directory / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def key_hint(public_key: Path) -> str:
    """The hint a signature by this key carries: sha256 of its PEM, as make_key writes it."""
    return hashlib.sha256(public_key.read_bytes()).hexdigest()


def sign_bundle(bdir: Path, private_key: Path) -> Path:
    """Sign every file of BDIR into BDIR/model.sig with model_signing, as model_bundle does."""
    from model_signing import hashing, signing

    signature = bdir / "model.sig"
    signing.Config().set_hashing_config(
        hashing.Config().set_ignored_paths(paths=[signature.name], ignore_git_paths=False)
    ).use_elliptic_key_signer(private_key=private_key).sign(bdir, signature)
    return signature


def set_pointer(root: Path, name: str, version: str) -> None:
    # Write-then-rename, as a deployer should: a reader never sees a half-written file.
    tmp = root / name / ".current.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(root / name / "current")
