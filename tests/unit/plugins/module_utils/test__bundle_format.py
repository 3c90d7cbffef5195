# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

import json

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    check_values,
    dumps_manifest,
    loads_manifest,
    manifest_paths_differ,
    nested_shape,
    tensors_match,
    validate_name,
    validate_version,
    values_match,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError


@pytest.mark.parametrize("name", ["digits", "a", "0", "face-detect", "m_2", "a" * 63])
def test_valid_names(name):
    validate_name(name)


@pytest.mark.parametrize(
    "name", ["", "Digits", "-a", "a-", "_a", "a b", "a.b", "a/b", "a" * 64, "ü", "digits\n", 3]
)
def test_invalid_names(name):
    with pytest.raises(EdgeMLError, match="Invalid bundle name") as exc:
        validate_name(name)
    assert "regex" in str(exc.value)


@pytest.mark.parametrize("version", ["1", "1.0.0", "2024.05.1+cpu", "1.0.0-rc.1", "v1_2", "A" * 64])
def test_valid_versions(version):
    validate_version(version)


@pytest.mark.parametrize("version", ["", ".", "..", ".1", "-1", "1/2", "1 0", "A" * 65, "1.0\n", 1.0])
def test_invalid_versions(version):
    with pytest.raises(EdgeMLError, match="Invalid bundle version"):
        validate_version(version)


def test_dumps_manifest_is_sorted_indented_and_ends_with_newline():
    data = dumps_manifest({"b": [1, 2], "a": {"d": "é", "c": 0.5}})
    assert data == b'{\n  "a": {\n    "c": 0.5,\n    "d": "\xc3\xa9"\n  },\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert dumps_manifest(json.loads(data)) == data
    assert loads_manifest(data, "x") == {"a": {"c": 0.5, "d": "é"}, "b": [1, 2]}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_dumps_manifest_refuses_non_finite_numbers(value):
    with pytest.raises(EdgeMLError, match="JSON cannot hold"):
        dumps_manifest({"x": value})


@pytest.mark.parametrize("data", [b"not json", b"[1, 2]", b"\xff"])
def test_loads_manifest_errors(data):
    with pytest.raises(EdgeMLError, match="somewhere"):
        loads_manifest(data, "somewhere")


@pytest.mark.parametrize(
    "value, shape, flat",
    [
        (1.0, [], [1.0]),
        ([], [0], []),
        ([1, 2, 3], [3], [1, 2, 3]),
        ([[1, 2], [3, 4], [5, 6]], [3, 2], [1, 2, 3, 4, 5, 6]),
        ([[[1], [2]]], [1, 2, 1], [1, 2]),
    ],
)
def test_nested_shape(value, shape, flat):
    assert nested_shape(value, "x") == (shape, flat)


def test_nested_shape_ragged():
    with pytest.raises(EdgeMLError, match="ragged"):
        nested_shape([[1, 2], [3]], "x")


@pytest.mark.parametrize(
    "datatype, data, normalised",
    [
        ("FP32", [1, 2.5, -3], [1.0, 2.5, -3.0]),
        ("FP64", [0], [0.0]),
        ("FP16", [0.5], [0.5]),
        ("INT64", [1, -2, 3.0], [1, -2, 3]),
        ("UINT8", [0, 255], [0, 255]),
        ("INT8", [-128, 127], [-128, 127]),
        ("BOOL", [True, False], [True, False]),
        ("BYTES", ["a", ""], ["a", ""]),
    ],
)
def test_check_values_accepts(datatype, data, normalised):
    assert check_values(datatype, data, "x") == normalised


@pytest.mark.parametrize(
    "datatype, data, needs",
    [
        ("FP32", ["1.0"], "a number"),
        ("FP32", [True], "a number"),
        ("FP32", [float("nan")], "a finite number"),
        ("INT64", [1.5], "an integer"),
        ("INT32", [True], "an integer"),
        ("UINT8", [256], r"an integer in \[0, 255\]"),
        ("UINT8", [-1], r"an integer in \[0, 255\]"),
        ("INT8", [128], r"an integer in \[-128, 127\]"),
        ("BOOL", [1], "a boolean"),
        ("BYTES", [1], "a string"),
    ],
)
def test_check_values_rejects(datatype, data, needs):
    with pytest.raises(EdgeMLError, match="element 0 .* needs " + needs):
        check_values(datatype, data, "x")


@pytest.mark.parametrize(
    "datatype, actual, recorded, ok",
    [
        ("FP32", [1.0], [1.0], True),
        ("FP32", [1.00005], [1.0], True),  # within 1e-5 + 1e-4 * 1
        ("FP32", [1.001], [1.0], False),
        ("FP32", [0.0], [1e-6], True),
        ("FP32", [1.0, 2.0], [1.0], False),
        ("INT64", [3], [3], True),
        ("INT64", [3], [4], False),
        ("BYTES", ["a"], ["a"], True),
        ("BOOL", [True], [False], False),
    ],
)
def test_values_match_uses_the_format_rule(datatype, actual, recorded, ok):
    assert values_match(datatype, actual, recorded, rtol=1e-4, atol=1e-5) is ok


def test_tensors_match_by_name_and_subset():
    actual = [
        {"name": "label", "datatype": "INT64", "shape": [1], "data": [3]},
        {"name": "p", "datatype": "FP32", "shape": [1, 2], "data": [0.1, 0.9]},
    ]
    assert tensors_match(actual, [{"name": "label", "datatype": "INT64", "shape": [1], "data": [3]}], 0, 0)
    assert not tensors_match(
        actual, [{"name": "label", "datatype": "INT64", "shape": [1], "data": [4]}], 0, 0
    )
    assert not tensors_match(
        actual, [{"name": "label", "datatype": "INT64", "shape": [1, 1], "data": [3]}], 0, 0
    )
    assert not tensors_match(
        actual, [{"name": "other", "datatype": "INT64", "shape": [1], "data": [3]}], 0, 0
    )


def test_manifest_paths_differ():
    before = {"a": 1, "m": {"x": [1, 2], "y": "s"}, "gone": 1}
    after = {"a": 1, "m": {"x": [1, 3], "y": "t"}, "new": 1}
    assert manifest_paths_differ(before, after) == ["gone", "m.x[1]", "m.y", "new"]
    assert manifest_paths_differ(before, before) == []
