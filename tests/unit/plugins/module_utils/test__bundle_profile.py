# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The reference profile model_bundle writes (profile.json) and what the model server makes
of it: real onnxruntime on both sides, the server's drift monitor fed the reference itself
(no drift) and a shifted copy of it (drift)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import BundleStore, sha256_hex
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import PROFILE_FILE
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_service import BundleRequest, BundleService
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

SERVER_DIR = Path(__file__).resolve().parents[4] / "server"
sys.path.insert(0, str(SERVER_DIR))

from edgeml_server import bundle as server_bundle  # noqa: E402 - needs the sys.path entry above


def _reference(tmp_path: Path, rows: np.ndarray | None = None, suffix: str = ".npz") -> str:
    x = models.digits_split()[1] if rows is None else rows
    path = tmp_path / f"validation{suffix}"
    if suffix == ".npz":
        np.savez(path, X=x)
    elif suffix == ".npy":
        np.save(path, x)
    else:
        path.write_text(json.dumps({"X": x.tolist()}))
    return str(path)


def _bundle(tmp_path: Path, reference: str | None, version: str = "1.0.0", **kw):
    tmp_path.mkdir(parents=True, exist_ok=True)
    src = models.write(tmp_path / "digits.onnx", models.digits_model())
    inputs, expected = models.digits_samples(2)
    request = BundleRequest(
        src=src,
        dest=str(tmp_path / "bundles"),
        name="digits",
        version=version,
        sample_inputs=inputs,
        expected_outputs=expected,
        reference_inputs_file=reference,
        **kw,
    )
    service = BundleService(BundleStore(request.dest))
    desired = service.desired(request)
    plan = service.plan(request, desired)
    service.apply(request, desired, plan, check_mode=False)
    return request, service, desired, plan


def test_profile_is_written_and_recorded_in_the_manifest(tmp_path):
    _request, _service, desired, plan = _bundle(tmp_path, _reference(tmp_path))
    bdir = Path(plan.bundle_path)
    blob = (bdir / PROFILE_FILE).read_bytes()
    recorded = {"file": PROFILE_FILE, "sha256": sha256_hex(blob), "size": len(blob)}
    assert desired.manifest["reference_profile"] == recorded
    assert f"write {bdir}/{PROFILE_FILE}" in plan.actions()
    profile = json.loads(blob)
    x_test = models.digits_split()[1]
    assert profile["rows"] == len(x_test) and profile["bins"] == 10
    features = profile["inputs"][0]["features"]
    assert len(features) == 64
    for j, feat in enumerate(features):
        assert sum(feat["expected"]) == pytest.approx(1.0, abs=1e-6)
        assert len(feat["expected"]) == len(feat["edges"]) + 1
        assert (feat["min"], feat["max"]) == (x_test[:, j].min(), x_test[:, j].max())
    # Pixel 0 is always blank: its tied quantiles collapse to one cut point, every row above it.
    assert features[0]["edges"] == [0.0] and features[0]["expected"] == [0.0, 1.0]
    label, probabilities = profile["outputs"]
    assert label["name"] == "label" and label["classes"] == list(range(10))
    assert len(label["expected"]) == 11 and label["expected"][-1] == 0.0  # the "other" class
    assert probabilities["name"] == "probabilities" and len(probabilities["features"]) == 10


@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_npy_and_json_references_give_the_same_profile(tmp_path, suffix):
    _r, _s, from_npz, _p = _bundle(tmp_path / "a", _reference(tmp_path, suffix=".npz"))
    _r, _s, other, _p = _bundle(tmp_path / "b", _reference(tmp_path, suffix=suffix))
    assert other.files == from_npz.files


def test_second_run_changes_nothing_and_a_tampered_profile_is_reported(tmp_path):
    reference = _reference(tmp_path)
    _bundle(tmp_path, reference)
    _request, _service, _desired, plan = _bundle(tmp_path, reference)
    assert plan.action == "none"
    path = Path(plan.bundle_path) / PROFILE_FILE
    path.write_text(path.read_text().replace('"rows": 450', '"rows": 451'))
    with pytest.raises(EdgeMLError, match=r"is corrupt: profile\.json has sha256"):
        _bundle(tmp_path, reference)


def test_adding_a_profile_to_an_existing_version_needs_a_new_version(tmp_path):
    _bundle(tmp_path, None)
    with pytest.raises(EdgeMLError, match="differs at: reference_profile"):
        _bundle(tmp_path, _reference(tmp_path))


@pytest.mark.parametrize(
    "rows, kw, words",
    [
        (np.zeros((50, 64), np.float32), {}, "has 50 rows; a reference profile needs at least 100"),
        (np.zeros((200, 63), np.float32), {}, "shape [200, 63] does not fit the model's [-1, 64]"),
        (None, {"profile_bins": 1}, "profile_bins is 1; it must be 2..63"),
        (
            np.where(np.arange(150)[:, None] < 120, np.nan, 1.0) * np.ones((150, 64), np.float32),
            {},
            "'X': only 30 of 150 reference rows have finite values",
        ),
    ],
)
def test_bad_reference_says_what_is_wrong_and_writes_nothing(tmp_path, rows, kw, words):
    with pytest.raises(EdgeMLError, match=re.escape(words)):
        _bundle(tmp_path, _reference(tmp_path, rows), **kw)
    assert not (tmp_path / "bundles" / "digits" / "1.0.0").exists()


def test_reference_naming_another_input_is_refused(tmp_path):
    path = tmp_path / "ref.npz"
    np.savez(path, Y=models.digits_split()[1])
    with pytest.raises(EdgeMLError, match=r"names inputs \['Y'\], the model's are \['X'\]"):
        _bundle(tmp_path, str(path))


def test_the_server_measures_no_drift_on_the_reference_and_drift_on_a_shift(tmp_path):
    """The collection writes the profile, the server bins live rows: same binning rule."""
    x_test = models.digits_split()[1]
    _bundle(tmp_path, _reference(tmp_path))
    loaded = server_bundle.load_bundle(tmp_path / "bundles", "digits", "1.0.0", drift_window=len(x_test))
    assert loaded.drift is not None
    labels, probabilities = loaded.session.run(["label", "probabilities"], {"X": x_test})
    loaded.drift.observe({"X": x_test}, {"label": labels, "probabilities": probabilities})
    same = loaded.drift.snapshot()
    assert same.rows == len(x_test)
    assert same.overall_psi < 1e-3 and all(t.psi < 1e-3 for t in same.outputs)
    assert same.inputs[0].out_of_range_ratio == 0.0
    # Dimmer images (every pixel halved): the inputs drift, and the answers with them.
    dim = (x_test / 2).astype(np.float32)
    labels, probabilities = loaded.session.run(["label", "probabilities"], {"X": dim})
    loaded.drift.observe({"X": dim}, {"label": labels, "probabilities": probabilities})
    shifted = loaded.drift.snapshot()
    assert shifted.overall_psi > 0.25
    assert {t.name: t.psi > 0.1 for t in shifted.outputs} == {"label": True, "probabilities": True}
