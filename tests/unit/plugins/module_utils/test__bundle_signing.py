# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Bundle signatures with the real model-signing library: a bundle made by model_bundle,
signed, then changed the ways an attacker with write access to a bundle would."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_signing as signing
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.modules import model_bundle
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models
from ansible_collections.edgeml.fleet.tests.unit.plugins.bundle_models import write_key


@pytest.fixture
def bundle_args(tmp_path):
    src = models.write(tmp_path / "digits.onnx", models.digits_model())
    inputs, expected = models.digits_samples(3)
    return dict(
        src=src,
        dest=str(tmp_path / "bundles"),
        name="digits",
        version="1.0.0",
        sample_inputs=inputs,
        expected_outputs=expected,
    )


def run_bundle(args, capsys, check=False):
    return models.run_module(model_bundle.main, dict(args, _ansible_check_mode=check, _ansible_diff=False), capsys)


@pytest.fixture
def bundle(bundle_args, capsys) -> Path:
    """A bundle as model_bundle writes it (model, manifest with smoke vectors)."""
    result = run_bundle(bundle_args, capsys)
    assert not result.get("failed"), result
    return Path(result["bundle_path"])


def public_keys(keys, *names) -> list[str]:
    return [str(keys[name][1]) for name in names]


def test_a_signed_bundle_verifies_against_any_of_the_trusted_keys(bundle, keys):
    signature = signing.sign_bundle(str(bundle), str(keys["release"][0]))
    assert signature.key == signing.key_hint(keys["release"][1].read_bytes())
    assert set(signature.digests) == {"model.onnx", "model.json"}
    # Rotation: the old and the new key trusted at once, in either order.
    for trusted in (("release", "next"), ("next", "release")):
        verdict = signing.verify_bundle(str(bundle), public_keys(keys, *trusted))
        assert verdict == {
            "signed": True,
            "checked": True,
            "policy": "required",
            "signer": f"key {signature.key}",
            "key": signature.key,
            "trusted_key": str(keys["release"][1]),
            "digests": signature.digests,
        }


def test_a_password_protected_key_signs(bundle, tmp_path):
    private, public, _key = write_key(tmp_path, "locked", password=b"s3cret-pass")
    with pytest.raises(EdgeMLError) as refused:
        signing.sign_bundle(str(bundle), str(private), password="wrong")
    assert "s3cret-pass" not in str(refused.value) and "wrong" not in str(refused.value).split(":")[0]
    assert not (bundle / signing.SIGNATURE_FILE).exists()
    signing.sign_bundle(str(bundle), str(private), password="s3cret-pass")
    assert signing.verify_bundle(str(bundle), [str(public)])["signed"]


def test_a_model_replaced_with_its_checksum_rewritten_is_refused(bundle, keys):
    signing.sign_bundle(str(bundle), str(keys["release"][0]))
    # What an attacker with write access does: another model, and model.json made to match it.
    other = models.digits_model(permuted=True)
    (bundle / "model.onnx").write_bytes(other)
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["model"]["sha256"] = hashlib.sha256(other).hexdigest()
    manifest["model"]["size"] = len(other)
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeMLError) as refused:
        signing.verify_bundle(str(bundle), public_keys(keys, "release"))
    assert "changed after it was signed" in refused.value.msg
    assert refused.value.details["changes"] == ["model.json changed", "model.onnx changed"]


def test_a_smoke_vector_edited_after_signing_is_refused(bundle, keys):
    signing.sign_bundle(str(bundle), str(keys["release"][0]))
    manifest = json.loads((bundle / "model.json").read_text())
    vector = manifest["smoke_tests"]["vectors"][0]
    vector["inputs"][0]["data"][0] = 16.0
    (bundle / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(EdgeMLError) as refused:
        signing.verify_bundle(str(bundle), public_keys(keys, "release"))
    assert refused.value.details["changes"] == ["model.json changed"]
    assert "rebuild the bundle" in str(refused.value)


def test_a_file_added_after_signing_is_refused(bundle, keys):
    signing.sign_bundle(str(bundle), str(keys["release"][0]))
    (bundle / "profile.json").write_text("{}")
    with pytest.raises(EdgeMLError) as refused:
        signing.verify_bundle(str(bundle), public_keys(keys, "release"))
    assert refused.value.details["changes"] == ["profile.json added"]


def test_a_bundle_signed_with_an_untrusted_key_is_refused(bundle, keys):
    signature = signing.sign_bundle(str(bundle), str(keys["stranger"][0]))
    with pytest.raises(EdgeMLError) as refused:
        signing.verify_bundle(str(bundle), public_keys(keys, "release", "next"))
    message = str(refused.value)
    assert f"signed by key {signature.key}, which is not a trusted key" in message
    assert signing.key_hint(keys["release"][1].read_bytes()) in message


def test_a_forged_signature_naming_a_trusted_key_is_refused(bundle, keys):
    """The hint is not the proof: a signature made by another key but naming the trusted
    one fails the cryptographic check."""
    signing.sign_bundle(str(bundle), str(keys["stranger"][0]))
    path = bundle / signing.SIGNATURE_FILE
    document = json.loads(path.read_text())
    document["verificationMaterial"]["publicKey"]["hint"] = signing.key_hint(keys["release"][1].read_bytes())
    path.write_text(json.dumps(document))
    with pytest.raises(EdgeMLError) as refused:
        signing.verify_bundle(str(bundle), public_keys(keys, "release"))
    assert "does not verify" in refused.value.msg


def test_an_unsigned_bundle_is_refused_under_the_required_policy_only(bundle, keys):
    with pytest.raises(EdgeMLError) as refused:
        signing.verify_bundle(str(bundle), public_keys(keys, "release"))
    assert "is not signed" in refused.value.msg and "requires signatures" in refused.value.msg
    assert signing.verify_bundle(str(bundle), public_keys(keys, "release"), policy="optional") == {
        "signed": False,
        "policy": "optional",
    }
    with pytest.raises(EdgeMLError, match="Unknown signature policy"):
        signing.verify_bundle(str(bundle), policy="sometimes")


def test_a_signed_bundle_is_still_checked_under_the_optional_policy(bundle, keys):
    signing.sign_bundle(str(bundle), str(keys["stranger"][0]))
    with pytest.raises(EdgeMLError, match="not a trusted key"):
        signing.verify_bundle(str(bundle), public_keys(keys, "release"), policy="optional")
    # With nothing trusted at all, optional checks no signature (stripping one would pass anyway).
    assert signing.verify_bundle(str(bundle), policy="optional")["checked"] is False
    with pytest.raises(EdgeMLError, match="not a trusted key"):
        signing.verify_bundle(str(bundle), policy="required")


def test_a_malformed_signature_says_so(bundle, keys):
    (bundle / signing.SIGNATURE_FILE).write_text("not json")
    with pytest.raises(EdgeMLError, match="is not a model signature this collection can read"):
        signing.verify_bundle(str(bundle), public_keys(keys, "release"))


def test_certificate_mode_verifies_against_the_trusted_ca_only(bundle, tmp_path):
    certificates = models.write_certificates(tmp_path)
    signature = signing.sign_bundle(
        str(bundle),
        str(certificates["signer_key"]),
        certificate=str(certificates["signer"]),
        certificate_chain=[str(certificates["fleet-ca"])],
    )
    assert signature.certificate and signature.signer == "a certificate"
    verdict = signing.verify_bundle(str(bundle), trusted_certificates=[str(tmp_path / "fleet-ca.crt")])
    assert verdict["certificate"] and verdict["checked"] and set(verdict["digests"]) == {"model.onnx", "model.json"}
    with pytest.raises(EdgeMLError, match="does not verify"):
        signing.verify_bundle(str(bundle), trusted_certificates=[str(tmp_path / "other-ca.crt")])
    with pytest.raises(EdgeMLError, match="no CA certificate is trusted"):
        signing.verify_bundle(str(bundle), trusted_keys=[str(tmp_path / "signer.pub")])


# --- model_bundle with signing_key --------------------------------------------------------


def test_model_bundle_signs_a_new_bundle_once(bundle_args, keys, capsys):
    args = dict(bundle_args, signing_key=str(keys["release"][0]))
    predicted = run_bundle(args, capsys, check=True)
    assert predicted["changed"] and predicted["actions"][-1].startswith("sign ")
    assert not Path(bundle_args["dest"]).exists()
    first = run_bundle(args, capsys)
    assert first["changed"], first
    hint = signing.key_hint(keys["release"][1].read_bytes())
    assert first["bundle_signature"]["signed_by"] == f"key {hint}"
    bundle_dir = first["bundle_path"]
    assert signing.verify_bundle(bundle_dir, public_keys(keys, "release"))["key"] == hint
    again = run_bundle(args, capsys)
    assert not again["changed"] and again["actions"] == [], again
    assert run_bundle(args, capsys, check=True)["changed"] is False


def test_model_bundle_signs_an_existing_bundle_and_again_on_key_rotation(bundle_args, keys, capsys):
    unsigned = run_bundle(bundle_args, capsys)
    assert "bundle_signature" not in unsigned
    bundle_dir = unsigned["bundle_path"]
    signed = run_bundle(dict(bundle_args, signing_key=str(keys["release"][0])), capsys)
    assert signed["changed"] and signed["actions"] == [
        f"sign {bundle_dir} with key {signing.key_hint(keys['release'][1].read_bytes())} into {bundle_dir}/model.sig"
    ]
    rotated = run_bundle(dict(bundle_args, signing_key=str(keys["next"][0])), capsys)
    assert rotated["changed"] and "(was signed by key " in rotated["actions"][0]
    assert signing.verify_bundle(bundle_dir, public_keys(keys, "next"))["trusted_key"] == str(keys["next"][1])
    with pytest.raises(EdgeMLError, match="not a trusted key"):
        signing.verify_bundle(bundle_dir, public_keys(keys, "release"))


def test_model_bundle_refuses_to_sign_a_bundle_changed_after_signing(bundle_args, keys, capsys):
    args = dict(bundle_args, signing_key=str(keys["release"][0]))
    bundle_dir = Path(run_bundle(args, capsys)["bundle_path"])
    (bundle_dir / "notes.txt").write_text("slipped in")
    result = run_bundle(dict(args, signing_key=str(keys["next"][0])), capsys)
    assert result["failed"] and "changed after it was signed" in result["msg"], result
    assert "notes.txt added" in result["msg"]
    # Nothing re-signed: the old signature (and the evidence) stays.
    assert signing.read_signature(str(bundle_dir)).key == signing.key_hint(keys["release"][1].read_bytes())


def test_model_bundle_never_shows_the_key_password(bundle_args, tmp_path, capsys):
    private, public, _key = write_key(tmp_path, "locked", password=b"hunter2-very-secret")
    wrong = run_bundle(dict(bundle_args, signing_key=str(private), signing_key_password="not-it-either"), capsys)
    assert wrong["failed"] and "Cannot read the signing key" in wrong["msg"]
    assert not Path(bundle_args["dest"]).exists()  # refused before anything was written
    right = run_bundle(dict(bundle_args, signing_key=str(private), signing_key_password="hunter2-very-secret"), capsys)
    assert right["changed"] and "hunter2-very-secret" not in json.dumps(right)
    assert signing.verify_bundle(right["bundle_path"], [str(public)])["signed"]


def test_model_bundle_signing_options_need_a_key(bundle_args, capsys):
    result = run_bundle(dict(bundle_args, signing_key_password="x"), capsys)
    assert result["failed"] and "signing_key" in result["msg"]
