# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""model_bundle_verify, the controller's check before delivery: real bundles written by
model_bundle, signed with the real model-signing library, then changed as an attacker or
an accident would change them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_signing as signing
from ansible_collections.edgeml.fleet.plugins.modules import model_bundle_verify
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models


@pytest.fixture
def bundle(digits_bundle) -> Path:
    return digits_bundle


def verify(bundle, capsys, check=False, **args):
    args = {"path": str(bundle), "name": "digits", "version": "1.0.0", **args}
    return models.run_module(model_bundle_verify.main, dict(args, _ansible_check_mode=check), capsys)


def test_a_signed_bundle_passes_and_says_what_was_checked(bundle, keys, capsys):
    signing.sign_bundle(str(bundle), str(keys["next"][0]))
    manifest = json.loads((bundle / "model.json").read_text())
    for check in (False, True):
        result = verify(bundle, capsys, check=check, trusted_keys=[str(keys["release"][1]), str(keys["next"][1])])
        assert not result.get("failed"), result
        assert result["changed"] is False
        assert result["sha256"] == manifest["model"]["sha256"]
        assert (result["name"], result["version"]) == ("digits", "1.0.0")
        assert result["signature"]["checked"] and result["signature"]["trusted_key"] == str(keys["next"][1])


def every_file_sha256(bundle: Path) -> dict[str, str]:
    return {
        str(path.relative_to(bundle)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(bundle.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_every_file_of_the_bundle_comes_back_with_its_sha256(bundle, keys, capsys, signed):
    """What the role compares with the host's copy to decide whether to send the bundle."""
    (bundle / "extra").mkdir()
    (bundle / "extra" / "labels.txt").write_text("0 1 2 3 4 5 6 7 8 9\n")
    if signed:
        signing.sign_bundle(str(bundle), str(keys["release"][0]))
    result = verify(bundle, capsys, signature_policy="optional", trusted_keys=[str(keys["release"][1])])
    assert not result.get("failed"), result
    assert result["files"] == every_file_sha256(bundle)
    assert {"model.json", "model.onnx", "extra/labels.txt"} <= set(result["files"])
    assert ("model.sig" in result["files"]) is signed


def test_a_model_replaced_with_its_checksum_rewritten_is_refused(bundle, keys, capsys):
    signing.sign_bundle(str(bundle), str(keys["release"][0]))
    other = models.digits_model(permuted=True)
    (bundle / "model.onnx").write_bytes(other)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["model"].update(sha256=hashlib.sha256(other).hexdigest(), size=len(other))
    (bundle / "model.json").write_text(json.dumps(manifest))
    result = verify(bundle, capsys, trusted_keys=[str(keys["release"][1])])
    assert result["failed"]
    assert "changed after it was signed" in result["msg"] and "Nothing was changed on any host" in result["msg"]
    assert result["changes"] == ["model.json changed", "model.onnx changed"]


def test_an_unsigned_bundle_is_refused_under_required_and_passes_under_optional(bundle, keys, capsys):
    refused = verify(bundle, capsys, trusted_keys=[str(keys["release"][1])])
    assert refused["failed"] and "is not signed" in refused["msg"]
    passed = verify(bundle, capsys, signature_policy="optional", trusted_keys=[str(keys["release"][1])])
    assert not passed.get("failed") and passed["signature"] == {"signed": False, "policy": "optional"}


def test_an_untrusted_signer_is_refused(bundle, keys, capsys):
    signature = signing.sign_bundle(str(bundle), str(keys["stranger"][0]))
    result = verify(bundle, capsys, signature_policy="optional", trusted_keys=[str(keys["release"][1])])
    assert result["failed"] and f"key {signature.key}, which is not a trusted key" in result["msg"]


def test_a_corrupt_unsigned_model_is_refused(bundle, capsys):
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    result = verify(bundle, capsys, signature_policy="optional")
    assert result["failed"] and "is corrupt: model.onnx has sha256" in result["msg"]


def test_a_mislabelled_bundle_is_refused(bundle, keys, capsys):
    signing.sign_bundle(str(bundle), str(keys["release"][0]))
    result = verify(bundle, capsys, version="2.0.0", trusted_keys=[str(keys["release"][1])])
    assert result["failed"] and "model.json says version '1.0.0' where '2.0.0' is deployed" in result["msg"]


def test_a_missing_bundle_and_a_bad_policy_say_how_to_fix_them(tmp_path, capsys):
    missing = verify(tmp_path / "nothing", capsys)
    assert missing["failed"] and "No bundle at" in missing["msg"] and "model_deployment_bundle_src" in missing["msg"]
    bad = verify(tmp_path, capsys, signature_policy="sometimes")
    assert bad["failed"] and "signature_policy" in bad["msg"] and "required, optional" in bad["msg"]
