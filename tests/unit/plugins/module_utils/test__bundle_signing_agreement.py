# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The two signature checks agree: the controller's before delivery
(plugins/module_utils/_bundle_signing.py, through model_bundle_verify) and the model
server's before every load (server/edgeml_server/signing.py, in the server image, where the
collection cannot be imported, so the rules are written twice). A bundle one of them
accepts and the other refuses is either sent to a host that will not load it, or refused
on the controller for no reason the host would see.

Every case is a real bundle written by model_bundle and signed with the real model-signing
library, then changed the way an attacker or an accident would. Both sides get the same
trust: the collection as lists of files, the server as its trust directory (NAME.pub and
NAME.crt, as edge_host installs them). They must both accept (with the same signed digests)
or both refuse (naming the same changed files)."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_signing as signing
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

SERVER_DIR = Path(__file__).resolve().parents[4] / "server"
sys.path.insert(0, str(SERVER_DIR))

from edgeml_server import signing as server_signing  # noqa: E402 - needs the sys.path entry above
from edgeml_server.bundle import BundleError  # noqa: E402


@dataclass
class Trust:
    """What the host trusts: public keys and CA certificates (paths), and the policy."""

    policy: str = "required"
    keys: list[Path] = field(default_factory=list)
    certificates: list[Path] = field(default_factory=list)

    def directory(self, root: Path) -> Path:
        """The server's trust directory for it, as edge_host installs it."""
        trust = root / "trusted-keys"
        trust.mkdir()
        for key in self.keys:
            shutil.copy(key, trust / f"{key.stem}.pub")
        for certificate in self.certificates:
            shutil.copy(certificate, trust / f"{certificate.stem}.crt")
        return trust


@dataclass
class Verdict:
    accepted: bool
    checked: bool = False
    digests: dict[str, str] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    message: str = ""


def controller_verdict(bundle: Path, trust: Trust) -> Verdict:
    try:
        result = signing.verify_bundle(
            str(bundle), [str(key) for key in trust.keys], [str(ca) for ca in trust.certificates], trust.policy
        )
    except EdgeMLError as error:
        return Verdict(False, changes=error.details.get("changes", []), message=error.msg)
    return Verdict(True, checked=bool(result.get("checked")), digests=result.get("digests", {}))


def server_verdict(bundle: Path, trust: Trust, root: Path) -> Verdict:
    policy = server_signing.SignaturePolicy(trust.policy, trust.directory(root))
    try:
        verified = server_signing.verify_signature(bundle, policy)
    except BundleError as error:
        return Verdict(False, message=str(error))
    if verified is None:
        return Verdict(True)
    return Verdict(True, checked=True, digests=verified.digests)


@pytest.fixture
def bundle(digits_bundle) -> Path:
    return digits_bundle


def _edit_manifest(bundle: Path, edit) -> None:
    manifest = json.loads((bundle / "model.json").read_text())
    edit(manifest)
    (bundle / "model.json").write_text(json.dumps(manifest))


def _replace_model(bundle: Path) -> None:
    import hashlib  # noqa: PLC0415

    other = models.digits_model(permuted=True)
    (bundle / "model.onnx").write_bytes(other)
    _edit_manifest(bundle, lambda manifest: manifest["model"].update(sha256=hashlib.sha256(other).hexdigest()))


def _edit_smoke_vector(bundle: Path) -> None:
    def edit(manifest):
        vector = manifest["smoke_tests"]["vectors"][0]
        vector["expected"][0]["data"] = [(vector["expected"][0]["data"][0] + 1) % 10]

    _edit_manifest(bundle, edit)


def _signature_of_another_bundle(bundle: Path, keys, certificates) -> None:
    """A signature by a trusted key, copied from another bundle of the same model."""
    other = bundle.parent / "other"
    shutil.copytree(bundle, other)
    _edit_smoke_vector(other)
    signing.sign_bundle(str(other), str(keys["release"][0]))
    shutil.copy(other / signing.SIGNATURE_FILE, bundle / signing.SIGNATURE_FILE)


def signed_by(name: str, then=lambda bundle: None):
    """Sign the bundle with the key NAME, then change it with THEN."""

    def change(bundle: Path, keys, certificates) -> None:
        signing.sign_bundle(str(bundle), str(keys[name][0]))
        then(bundle)

    return change


def signed_with_a_certificate(bundle: Path, keys, certificates) -> None:
    signing.sign_bundle(
        str(bundle),
        str(certificates["signer_key"]),
        certificate=str(certificates["signer"]),
        certificate_chain=[str(certificates["fleet-ca"])],
    )


def unsigned(bundle: Path, keys, certificates) -> None:
    pass


def signature_not_json(bundle: Path, keys, certificates) -> None:
    (bundle / signing.SIGNATURE_FILE).write_text("not json")


# case: (what is done to the bundle, what is trusted, whether the bundle must load).
# `keys` fixture: release and next (trusted while keys rotate), stranger (never trusted).
CASES = {
    "signed by a trusted key": (signed_by("release"), "release", True),
    "signed by the next key while two are trusted": (signed_by("next"), "release next", True),
    "signed by an untrusted key": (signed_by("stranger"), "release", False),
    "unsigned, required": (unsigned, "release", False),
    "unsigned, optional": (unsigned, "optional release", True),
    "signed, optional, nothing trusted": (signed_by("stranger"), "optional", True),
    "signed by an untrusted key, optional, a key trusted": (signed_by("stranger"), "optional release", False),
    "model replaced, checksum rewritten": (signed_by("release", _replace_model), "release", False),
    "smoke vector edited": (signed_by("release", _edit_smoke_vector), "release", False),
    "file added after signing": (
        signed_by("release", lambda bundle: (bundle / "labels.txt").write_text("x")),
        "release",
        False,
    ),
    "file removed after signing": (
        signed_by("release", lambda bundle: (bundle / "model.json").unlink()),
        "release",
        False,
    ),
    "signature of another bundle": (_signature_of_another_bundle, "release", False),
    "signature not JSON": (signature_not_json, "release", False),
    "certificate from the trusted CA": (signed_with_a_certificate, "fleet-ca", True),
    "certificate from another CA": (signed_with_a_certificate, "other-ca", False),
    "certificate, only keys trusted": (signed_with_a_certificate, "release signer", False),
}

# What the controller says changed after signing (the server's message must name the same).
CHANGES = {
    "model replaced, checksum rewritten": ["model.json changed", "model.onnx changed"],
    "smoke vector edited": ["model.json changed"],
    "file added after signing": ["labels.txt added"],
    "file removed after signing": ["model.json missing"],
    "signature of another bundle": ["model.json changed"],
}


def _trust(spec: str, keys, certificates) -> Trust:
    words = spec.split()
    trust = Trust(policy="optional" if "optional" in words else "required")
    for word in words:
        if word in keys:
            trust.keys.append(keys[word][1])
        elif word == "signer":
            trust.keys.append(certificates["signer_public_key"])
        elif word in certificates:
            trust.certificates.append(certificates[word])
    return trust


@pytest.mark.parametrize("case", list(CASES))
def test_the_controller_and_the_server_judge_a_bundle_alike(case, bundle, keys, tmp_path):
    change, trusted, loads = CASES[case]
    (tmp_path / "certificates").mkdir()
    certificates = models.write_certificates(tmp_path / "certificates")
    change(bundle, keys, certificates)
    trust = _trust(trusted, keys, certificates)
    controller = controller_verdict(bundle, trust)
    server = server_verdict(bundle, trust, tmp_path)
    assert controller.accepted is server.accepted is loads, (controller, server)
    assert controller.checked == server.checked, (controller, server)
    assert controller.digests == server.digests
    if controller.checked:
        assert set(controller.digests) >= {"model.json", "model.onnx"}
    assert controller.changes == CHANGES.get(case, [])
    for what in controller.changes:  # the server names the same changed, added or missing files
        assert what in server.message, (what, server.message)
