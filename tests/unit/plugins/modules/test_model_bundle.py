# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The model_bundle module run through AnsibleModule (argument spec, check mode, diff, JSON)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_runner
from ansible_collections.edgeml.fleet.plugins.modules import model_bundle
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

COLLECTIONS = Path(model_bundle.__file__).parents[5]  # the directory that holds ansible_collections/


@pytest.fixture
def env(tmp_path):
    src = models.write(tmp_path / "digits.onnx", models.digits_model())
    inputs, expected = models.digits_samples(3)
    samples = tmp_path / "samples.json"
    samples.write_text(json.dumps({"sample_inputs": inputs, "expected_outputs": expected}))
    dest = tmp_path / "bundles"
    args = dict(
        src=src,
        dest=str(dest),
        name="digits",
        version="1.0.0",
        sample_inputs_file=str(samples),
        metrics={"accuracy": 0.96},
        labels={"team": "vision"},
        description="test model",
    )
    return tmp_path, dest, args


def run(args, capsys, check=False, diff=False):
    args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    return models.run_module(model_bundle.main, args, capsys)


def test_create_then_idempotent(env, capsys):
    _unused1, dest, args = env
    result = run(args, capsys)
    assert result["changed"] is True, result
    bundle = dest / "digits" / "1.0.0"
    assert result["bundle_path"] == str(bundle)
    assert result["manifest_path"] == str(bundle / "model.json")
    assert sorted(os.listdir(bundle)) == ["model.json", "model.onnx"]
    assert (bundle / "model.onnx").read_bytes() == models.digits_model()
    on_disk = (bundle / "model.json").read_bytes()
    assert on_disk.endswith(b"}\n") and on_disk.startswith(b'{\n  "metadata"')
    assert json.loads(on_disk) == result["manifest"]
    assert result["sha256"] == result["manifest"]["model"]["sha256"]
    assert result["signature"]["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 64]}]
    assert result["expected_match"] == {"vectors": 3, "matched": 3, "mismatched": [], "rate": 1.0}
    assert len(result["actions"]) == 3 and "warnings" not in result
    assert "diff" not in result

    stamps = {p: p.stat().st_mtime_ns for p in bundle.iterdir()}
    again = run(args, capsys)
    assert again["changed"] is False and again["actions"] == []
    assert again["manifest"] == result["manifest"]
    assert {p: p.stat().st_mtime_ns for p in bundle.iterdir()} == stamps


def test_check_mode_writes_nothing_and_predicts(env, capsys):
    _unused2, dest, args = env
    predicted = run(args, capsys, check=True, diff=True)
    assert predicted["changed"] is True
    assert not dest.exists()
    assert predicted["diff"]["before"] == "" and predicted["diff"]["before_header"] == "(absent)"
    real = run(args, capsys)
    assert real["manifest"] == predicted["manifest"] and real["actions"] == predicted["actions"]
    assert json.loads(predicted["diff"]["after"]) == real["manifest"]
    assert run(args, capsys, check=True)["changed"] is False


def test_diff_when_unchanged(env, capsys):
    _unused4, _unused3, args = env
    run(args, capsys)
    result = run(args, capsys, diff=True)
    assert result["diff"]["before"] == result["diff"]["after"]
    assert result["diff"]["before_header"].endswith("digits/1.0.0/model.json")


def test_two_builds_are_byte_identical(env, capsys):
    tmp_path, _unused5, args = env
    run(dict(args, dest=str(tmp_path / "one")), capsys)
    run(dict(args, dest=str(tmp_path / "two")), capsys)
    assert models.tree(tmp_path / "one") == models.tree(tmp_path / "two")
    assert len(models.tree(tmp_path / "one")) == 2


def test_wrong_answers_warn_but_do_not_fail(env, capsys):
    tmp_path, dest, args = env
    src = models.write(tmp_path / "wrong.onnx", models.digits_model(permuted=True))
    result = run(dict(args, src=src, version="2.0.0"), capsys)
    assert result["changed"] is True and not result.get("failed")
    assert result["expected_match"]["rate"] < 1.0
    assert "disagree with expected_outputs" in json.dumps(result["warnings"])
    assert (dest / "digits" / "2.0.0" / "model.json").exists()


def test_inline_sample_inputs_and_tolerance(tmp_path, capsys):
    src = models.write(tmp_path / "two.onnx", models.two_input_model())
    result = run(
        dict(
            src=src,
            dest=str(tmp_path / "b"),
            name="two",
            version="0.1",
            sample_inputs=[
                {"a": [[0.5, 1.5]], "b": [1, 2]},
                [
                    {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [0, 0, 1, 1]},
                    {"name": "b", "data": [3, 4]},
                ],
            ],
            expected_outputs=[{"s": [[1.5, 3.5]]}, None],
            tolerance={"rtol": 0.0, "atol": 0.01},
        ),
        capsys,
    )
    assert result["changed"] is True, result
    vectors = result["manifest"]["smoke_tests"]["vectors"]
    assert vectors[1]["outputs"][0] == {
        "name": "s",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [3.0, 4.0, 4.0, 5.0],
    }
    assert result["manifest"]["smoke_tests"]["tolerance"] == {"rtol": 0.0, "atol": 0.01}
    assert result["expected_match"]["rate"] == 1.0


def test_no_sample_inputs_warns(tmp_path, capsys):
    src = models.write(tmp_path / "m.onnx", models.add_one_model())
    result = run(dict(src=src, dest=str(tmp_path / "b"), name="m", version="1"), capsys)
    assert result["changed"] is True and result["manifest"]["smoke_tests"]["vectors"] == []
    assert "No sample inputs" in json.dumps(result["warnings"])


def inline(args, sample_inputs):
    args.pop("sample_inputs_file")
    args["sample_inputs"] = sample_inputs


def _bad_src(kind):
    return {
        "text": b"model: not really\n",
        "random": bytes(range(256)) * 4,
        "broken": models.broken_model(),
    }[kind]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda tmp, a: a.update(src=str(tmp / "missing.onnx")), "missing.onnx does not exist"),
        (lambda tmp, a: a.update(src=models.write(tmp / "t.onnx", _bad_src("text"))), "is not an ONNX model"),
        (
            lambda tmp, a: a.update(src=models.write(tmp / "r.onnx", _bad_src("random"))),
            "is not an ONNX model",
        ),
        (lambda tmp, a: a.update(src=models.write(tmp / "b.onnx", _bad_src("broken"))), "cannot load"),
        (lambda tmp, a: a.update(name="Digits"), "Invalid bundle name"),
        (lambda tmp, a: a.update(version="../x"), "Invalid bundle version"),
        (lambda tmp, a: inline(a, [{"Y": [[0.0] * 64]}]), "no input named 'Y'"),
        (lambda tmp, a: inline(a, [{}]), "'X' is missing"),
        (lambda tmp, a: inline(a, [{"X": [[0.0] * 63]}]), "dimension 1 is 63"),
        (lambda tmp, a: inline(a, [{"X": [[[0.0] * 64]]}]), "rank 3"),
        (lambda tmp, a: inline(a, [{"X": [["a"] * 64]}]), "needs a number"),
        (
            lambda tmp, a: inline(a, [[{"name": "X", "datatype": "INT64", "data": [0] * 64}]]),
            "datatype INT64 does not match",
        ),
        (
            lambda tmp, a: inline(a, [[{"name": "X", "shape": [1, 64], "data": [0.0] * 60}]]),
            "data has 60 elements but shape",
        ),
    ],
    ids=[
        "src-missing",
        "src-text",
        "src-random",
        "broken-graph",
        "name",
        "version",
        "unknown-input",
        "missing-input",
        "wrong-shape",
        "wrong-rank",
        "wrong-value-type",
        "wrong-datatype",
        "length-mismatch",
    ],
)
def test_failures_write_nothing(env, capsys, change, message):
    tmp_path, dest, args = env
    change(tmp_path, args)
    result = run(args, capsys)
    assert result["failed"] is True and not result.get("changed")
    assert message in result["msg"], result["msg"]
    assert not dest.exists()


def test_versions_are_immutable(env, capsys):
    tmp_path, dest, args = env
    run(args, capsys)
    before = models.tree(dest)
    result = run(dict(args, description="changed"), capsys)
    assert result["failed"] and "differs at: metadata.description" in result["msg"]
    assert "publish the change as a new version" in result["msg"]
    assert result["differences"] == ["metadata.description"]
    other = models.write(tmp_path / "other.onnx", models.digits_model(permuted=True))
    result = run(dict(args, src=other), capsys)
    assert result["failed"] and "with a different model" in result["msg"]
    assert models.tree(dest) == before


def test_mutually_exclusive_sample_options(env, capsys):
    _unused7, _unused6, args = env
    result = run(dict(args, sample_inputs=[{"X": [[0.0] * 64]}]), capsys)
    assert result["failed"] and "mutually exclusive" in result["msg"]


def test_missing_library_is_reported(env, capsys, monkeypatch):
    monkeypatch.setattr(
        _bundle_runner, "LIB_ERRORS", (("onnxruntime", "Traceback: No module named onnxruntime"),)
    )
    _unused8, dest, args = env
    result = run(args, capsys)
    assert result["failed"] and "Failed to import the required Python library (onnxruntime)" in result["msg"]
    assert not dest.exists()


def test_end_to_end_with_ansible(env):
    """The real thing: ansible localhost -m edgeml.fleet.model_bundle, twice."""
    _unused9, dest, args = env
    ansible = Path(sys.executable).with_name("ansible")
    if not ansible.exists():
        pytest.skip("ansible CLI not installed next to the test interpreter")
    module_args = json.dumps(args)
    command = [
        str(ansible),
        "localhost",
        "-i",
        "localhost,",
        "-c",
        "local",
        "-m",
        "edgeml.fleet.model_bundle",
        "-a",
        module_args,
        "-e",
        f"ansible_python_interpreter={sys.executable}",
        "-o",
    ]
    config = env[0] / "ansible.cfg"
    config.write_text("[defaults]\n")
    environ = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS),
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_LOAD_CALLBACK_PLUGINS="false",
    )
    first = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "CHANGED" in first.stdout
    second = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0 and "SUCCESS" in second.stdout, second.stdout + second.stderr
    assert '"changed": false' in second.stdout
    assert (dest / "digits" / "1.0.0" / "model.onnx").read_bytes() == models.digits_model()


def test_reference_profile_through_the_module(env, capsys):
    tmp_path, dest, args = env
    reference = tmp_path / "validation.npz"
    np.savez(reference, X=models.digits_split()[1])
    args = dict(args, reference_inputs_file=str(reference), profile_bins=5)
    predicted = run(args, capsys, check=True)
    assert predicted["changed"] is True and not (dest / "digits").exists()
    assert f"write {dest}/digits/1.0.0/profile.json" in predicted["actions"]
    result = run(args, capsys)
    profile = json.loads((dest / "digits" / "1.0.0" / "profile.json").read_text())
    assert profile["bins"] == 5 and all(len(f["edges"]) <= 4 for f in profile["inputs"][0]["features"])
    assert result["manifest"]["reference_profile"]["file"] == "profile.json"
    assert run(args, capsys)["changed"] is False
