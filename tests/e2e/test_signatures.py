"""Bundle signatures on the lab fleet (issue 14): the lab requires signatures and its hosts
trust the example signing key (playbooks/build_models.yml signs the example bundles,
playbooks/lab_up.yml installs the public key with edge_host's signing_trust).

A bundle changed after it was signed, signed by a key nobody trusts, or not signed at all
is refused on the controller before anything is sent: every host keeps serving, and the
report says what was wrong. A bundle changed on a host after delivery is refused by the
model server at load: a rollback to it fails and the host keeps its version.
Known-answer traffic to every host meanwhile gets only right answers.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fleetops import (
    ALL_AT_ONCE,
    GATES,
    assert_every_answer_right,
    deploy,
    host_state,
    latest_report,
    outcomes,
    path_exists_on,
    serving_versions,
)
from labtools import LAB, LAB_INVENTORY, MODEL, podman, run_playbook
from model_signing import hashing, signing

HOST = "edge-1"
TAMPERED_VERSION = "3.0.0"  # a good version, copied and changed the ways an attacker would


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "model.json").read_text())


def _replace_the_model(bundle: Path, model_bundles: Path) -> None:
    """Another model (the wrong-answer 2.0.0's), with model.json made to match it."""
    other = (model_bundles / MODEL / "2.0.0" / "model.onnx").read_bytes()
    (bundle / "model.onnx").write_bytes(other)
    manifest = _manifest(bundle)
    manifest["model"].update(sha256=hashlib.sha256(other).hexdigest(), size=len(other))
    (bundle / "model.json").write_text(json.dumps(manifest))


def _edit_a_smoke_vector(bundle: Path, _model_bundles: Path) -> None:
    manifest = _manifest(bundle)
    manifest["smoke_tests"]["vectors"][0]["inputs"][0]["data"][0] = 16.0
    (bundle / "model.json").write_text(json.dumps(manifest))


def _sign_with_an_untrusted_key(bundle: Path, _model_bundles: Path) -> None:
    key = bundle.parent / "stranger.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    hashing_config = hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=False)
    config = signing.Config().set_hashing_config(hashing_config).use_elliptic_key_signer(private_key=key)
    config.sign(bundle, bundle / "model.sig")
    key.unlink()


def _remove_the_signature(bundle: Path, _model_bundles: Path) -> None:
    (bundle / "model.sig").unlink()


TAMPERINGS = {
    "model replaced, checksum rewritten": (_replace_the_model, "model.json changed, model.onnx changed"),
    "smoke vector edited": (_edit_a_smoke_vector, "model.json changed"),
    "signed by an untrusted key": (_sign_with_an_untrusted_key, "which is not a trusted key"),
    "unsigned": (_remove_the_signature, "is not signed"),
}


@pytest.mark.parametrize("tampering", list(TAMPERINGS))
def test_a_bundle_not_signed_as_trusted_is_refused_before_anything_is_sent(  # noqa: PLR0917 - fixtures
    fleet, fleet_on, model_bundles, load, tmp_path, tampering
):
    fleet_on("1.0.0")
    change, what_is_wrong = TAMPERINGS[tampering]
    root = tmp_path / "bundles"
    bundle = root / MODEL / TAMPERED_VERSION
    shutil.copytree(model_bundles / MODEL / TAMPERED_VERSION, bundle)
    change(bundle, model_bundles)
    with load() as traffic:  # nothing of the tampered bundle may ever answer
        report = deploy(TAMPERED_VERSION, model_deployment_bundle_src=str(root))
    assert report["returncode"] != 0
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    rows = {row["host"]: row for row in latest_report()["hosts"]}
    assert rows[HOST]["outcome"] == "refused", rows[HOST]
    assert what_is_wrong in rows[HOST]["reason"], rows[HOST]
    # Nothing was sent: no host changed, and the hosts' history holds no attempt.
    assert {host: report["stats"][host]["changed"] for host in fleet} == dict.fromkeys(fleet, 0), report["stats"]
    assert host_state(HOST)["history"][0]["version"] == "1.0.0"
    assert_every_answer_right(traffic)


def _write_on_host(container: str, path: str, content: str) -> None:
    command = ["podman", "exec", "-i", container, "sh", "-c", f"cat > {path}"]
    subprocess.run(command, input=content, text=True, check=True)


def test_a_bundle_changed_on_the_host_after_delivery_is_refused_at_load(fleet, fleet_on, load):
    """The controller's check cannot see a bundle changed on the host after delivery: the
    model server checks the signature again before it loads a version."""
    fleet_on("1.0.0")
    fleet_on("3.0.0")
    bundle = f"/var/lib/edgeml/bundles/{MODEL}/1.0.0/model.json"
    container = LAB.container(HOST)
    original = podman("exec", container, "cat", bundle)
    manifest = json.loads(original)
    manifest["smoke_tests"]["vectors"][0]["inputs"][0]["data"][0] = 16.0
    _write_on_host(container, bundle, json.dumps(manifest))
    settings = {
        "model_deployment_registry_tls_verify": False, "model_deployment_gates": GATES,
        "rollback_to": "1.0.0", "rollback_hosts": HOST,
    }
    try:
        with load() as traffic:  # the changed 1.0.0 must never answer; 3.0.0 keeps serving
            report = run_playbook(
                "rollback.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps(settings), check=False
            )
    finally:
        _write_on_host(container, bundle, original)
    assert report["returncode"] != 0
    assert outcomes(latest_report()) == {HOST: "rollback failed"}
    assert serving_versions(fleet) == dict.fromkeys(fleet, "3.0.0")
    failure = host_state(HOST)["last_failure"]
    assert failure["version"] == "1.0.0", failure
    assert "changed after it was signed" in failure["reason"] and "model.json" in failure["reason"], failure
    assert_every_answer_right(traffic)


def test_a_host_copy_holding_more_than_the_bundle_is_made_exactly_the_bundle(fleet, fleet_on, load, model_bundles):
    """A host may hold another build of a version: a signature of a signed build where an
    unsigned rebuild of the same version comes now (CI met it in the AAP layer), a file left
    by hand. copy never deletes: the role removes what is beyond the verified bundle, or the
    model server would find it beside the signed files and refuse the version ("added").
    Runs after the scenario above, which leaves the fleet on 3.0.0 and edge-1 holding 1.0.0."""
    fleet_on("3.0.0")
    bundle = f"/var/lib/edgeml/bundles/{MODEL}/1.0.0"
    container = LAB.container(HOST)
    podman("exec", container, "mkdir", "-p", f"{bundle}/notes")
    _write_on_host(container, f"{bundle}/notes/README", "left by hand")
    _write_on_host(container, f"{bundle}/model.sig.old", "a signature of another build")
    with load(rolling_out="1.0.0") as traffic:
        report = deploy("1.0.0", **ALL_AT_ONCE)
    assert report["returncode"] == 0, outcomes(latest_report())
    assert outcomes(latest_report()) == dict.fromkeys(fleet, "deployed")
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    held = podman("exec", container, "find", bundle, "-mindepth", "1", "-printf", "%P\\n").split()
    source = model_bundles / MODEL / "1.0.0"
    assert sorted(held) == sorted(str(path.relative_to(source)) for path in source.rglob("*")), held
    assert_every_answer_right(traffic)


def test_a_host_that_trusts_no_signer_gets_nothing_and_keeps_serving(fleet, fleet_on, server_image, load):
    """Under the required policy a host whose trust directory holds no key would refuse every
    version at load: the rollout stops at that host before anything is delivered to it
    (model_stage's first check; here the server image comes as an OCI archive, which is not
    copied either), says why, and the host keeps serving its version."""
    fleet_on("1.0.0")
    container = LAB.container(HOST)
    trust_dir, aside, images = "/etc/edgeml/trusted-keys", "/root/trusted-keys.aside", "/var/lib/edgeml/images"
    podman("exec", container, "sh", "-c", f"mkdir -p {aside} && mv {trust_dir}/* {aside}/ && rm -rf {images}")
    try:
        with load() as traffic:
            report = deploy(
                TAMPERED_VERSION,
                model_deployment_image_delivery="archive",
                model_deployment_image_archive=str(server_image["archive"]),
            )
    finally:
        podman("exec", container, "sh", "-c", f"mv {aside}/* {trust_dir}/ && rmdir {aside}")
    assert report["returncode"] != 0
    rows = {row["host"]: row for row in latest_report()["hosts"]}
    assert rows[HOST]["outcome"] == "failed", rows[HOST]
    assert "trusts no bundle signer" in rows[HOST]["reason"], rows[HOST]
    assert not path_exists_on(HOST, images), "the server image's archive was delivered to a host that trusts no signer"
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    assert host_state(HOST)["history"][0]["version"] == "1.0.0"
    assert_every_answer_right(traffic)
