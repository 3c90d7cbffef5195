# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The bundle format is read and written in four places: the collection
(plugins/module_utils/_bundle_format.py, model_bundle, model_deployment), the model server
(server/edgeml_server/bundle.py and datatypes.py, installed in the server image, where the
collection cannot be imported), the health probe (server/edgeml_server/probe.py, standard
library only, so it restates the rules) and the server's test writer
(server/tests/bundlewriter.py).
These tests hold the copies together: the same names and versions accepted, the same
datatypes, the same tolerance rule, and a bundle written by either side read by the other.
Real onnxruntime on both sides."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_format as fmt
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import BundleStore
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_service import BundleRequest, BundleService
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

SERVER_DIR = Path(__file__).resolve().parents[4] / "server"
sys.path.insert(0, str(SERVER_DIR))
sys.path.insert(0, str(SERVER_DIR / "tests"))

import bundlewriter as bw  # noqa: E402 - needs the sys.path entries above
from edgeml_server import bundle as server_bundle  # noqa: E402
from edgeml_server import datatypes as server_datatypes  # noqa: E402
from edgeml_server import drift as server_drift  # noqa: E402
from edgeml_server import probe  # noqa: E402

NAMES = ["digits", "a", "face-detect", "x_1", "a" * 63, "a" * 64, "-a", "a-", "Digits", "", "digits\n", "dig its"]
VERSIONS = ["1.0.0", "2024.05.1+cpu", "v1", "a" * 64, "a" * 65, ".", "..", "-1", "1.0.0\n", "1/0", ""]


def _collection_accepts(check, value: str) -> bool:
    try:
        check(value)
    except EdgeMLError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES, ids=repr)
def test_bundle_names_accepted_alike(name):
    assert _collection_accepts(fmt.validate_name, name) == server_bundle.valid_name(name)


@pytest.mark.parametrize("version", VERSIONS, ids=repr)
def test_bundle_versions_accepted_alike(version):
    assert _collection_accepts(fmt.validate_version, version) == server_bundle.valid_version(version)


def test_the_probe_restates_the_same_patterns():
    assert probe._NAME_PATTERN == server_bundle.NAME_RE.pattern == fmt.NAME_RE.pattern
    assert probe._VERSION_PATTERN == server_bundle.VERSION_RE.pattern == fmt.VERSION_RE.pattern


def test_datatypes_alike():
    assert set(fmt.DATATYPES) == set(server_datatypes.DATATYPES)
    assert fmt.DATATYPES == {oip: ort for ort, oip in server_datatypes.ORT_TO_OIP.items()}
    assert set(fmt.FLOAT_TYPES) == set(server_datatypes.FLOAT_TYPES) == set(probe._FLOAT_TYPES)


def test_the_profile_schema_alike():
    """profile.json: written by _bundle_profile, read by the server's drift.py."""
    assert fmt.PROFILE_SCHEMA_VERSION == server_drift.PROFILE_SCHEMA_VERSION
    assert fmt.PROFILE_FILE == "profile.json"


def test_a_bundle_model_bundle_writes_loads_in_the_server(tmp_path):
    src = models.write(tmp_path / "digits.onnx", models.digits_model())
    inputs, expected = models.digits_samples(3)
    request = BundleRequest(
        src=src,
        dest=str(tmp_path / "bundles"),
        name="digits",
        version="1.0.0",
        sample_inputs=inputs,
        expected_outputs=expected,
    )
    service = BundleService(BundleStore(request.dest))
    desired = service.desired(request)
    service.apply(request, desired, service.plan(request, desired), check_mode=False)

    loaded = server_bundle.load_bundle(Path(request.dest), "digits", "1.0.0")

    assert (loaded.name, loaded.version) == ("digits", "1.0.0")
    assert loaded.sha256 == desired.manifest["model"]["sha256"]


def test_a_bundle_the_server_tests_write_is_read_by_the_collection(tmp_path):
    bw.write_bundle(tmp_path, "digits", "1.0.0", bw.make_mlp_onnx())
    existing = BundleStore(str(tmp_path)).read("digits", "1.0.0")
    assert existing.state == "complete"
    manifest = fmt.loads_manifest(existing.manifest, "model.json")
    assert manifest["schema_version"] == fmt.SCHEMA_VERSION
    assert manifest["model"]["file"] == fmt.MODEL_FILE
    assert manifest["model"]["sha256"] == hashlib.sha256(existing.model).hexdigest()
    # Both sides serialise the manifest the same way (sorted keys, 2-space indent, final newline).
    assert existing.manifest == fmt.dumps_manifest(manifest)


@pytest.mark.parametrize("share, accepted", [(0.9, True), (1.5, False)], ids=["within", "beyond"])
def test_the_tolerance_rule_alike(tmp_path, share, accepted):
    """A recorded output moved by SHARE of its allowed difference (atol + rtol * |w|):
    the server's self-test and the collection's rule (the deploy smoke gate) agree."""
    bdir = bw.write_bundle(tmp_path, "digits", "1.0.0", bw.make_mlp_onnx())
    manifest = json.loads((bdir / "model.json").read_text())
    tolerance = manifest["smoke_tests"]["tolerance"]
    recorded = manifest["smoke_tests"]["vectors"][0]["outputs"][1]  # probabilities, FP32
    answered = list(recorded["data"])
    value = recorded["data"][0]
    recorded["data"][0] = value + share * (tolerance["atol"] + tolerance["rtol"] * abs(value))
    (bdir / "model.json").write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")

    collection = fmt.values_match("FP32", answered, recorded["data"], tolerance["rtol"], tolerance["atol"])
    probed = probe.first_mismatch("FP32", answered, recorded["data"], tolerance["rtol"], tolerance["atol"]) is None
    try:
        server_bundle.load_bundle(tmp_path, "digits", "1.0.0")
        server = True
    except server_bundle.BundleError:
        server = False
    assert (collection, probed, server) == (accepted, accepted, accepted)
