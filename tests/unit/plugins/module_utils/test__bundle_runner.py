# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

import json

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_runner import build_request
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

VECTORS = [{"X": [[1.0, 2.0]]}, {"X": [[3.0, 4.0]]}]
EXPECTED = [{"label": [0]}, None]


def params(**kwargs):
    base = dict(
        src="m.onnx",
        dest="/b",
        name="digits",
        version="1.0.0",
        description="",
        metrics={},
        labels={},
        sample_inputs=None,
        sample_inputs_file=None,
        expected_outputs=None,
        tolerance={"rtol": 1e-4, "atol": 1e-5},
        intra_op_threads=1,
    )
    base.update(kwargs)
    return base


def test_defaults():
    request = build_request(params(sample_inputs=VECTORS))
    assert (request.name, request.version, request.rtol, request.atol) == ("digits", "1.0.0", 1e-4, 1e-5)
    assert request.sample_inputs == VECTORS and request.expected_outputs is None
    assert request.intra_op_threads == 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(name="Digits"), "Invalid bundle name 'Digits'"),
        (dict(name="a/b"), "Invalid bundle name"),
        (dict(version=".."), "Invalid bundle version '..'"),
        (dict(version="1 0"), "Invalid bundle version"),
        (dict(metrics={"accuracy": "high"}), "metrics.accuracy is 'high'; metrics must be finite numbers"),
        (dict(metrics={"ok": True}), "metrics must be finite numbers"),
        (dict(metrics={"x": float("nan")}), "metrics must be finite numbers"),
        (dict(labels={"gpu": True}), "labels.gpu is True; labels must be strings.*Quote"),
        (dict(labels={"x": ["a"]}), "labels must be strings"),
        (dict(tolerance={"rtol": -1.0, "atol": 0.0}), "tolerance must be finite and non-negative"),
        (dict(intra_op_threads=-1), "intra_op_threads must be 0"),
        (dict(expected_outputs=EXPECTED), "expected_outputs is given without sample inputs"),
    ],
)
def test_invalid_params(overrides, message):
    with pytest.raises(EdgeMLError, match=message):
        build_request(params(**overrides))


def test_metrics_and_labels_are_normalised():
    request = build_request(params(metrics={"a": "0.5", "b": 3, "c": "7"}, labels={"n": 1, "s": "x"}))
    assert request.metrics == {"a": 0.5, "b": 3, "c": 7}
    assert request.labels == {"n": "1", "s": "x"}


@pytest.mark.parametrize(
    "content, expected",
    [
        (VECTORS, None),
        ({"sample_inputs": VECTORS, "expected_outputs": EXPECTED}, EXPECTED),
        ({"sample_inputs": VECTORS}, None),
        ({"vectors": [{"inputs": VECTORS[0], "expected": EXPECTED[0]}, {"inputs": VECTORS[1]}]}, EXPECTED),
        ({"vectors": [{"inputs": VECTORS[0]}, {"inputs": VECTORS[1]}]}, None),
    ],
    ids=["list", "object", "object-no-expected", "vectors", "vectors-no-expected"],
)
def test_sample_inputs_file_layouts(tmp_path, content, expected):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(content))
    request = build_request(params(sample_inputs_file=str(path)))
    assert request.sample_inputs == VECTORS
    assert request.expected_outputs == expected


def test_expected_outputs_option_wins_over_file(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"sample_inputs": VECTORS, "expected_outputs": EXPECTED}))
    request = build_request(params(sample_inputs_file=str(path), expected_outputs=[None, None]))
    assert request.expected_outputs == [None, None]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ('{"something": 1}', "has an unexpected layout"),
        ('{"sample_inputs": [], "expected_outputs": 3}', "expected_outputs in .* is not a list"),
        ('{"vectors": [{"expected": 1}]}', "needs 'inputs'"),
    ],
)
def test_sample_inputs_file_errors(tmp_path, content, message):
    path = tmp_path / "s.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(EdgeMLError, match=message) as exc:
        build_request(params(sample_inputs_file=str(path)))
    assert "sample_inputs_file must be a JSON file" in str(exc.value)
