# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

import os
import stat

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import (
    BundleStore,
    OnnxModel,
    read_file,
    sha256_hex,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models
from onnx import TensorProto


def test_digits_signature_and_metadata():
    model = OnnxModel(models.digits_model(), "digits.onnx")
    assert model.signature() == {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }
    assert model.opsets()[""] == 17 and "ai.onnx.ml" in model.opsets()
    assert model.producer().startswith("skl2onnx ")
    assert model.ir_version() >= 7


@pytest.mark.parametrize(
    "dims, shape",
    [
        ((2, 3), [2, 3]),  # static
        (("batch", 3), [-1, 3]),  # symbolic
        ((None, 3), [-1, 3]),  # unknown
        (("n", "m"), [-1, -1]),
        ((), []),  # scalar
    ],
)
def test_static_and_dynamic_dims(dims, shape):
    sig = OnnxModel(models.add_one_model(dims), "m.onnx").signature()
    assert sig["inputs"] == [{"name": "x", "datatype": "FP32", "shape": shape}]
    assert sig["outputs"][0]["shape"] == shape


@pytest.mark.parametrize(
    "elem_type, datatype",
    [
        (TensorProto.FLOAT, "FP32"),
        (TensorProto.DOUBLE, "FP64"),
        (TensorProto.FLOAT16, "FP16"),
        (TensorProto.INT32, "INT32"),
        (TensorProto.INT64, "INT64"),
        (TensorProto.UINT8, "UINT8"),
    ],
)
def test_datatypes(elem_type, datatype):
    model = OnnxModel(models.add_one_model(("n",), elem_type), "m.onnx")
    assert model.signature()["inputs"][0]["datatype"] == datatype
    out = model.run([{"name": "x", "datatype": datatype, "shape": [2], "data": [1, 2]}], "v")
    assert out == [{"name": "y", "datatype": datatype, "shape": [2], "data": [2, 3]}]


def test_run_strings_and_bools():
    model = OnnxModel(models.string_model(), "s.onnx")
    out = model.run(
        [
            {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["a", "bé"]},
            {"name": "f", "datatype": "BOOL", "shape": [2], "data": [True, False]},
        ],
        "v",
    )
    assert out == [
        {"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a", "bé"]},
        {"name": "e", "datatype": "BOOL", "shape": [2], "data": [False, True]},
    ]


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is a text file\n", os.urandom(64) + b"\x00" * 3, b"\x08\x07"],
    ids=["empty", "text", "random", "ir-version-only"],
)
def test_not_onnx(data):
    with pytest.raises(EdgeMLError, match="is not an ONNX model") as exc:
        OnnxModel(data, "bad.onnx")
    assert "Point src at the .onnx file" in str(exc.value)


@pytest.mark.parametrize("factory", [models.broken_model, models.unknown_op_model])
def test_onnxruntime_cannot_load(factory):
    with pytest.raises(EdgeMLError, match=r"onnxruntime .* cannot load broken\.onnx") as exc:
        OnnxModel(factory(), "broken.onnx")
    assert "re-export" in str(exc.value)


def test_external_data_refused():
    with pytest.raises(EdgeMLError, match="external data file"):
        OnnxModel(models.external_data_model(), "ext.onnx")


def test_zipmap_output_refused_with_hint():
    with pytest.raises(EdgeMLError, match="cannot carry") as exc:
        OnnxModel(models.digits_model(zipmap=True), "zipmap.onnx").signature()
    assert "zipmap" in str(exc.value)


def test_run_failure_is_reported():
    model = OnnxModel(models.add_one_model((2, 3)), "m.onnx")
    with pytest.raises(EdgeMLError, match=r"failed to run m\.onnx on vector 0"):
        model.run([{"name": "x", "datatype": "FP32", "shape": [3, 2], "data": [0] * 6}], "vector 0")


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.mkdir(), "is a directory"),
    ],
)
def test_read_file_errors(tmp_path, setup, message):
    path = tmp_path / "f"
    setup(path)
    with pytest.raises(EdgeMLError, match=message) as exc:
        read_file(str(path), "Model file (src)", "Fix it.")
    assert str(exc.value).endswith("Fix it.")


def test_store_read_states(tmp_path):
    store = BundleStore(str(tmp_path))
    assert store.read("m", "1").state == "absent"
    (tmp_path / "m" / "1").mkdir(parents=True)
    assert store.read("m", "1").state == "empty"
    (tmp_path / "m" / "1" / "model.onnx").write_bytes(b"x")
    assert store.read("m", "1").state == "incomplete"
    (tmp_path / "m" / "1" / "model.json").write_bytes(b"{}")
    existing = store.read("m", "1")
    assert (existing.state, existing.model, existing.manifest) == ("complete", b"x", b"{}")
    (tmp_path / "m" / "2").write_bytes(b"")
    with pytest.raises(EdgeMLError, match="is not a directory"):
        store.read("m", "2")


def test_store_write_is_complete_with_sane_modes(tmp_path):
    store = BundleStore(str(tmp_path / "root"))
    store.write("m", "1.0", b"model", b"{}\n")
    bundle = tmp_path / "root" / "m" / "1.0"
    assert models.tree(tmp_path / "root") == {"m/1.0/model.json": b"{}\n", "m/1.0/model.onnx": b"model"}
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o755
    assert stat.S_IMODE((bundle / "model.onnx").stat().st_mode) == 0o644
    assert stat.S_IMODE((bundle / "model.json").stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path / "root" / "m")) == ["1.0"]  # no temporary left


def test_store_write_replaces_an_empty_directory(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    BundleStore(str(tmp_path)).write("m", "1", b"a", b"b")
    assert models.tree(tmp_path) == {"m/1/model.json": b"b", "m/1/model.onnx": b"a"}


def test_store_write_refuses_to_overwrite_and_cleans_up(tmp_path):
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "1" / "other").write_bytes(b"keep")
    with pytest.raises(EdgeMLError, match="appeared while the bundle was being written"):
        BundleStore(str(tmp_path)).write("m", "1", b"a", b"b")
    assert models.tree(tmp_path) == {"m/1/other": b"keep"}


def test_store_write_unwritable_root(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(EdgeMLError, match="Cannot create the bundle directory"):
        BundleStore(str(tmp_path / "file")).write("m", "1", b"a", b"b")


def test_sha256_hex():
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
