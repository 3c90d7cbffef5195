#!/usr/bin/env python3
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Train the example ``digits`` models and export them to ONNX, deterministically.

Usage: train_digits.py [OUT_DIR]   (default: examples/out next to this script)

Uses scikit-learn's bundled 8x8 digits dataset (no download). Writes into OUT_DIR:

  digits-1.0.0.onnx   good: MLP classifier
  digits-2.0.0.onnx   faulty: the same MLP trained on permuted labels (loads, runs, answers wrong)
  digits-3.0.0.onnx   good: k-nearest-neighbours classifier (a different, more accurate model)
  digits-4.0.0.onnx   too slow: 1.0.0 plus a chain of large MatMuls whose result is multiplied
                      by zero (answers exactly like 1.0.0, seconds per request)
  digits-6.0.0.onnx   fails live: 1.0.0 that fails (server error) on images with a pixel above 16;
                      every smoke vector and gate passes, only live traffic finds it
  digits-samples.json sample vectors (held-out test images) and their true labels, the
                      layout model_bundle's sample_inputs_file takes
  digits-validation.npz the held-out images (X, 450 rows): model_bundle's
                      reference_inputs_file, the reference the model server measures drift against
  metrics.json        held-out accuracy per version
  train.stamp         sha256 of this script, written last (the playbook retrains when it differs)

Every model has the same signature: input X FP32 [-1, 64] (pixel values 0..16);
outputs label INT64 [-1] and probabilities FP32 [-1, 10]. Fixed random_state, fixed split
and fixed target opsets make two runs write the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier

SEED = 0
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
N_SAMPLES = 8
# The slow model: every request is tiled to SLOW_ROWS rows and pushed through SLOW_LAYERS
# MatMuls with a SLOW_WIDTH x SLOW_WIDTH weight (shared, so the file stays small).
SLOW_ROWS = 1024
SLOW_WIDTH = 512
# 1008 layers: about 540 GFLOP a request (0.54 a layer). With the model server's one
# onnxruntime thread that is about 15 s on the Intel 2-core machines of November (about 36
# GFLOP/s) and about 5 s on the AMD EPYC ones of December (336 layers took 1.8 s there, and
# passed the e2e latency budget of 2.5 s). Good versions' single requests measured up to
# 1.6 s on a busy CI machine. The smoke gate waits for its answers up to the readiness
# timeout; the latency gate's requests time out at 10 s (a failed latency gate: what the
# e2e test asserts).
SLOW_LAYERS = 1008
HERE = os.path.dirname(os.path.abspath(__file__))


def write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_json(path: str, value: object) -> None:
    write_atomic(path, (json.dumps(value, sort_keys=True, indent=2) + "\n").encode())


def export(model: object, x_sample: np.ndarray, name: str) -> onnx.ModelProto:
    proto = to_onnx(
        model,
        x_sample[:1].astype(np.float32),
        target_opset=TARGET_OPSET,
        options={id(model): {"zipmap": False}},
        name=name,
    )
    # Stable, readable I/O names across converters and versions.
    rename = {proto.graph.input[0].name: "X"}
    for out in proto.graph.output:
        if out.type.tensor_type.elem_type == TensorProto.INT64:
            rename[out.name] = "label"
        else:
            rename[out.name] = "probabilities"
    return rename_io(proto, rename)


def rename_io(proto: onnx.ModelProto, rename: dict[str, str]) -> onnx.ModelProto:
    graph = proto.graph
    # skl2onnx collects opsets in a set: sort them so the bytes do not depend on hashing.
    opsets = sorted((o.domain, o.version) for o in proto.opset_import)
    del proto.opset_import[:]
    proto.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets)
    for value in list(graph.input) + list(graph.output):
        value.name = rename.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    return proto


def _rename_probabilities(graph: onnx.GraphProto) -> None:
    """Rename the graph's probabilities to probabilities_fast: a wrapper computes the real one."""
    for node in graph.node:
        node.output[:] = ["probabilities_fast" if n == "probabilities" else n for n in node.output]
        node.input[:] = ["probabilities_fast" if n == "probabilities" else n for n in node.input]


def make_slow(fast: onnx.ModelProto) -> onnx.ModelProto:
    """Add a slow branch to ``fast``: probabilities + 0 * f(chain of MatMuls over X).

    The branch depends on the input, so onnxruntime cannot fold it away, and tanh keeps it
    bounded (no inf * 0 = NaN). Outputs are bit-identical to ``fast``.
    """
    slow = onnx.ModelProto()
    slow.CopyFrom(fast)
    graph = slow.graph
    _rename_probabilities(graph)
    rng = np.random.default_rng(SEED)
    w_in = (rng.standard_normal((64, SLOW_WIDTH)) / 8.0 / 16.0).astype(np.float32)
    w_hidden = (rng.standard_normal((SLOW_WIDTH, SLOW_WIDTH)) / np.sqrt(SLOW_WIDTH)).astype(np.float32)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([SLOW_ROWS, 1], dtype=np.int64), "slow_repeats"),
            numpy_helper.from_array(w_in, "slow_w_in"),
            numpy_helper.from_array(w_hidden, "slow_w_hidden"),
            numpy_helper.from_array(np.zeros((SLOW_WIDTH, 10), dtype=np.float32), "slow_w_zero"),
            numpy_helper.from_array(np.array([-1, SLOW_ROWS, 10], dtype=np.int64), "slow_shape"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "slow_axes"),
        ]
    )
    nodes = [
        helper.make_node("Tile", ["X", "slow_repeats"], ["slow_tiled"]),
        helper.make_node("MatMul", ["slow_tiled", "slow_w_in"], ["slow_h0_lin"]),
        helper.make_node("Tanh", ["slow_h0_lin"], ["slow_h0"]),
    ]
    previous = "slow_h0"
    for layer in range(1, SLOW_LAYERS + 1):
        nodes.append(helper.make_node("MatMul", [previous, "slow_w_hidden"], [f"slow_h{layer}_lin"]))
        nodes.append(helper.make_node("Tanh", [f"slow_h{layer}_lin"], [f"slow_h{layer}"]))
        previous = f"slow_h{layer}"
    nodes += [
        # [N * ROWS, WIDTH] @ zeros -> [N * ROWS, 10] -> [N, ROWS, 10] -> sum over ROWS -> [N, 10] of zeros
        helper.make_node("MatMul", [previous, "slow_w_zero"], ["slow_zero_rows"]),
        helper.make_node("Reshape", ["slow_zero_rows", "slow_shape"], ["slow_zero_3d"]),
        helper.make_node("ReduceSum", ["slow_zero_3d", "slow_axes"], ["slow_zero"], keepdims=0),
        helper.make_node("Add", ["probabilities_fast", "slow_zero"], ["probabilities"]),
    ]
    graph.node.extend(nodes)
    slow.producer_name = "edgeml-examples"
    slow.producer_version = "1"
    graph.name = "digits_slow"
    onnx.checker.check_model(slow)
    return slow


def make_failing_on_bright(fast: onnx.ModelProto) -> onnx.ModelProto:
    """``fast`` that fails on any image with a pixel above 16, answering as ``fast`` otherwise.

    An If node reshapes X to rows of 127 (never a whole number of 64-pixel images) when the
    brightest pixel is over 16: onnxruntime then fails the request (the server answers 500).
    The digits' pixels are 0..16, so every smoke vector and gate request passes; a camera
    that sends brighter images gets server errors. What only live traffic finds.
    """
    failing = onnx.ModelProto()
    failing.CopyFrom(fast)
    graph = failing.graph
    _rename_probabilities(graph)

    def constant(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value))

    scalar = [helper.make_tensor_value_info("bright_out", TensorProto.FLOAT, [])]
    then_branch = helper.make_graph(
        [
            constant("bright_shape", np.array([-1, 127], dtype=np.int64)),
            helper.make_node("Reshape", ["X", "bright_shape"], ["bright_rows"]),
            helper.make_node("ReduceSum", ["bright_rows"], ["bright_sum"], keepdims=0),
            constant("bright_zero", np.array(0.0, dtype=np.float32)),
            helper.make_node("Mul", ["bright_sum", "bright_zero"], ["bright_out"]),
        ],
        "bright_fails",
        [],
        scalar,
    )
    else_branch = helper.make_graph(
        [constant("bright_out", np.array(0.0, dtype=np.float32))], "dim_passes", [], scalar
    )
    graph.initializer.append(numpy_helper.from_array(np.array(16.0, dtype=np.float32), "bright_limit"))
    graph.node.extend(
        [
            helper.make_node("ReduceMax", ["X"], ["bright_max"], keepdims=0),
            helper.make_node("Greater", ["bright_max", "bright_limit"], ["bright"]),
            helper.make_node("If", ["bright"], ["bright_added"], then_branch=then_branch, else_branch=else_branch),
            helper.make_node("Add", ["probabilities_fast", "bright_added"], ["probabilities"]),
        ]
    )
    failing.producer_name = "edgeml-examples"
    onnx.checker.check_model(failing)
    return failing


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", default=os.path.join(HERE, "out"))
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, mode=0o755, exist_ok=True)

    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)

    def mlp() -> MLPClassifier:
        return MLPClassifier(hidden_layer_sizes=(64,), max_iter=400, random_state=SEED)

    good_mlp = mlp().fit(x_train, y_train)
    permutation = np.random.default_rng(SEED).permutation(10)
    while np.any(permutation == np.arange(10)):  # a derangement: every digit is answered wrongly
        permutation = np.roll(permutation, 1)
    faulty_mlp = mlp().fit(x_train, permutation[y_train])
    knn = KNeighborsClassifier(n_neighbors=4, weights="distance").fit(x_train, y_train)

    models = {
        "1.0.0": export(good_mlp, x_train, "digits_mlp"),
        "2.0.0": export(faulty_mlp, x_train, "digits_mlp_permuted"),
        "3.0.0": export(knn, x_train, "digits_knn"),
    }
    models["4.0.0"] = make_slow(models["1.0.0"])
    models["6.0.0"] = make_failing_on_bright(models["1.0.0"])
    accuracy = {
        "1.0.0": float(good_mlp.score(x_test, y_test)),
        "2.0.0": float(faulty_mlp.score(x_test, y_test)),
        "3.0.0": float(knn.score(x_test, y_test)),
    }
    accuracy["4.0.0"] = accuracy["6.0.0"] = accuracy["1.0.0"]
    for version, proto in models.items():
        write_atomic(os.path.join(out, f"digits-{version}.onnx"), proto.SerializeToString())

    samples = {
        "sample_inputs": [{"X": [row.tolist()]} for row in x_test[:N_SAMPLES]],
        "expected_outputs": [{"label": [int(label)]} for label in y_test[:N_SAMPLES]],
    }
    write_json(os.path.join(out, "digits-samples.json"), samples)
    validation = io.BytesIO()
    np.savez(validation, X=x_test)
    write_atomic(os.path.join(out, "digits-validation.npz"), validation.getvalue())
    write_json(
        os.path.join(out, "metrics.json"),
        {version: {"accuracy": round(value, 4)} for version, value in accuracy.items()},
    )
    with open(os.path.abspath(__file__), "rb") as handle:
        stamp = hashlib.sha256(handle.read()).hexdigest()
    write_atomic(os.path.join(out, "train.stamp"), (stamp + "\n").encode())
    print(json.dumps({"out_dir": out, "accuracy": accuracy}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
