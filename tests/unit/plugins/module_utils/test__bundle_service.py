# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

import json

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import BundleStore
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_service import (
    BundleRequest,
    BundleService,
    normalize_tensors,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

SPECS = [
    {"name": "a", "datatype": "FP32", "shape": [-1, 2]},
    {"name": "b", "datatype": "INT64", "shape": [2]},
]


@pytest.mark.parametrize(
    "raw, expected",
    [
        # mapping form, nested data gives the shape
        ({"a": [[1, 2]], "b": [3, 4]}, [([1, 2], [1.0, 2.0]), ([2], [3, 4])]),
        # mapping form, flat data fitted to the one dynamic dim
        ({"b": [3, 4], "a": [1, 2, 3, 4]}, [([2, 2], [1.0, 2.0, 3.0, 4.0]), ([2], [3, 4])]),
        # tensor list form with explicit shape and datatype
        (
            [
                {"name": "a", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]},
                {"name": "b", "shape": [2], "data": [[3, 4]]},
            ],
            [([1, 2], [1.0, 2.0]), ([2], [3, 4])],
        ),
    ],
    ids=["mapping-nested", "mapping-flat", "tensor-list"],
)
def test_normalize_accepts(raw, expected):
    tensors = normalize_tensors(raw, SPECS, "v", "input", require_all=True)
    assert [t["name"] for t in tensors] == ["a", "b"]  # signature order
    assert [(t["shape"], t["data"]) for t in tensors] == expected
    assert [t["datatype"] for t in tensors] == ["FP32", "INT64"]


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"a": [[1, 2]], "b": [3, 4], "c": [1]}, "the model has no input named 'c'.*inputs are: 'a', 'b'"),
        ({"a": [[1, 2]]}, "'b' is missing.*Give a value for every model input"),
        ([{"name": "a", "data": [[1, 2]]}, {"name": "a", "data": [[1, 2]]}], "given twice"),
        ({"a": [1, 2], "b": [[3, 4]]}, "shape \\[1, 2\\] has rank 2 but the model expects rank 1"),
        ({"a": [[[1, 2]]], "b": [3, 4]}, "has rank 3 but the model expects rank 2"),
        ({"a": [[1, 2, 3]], "b": [3, 4]}, "dimension 1 is 3 but the model expects 2"),
        ({"a": [[1, 2]], "b": [3, 4, 5]}, "data has 3 elements but the model's shape \\[2\\] needs 2"),
        ({"a": [1, 2, 3], "b": [3, 4]}, "3 elements, which is not a whole number of 2-element rows"),
        (
            [{"name": "a", "shape": [2, 2], "data": [1, 2]}, {"name": "b", "data": [3, 4]}],
            "data has 2 elements but shape",
        ),
        (
            [{"name": "a", "shape": [1, -2], "data": [1, 2]}, {"name": "b", "data": [3, 4]}],
            "not a list of non-negative",
        ),
        (
            [{"name": "a", "datatype": "FP64", "data": [[1, 2]]}, {"name": "b", "data": [3, 4]}],
            "datatype FP64 does not match the model's FP32",
        ),
        ({"a": [["x", "y"]], "b": [3, 4]}, "element 0 is 'x', but datatype FP32 needs a number"),
        ({"a": [[1, 2]], "b": [3.5, 4]}, "datatype INT64 needs an integer"),
        ({"a": [[1, 2], [3]], "b": [3, 4]}, "ragged"),
        ([{"name": "a"}], "needs at least 'name' and 'data'"),
        ([{"name": "a", "data": [[1, 2]], "dtype": "FP32"}], "unknown keys dtype"),
        ("X", "must be a list of tensors or a mapping"),
        ({}, "'a', 'b' are missing"),
    ],
)
def test_normalize_rejects(raw, message):
    with pytest.raises(EdgeMLError, match=message) as exc:
        normalize_tensors(raw, SPECS, "sample_inputs[0]", "input", require_all=True)
    assert str(exc.value).startswith("sample_inputs[0]")
    assert exc.value.hint  # says how to fix it


def test_normalize_several_dynamic_dims_needs_shape():
    specs = [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}]
    with pytest.raises(EdgeMLError, match="several dynamic dimensions"):
        normalize_tensors({"x": [1, 2]}, specs, "v", "input", require_all=True)
    assert normalize_tensors({"x": [[1, 2]]}, specs, "v", "input", require_all=True)[0]["shape"] == [1, 2]


def test_normalize_scalar():
    specs = [{"name": "x", "datatype": "INT64", "shape": []}]
    assert normalize_tensors({"x": 3}, specs, "v", "input", require_all=True)[0] == {
        "name": "x",
        "datatype": "INT64",
        "shape": [],
        "data": [3],
    }


def test_expected_subset_uses_output_shape():
    specs = [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "p", "datatype": "FP32", "shape": [-1, 10]},
    ]
    tensors = normalize_tensors(
        {"label": [3]}, specs, "e", "output", require_all=False, fallbacks={"label": [1]}
    )
    assert tensors == [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}]


# ---------------------------------------------------------------------------


@pytest.fixture
def src(tmp_path):
    return models.write(tmp_path / "digits.onnx", models.digits_model())


def request_for(src, dest, **kwargs):
    inputs, expected = models.digits_samples(3)
    kwargs.setdefault("sample_inputs", inputs)
    kwargs.setdefault("expected_outputs", expected)
    return BundleRequest(src=src, dest=dest, name="digits", version="1.0.0", **kwargs)


def test_desired_manifest(src, tmp_path):
    request = request_for(
        src, str(tmp_path / "b"), description="d", metrics={"accuracy": 0.9}, labels={"t": "v"}
    )
    desired = BundleService(BundleStore(request.dest)).desired(request)
    manifest = desired.manifest
    assert manifest["schema_version"] == 1
    assert (manifest["name"], manifest["version"]) == ("digits", "1.0.0")
    assert manifest["model"]["size"] == len(models.digits_model())
    assert manifest["model"]["file"] == "model.onnx"
    assert len(manifest["model"]["sha256"]) == 64
    assert manifest["metadata"] == {"description": "d", "metrics": {"accuracy": 0.9}, "labels": {"t": "v"}}
    assert manifest["smoke_tests"]["tolerance"] == {"rtol": 1e-4, "atol": 1e-5}
    vectors = manifest["smoke_tests"]["vectors"]
    assert len(vectors) == 3
    for vector in vectors:
        assert [t["name"] for t in vector["outputs"]] == ["label", "probabilities"]
        assert vector["outputs"][1]["shape"] == [1, 10]
        assert vector["inputs"][0]["shape"] == [1, 64]
        assert vector["expected"][0]["name"] == "label"
    assert desired.expected_match == {"vectors": 3, "matched": 3, "mismatched": [], "rate": 1.0}
    assert json.loads(desired.manifest_bytes) == manifest


def test_wrong_model_is_reported_not_failed(tmp_path):
    src = models.write(tmp_path / "bad.onnx", models.digits_model(permuted=True))
    request = request_for(src, str(tmp_path / "b"))
    desired = BundleService(BundleStore(request.dest)).desired(request)
    match = desired.expected_match
    assert match["vectors"] == 3 and match["matched"] < 3 and match["mismatched"]
    # recorded outputs are the model's own answers; expected keeps the truth
    vector = desired.manifest["smoke_tests"]["vectors"][match["mismatched"][0]]
    assert vector["outputs"][0]["data"] != vector["expected"][0]["data"]


def test_expected_none_entries_and_length(src, tmp_path):
    _inputs, expected = models.digits_samples(3)
    service = BundleService(BundleStore(str(tmp_path)))
    desired = service.desired(request_for(src, str(tmp_path), expected_outputs=[None, expected[1], None]))
    assert desired.expected_match["vectors"] == 1
    assert "expected" not in desired.manifest["smoke_tests"]["vectors"][0]
    assert service.desired(request_for(src, str(tmp_path), expected_outputs=None)).expected_match is None
    with pytest.raises(EdgeMLError, match="expected_outputs has 2 entries but there are 3"):
        service.desired(request_for(src, str(tmp_path), expected_outputs=expected[:2]))


def test_plan_create_then_none_then_conflicts(src, tmp_path):
    dest = str(tmp_path / "b")
    service = BundleService(BundleStore(dest))
    request = request_for(src, dest)
    desired = service.desired(request)
    plan = service.plan(request, desired)
    assert plan.action == "create" and plan.changed and plan.before is None
    service.apply(request, desired, plan, check_mode=True)
    assert not (tmp_path / "b").exists()
    service.apply(request, desired, plan, check_mode=False)
    assert (tmp_path / "b" / "digits" / "1.0.0" / "model.json").read_bytes() == desired.manifest_bytes

    again = service.plan(request, service.desired(request))
    assert again.action == "none" and not again.changed and again.actions() == []

    changed = request_for(src, dest, metrics={"accuracy": 0.5})
    with pytest.raises(
        EdgeMLError, match=r"other content \(differs at: metadata\.metrics\.accuracy\).*immutable"
    ):
        service.plan(changed, service.desired(changed))

    other = request_for(models.write(tmp_path / "o.onnx", models.digits_model(permuted=True)), dest)
    with pytest.raises(EdgeMLError, match=r"with a different model.*publish this model as a new version"):
        service.plan(other, service.desired(other))


def test_outputs_within_tolerance_are_the_same_bundle(src, tmp_path):
    """Another controller may compute the last bits differently: not a new version."""
    dest = tmp_path / "b"
    service = BundleService(BundleStore(str(dest)))
    request = request_for(src, str(dest))
    desired = service.desired(request)
    service.apply(request, desired, service.plan(request, desired), check_mode=False)
    path = dest / "digits" / "1.0.0" / "model.json"
    manifest = json.loads(path.read_bytes())
    probabilities = manifest["smoke_tests"]["vectors"][0]["outputs"][1]["data"]
    probabilities[0] = probabilities[0] * (1 + 1e-6) + 1e-7
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    plan = service.plan(request, service.desired(request))
    assert plan.action == "none" and plan.after == manifest

    probabilities[0] += 0.01
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(EdgeMLError, match=r"differs at: smoke_tests\.vectors\[0\]\.outputs\[1\]\.data\[0\]"):
        service.plan(request, service.desired(request))


def test_corrupt_and_incomplete_existing_bundles(src, tmp_path):
    dest = tmp_path / "b"
    service = BundleService(BundleStore(str(dest)))
    request = request_for(src, str(dest))
    desired = service.desired(request)
    service.apply(request, desired, service.plan(request, desired), check_mode=False)
    model = dest / "digits" / "1.0.0" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(EdgeMLError, match=r"is corrupt: model\.onnx has sha256 .* but model\.json records"):
        service.plan(request, desired)
    (dest / "digits" / "1.0.0" / "model.json").unlink()
    with pytest.raises(EdgeMLError, match=r"does not hold both model\.onnx and model\.json"):
        service.plan(request, desired)


def test_desired_src_missing(tmp_path):
    request = request_for(str(tmp_path / "nope.onnx"), str(tmp_path))
    with pytest.raises(EdgeMLError, match=r"Model file \(src\) .*nope\.onnx does not exist\. Set src"):
        BundleService(BundleStore(str(tmp_path))).desired(request)
