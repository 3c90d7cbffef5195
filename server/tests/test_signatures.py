"""Bundle signatures (model.sig) checked at load, with the real model-signing library: bundles
signed, then changed the ways someone with write access to the bundle directory would."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeml_server import signing
from edgeml_server.bundle import BundleError, load_bundle
from edgeml_server.signing import SignaturePolicy

import bundlewriter as bw
from conftest import SERVER_DIR, Hammer, infer_body

REPO = "/v2/repository/models/digits"
INFER = "/v2/models/digits/infer"


@dataclass
class Signers:
    keys: dict[str, tuple[Path, Path]]  # name -> (private, public) key files, outside the trust directory
    trust: Path  # the trust directory given to the server

    def private(self, name: str) -> Path:
        return self.keys[name][0]

    def hint(self, name: str) -> str:
        return bw.key_hint(self.keys[name][1])


@pytest.fixture()
def signers(tmp_path: Path) -> Signers:
    """Keys release, next and stranger; trusted: release, and next as a .pem (rotation under way)."""
    keys = {name: bw.make_key(tmp_path / "keys", name) for name in ("release", "next", "stranger")}
    trust = tmp_path / "trusted-keys"
    trust.mkdir()
    shutil.copy(keys["release"][1], trust / "release.pub")
    shutil.copy(keys["next"][1], trust / "next.pem")
    return Signers(keys, trust)


def _replace_model(bdir: Path, model_bytes: bytes) -> None:
    """What an attacker with write access does: another model, with model.json's checksum and
    smoke vectors rewritten to match, so that without a signature it would load and pass."""
    bw.write_bundle(bdir.parent.parent, bdir.parent.name, bdir.name, model_bytes)
    assert hashlib.sha256(model_bytes).hexdigest() in (bdir / "model.json").read_text()


def _refusal(root: Path, trust: Path, policy: str = "required", version: str = "1") -> str:
    with pytest.raises(BundleError) as refused:
        load_bundle(root, "digits", version, signatures=SignaturePolicy(policy, trust))
    return str(refused.value)


def test_a_signed_bundle_loads_and_serves_under_required(
    make_server, tmp_path: Path, models: dict[str, bytes], rows: np.ndarray, signers: Signers
) -> None:
    root = tmp_path / "bundles"
    bw.sign_bundle(bw.write_bundle(root, "digits", "1", models["a"], pointer=True), signers.private("release"))
    s = make_server(root, env={"EDGEML_SIGNATURE_POLICY": "required", "EDGEML_TRUSTED_KEYS": str(signers.trust)})
    assert s.wait_ready(), s.logs()
    r = s.post(INFER, json=infer_body(rows[:2]))
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    records = s.log_records()
    starting = next(rec for rec in records if rec.get("msg") == "starting")
    assert (starting["signature_policy"], starting["trusted_keys"]) == ("required", str(signers.trust))
    ready = next(rec for rec in records if rec.get("msg") == "model ready")
    assert ready["signed_by"] == f"key {signers.hint('release')}"


def test_an_unsigned_bundle_is_refused_under_required_and_loads_under_optional(
    make_server, bundle_root: Path, signers: Signers
) -> None:
    message = _refusal(bundle_root, signers.trust)
    assert f"{bundle_root / 'digits' / '1'} is not signed (no model.sig)" in message
    assert "the signature policy is required" in message
    loaded = load_bundle(bundle_root, "digits", "1", signatures=SignaturePolicy("optional", signers.trust))
    assert loaded.signed_by is None
    # Through the server: the flag refuses it, and says why where operators look.
    s = make_server(bundle_root, extra=["--signature-policy", "required", "--trusted-keys", str(signers.trust)])
    assert s.wait(lambda: "is not signed" in (s.get("/v2/health/ready").json().get("error") or ""))
    assert s.get("/v2/health/ready").status_code == 503


def test_unsigned_bundles_under_optional_never_import_model_signing(bundle_root: Path, tmp_path: Path) -> None:
    """The library (and its dependencies) cost start-up time and memory a server of unsigned
    bundles does not need."""
    script = (
        "import sys; from pathlib import Path; from edgeml_server.bundle import load_bundle;"
        "from edgeml_server.signing import SignaturePolicy;"
        f"load_bundle(Path({str(bundle_root)!r}), 'digits', '1', signatures=SignaturePolicy('optional'));"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('model_signing', 'sigstore', 'OpenSSL')))"
    )
    env = {**os.environ, "PYTHONPATH": str(SERVER_DIR)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_model_replaced_with_its_checksum_rewritten_is_refused(
    bundle_root: Path, models: dict[str, bytes], signers: Signers
) -> None:
    bdir = bundle_root / "digits" / "1"
    bw.sign_bundle(bdir, signers.private("release"))
    _replace_model(bdir, models["b"])
    message = _refusal(bundle_root, signers.trust, policy="optional")
    assert (
        f"{bdir} changed after it was signed by key {signers.hint('release')}: model.json changed, model.onnx changed"
        in message
    )


def test_smoke_vectors_edited_after_signing_are_refused(
    bundle_root: Path, models: dict[str, bytes], rows: np.ndarray, signers: Signers
) -> None:
    bdir = bundle_root / "digits" / "1"
    bw.sign_bundle(bdir, signers.private("release"))
    # Vectors the model passes, but not the ones signed: the gates would hold it to other answers.
    bw.write_bundle(bundle_root, "digits", "1", models["a"], rows=rows[10:13])
    assert "changed after it was signed" in _refusal(bundle_root, signers.trust)
    assert "model.json changed" in _refusal(bundle_root, signers.trust)
    (bdir / "notes.txt").write_text("added later\n")
    assert "model.json changed, notes.txt added" in _refusal(bundle_root, signers.trust)


def test_a_bundle_signed_with_an_untrusted_key_is_refused(bundle_root: Path, signers: Signers) -> None:
    bw.sign_bundle(bundle_root / "digits" / "1", signers.private("stranger"))
    for policy in ("required", "optional"):  # optional loads unsigned bundles, never badly signed ones
        message = _refusal(bundle_root, signers.trust, policy)
        stranger = signers.hint("stranger")
        assert f"is signed by key {stranger}, which is not among the trusted keys in {signers.trust}" in message
        trusted = ", ".join(sorted([signers.hint("release"), signers.hint("next")]))
        assert f"(trusted: {trusted})" in message
    message = _refusal(bundle_root, signers.trust.parent / "absent", "required")
    assert f"(trusted: none: there is no directory {signers.trust.parent / 'absent'})" in message
    # Optional on a host that trusts nothing checks no signature (stripping one would pass too).
    absent = SignaturePolicy("optional", signers.trust.parent / "absent")
    assert load_bundle(bundle_root, "digits", "1", signatures=absent).version == "1"


def test_a_forged_signature_naming_a_trusted_key_is_refused(bundle_root: Path, signers: Signers) -> None:
    """The hint is not the proof: signed by another key but naming the trusted one fails the
    cryptographic check."""
    sig = bw.sign_bundle(bundle_root / "digits" / "1", signers.private("stranger"))
    document = json.loads(sig.read_text())
    document["verificationMaterial"]["publicKey"]["hint"] = signers.hint("release")
    sig.write_text(json.dumps(document))
    message = _refusal(bundle_root, signers.trust)
    assert f"signature of {bundle_root / 'digits' / '1'} by key {signers.hint('release')} does not verify" in message
    assert str(signers.trust / "release.pub") in message
    sig.write_text("not json")
    assert "model.sig is not a model signature this server can read" in _refusal(bundle_root, signers.trust)


def test_two_trusted_keys_rotation(bundle_root: Path, models: dict[str, bytes], signers: Signers) -> None:
    bw.sign_bundle(bundle_root / "digits" / "1", signers.private("release"))
    bw.sign_bundle(bundle_root / "digits" / "2", signers.private("next"))  # its public key is next.pem
    # A private key in a .pem is not a trusted key: ignored.
    shutil.copy(signers.private("stranger"), signers.trust / "stranger-private.pem")
    policy = SignaturePolicy("required", signers.trust)
    assert load_bundle(bundle_root, "digits", "1", signatures=policy).signed_by == f"key {signers.hint('release')}"
    assert load_bundle(bundle_root, "digits", "2", signatures=policy).signed_by == f"key {signers.hint('next')}"
    (signers.trust / "next.pem").unlink()  # the rotation is over, the old key goes
    assert "is not among the trusted keys" in _refusal(bundle_root, signers.trust, version="2")


def test_model_json_changed_after_verification_is_refused(
    bundle_root: Path, models: dict[str, bytes], rows: np.ndarray, signers: Signers, monkeypatch
) -> None:
    """The time-of-check/time-of-use gap: the bytes used must be the bytes signed, even when
    the file changes between the signature check and the read."""
    bdir = bundle_root / "digits" / "1"
    bw.sign_bundle(bdir, signers.private("release"))
    verify = signing.verify_signature

    def verify_then_swap(*args, **kwargs):
        verified = verify(*args, **kwargs)
        bw.write_bundle(bundle_root, "digits", "1", models["a"], rows=rows[20:23])  # loads fine unsigned
        return verified

    monkeypatch.setattr(signing, "verify_signature", verify_then_swap)
    message = _refusal(bundle_root, signers.trust)
    release = signers.hint("release")
    assert f"{bdir / 'model.json'} changed after its signature (by key {release}) was verified" in message


def _certificate(subject: str, key, issuer: x509.Certificate | None, issuer_key) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    is_ca = issuer is None
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name if is_ca else issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(not is_ca, False, False, False, False, is_ca, is_ca, False, False), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def test_certificate_mode_verifies_against_the_trusted_ca_certificates(
    bundle_root: Path, tmp_path: Path, signers: Signers
) -> None:
    from model_signing import hashing
    from model_signing import signing as model_signing

    pem = serialization.Encoding.PEM
    certs = tmp_path / "certs"
    certs.mkdir()
    authorities = {}
    for name in ("fleet-ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        authorities[name] = (key, _certificate(name, key, None, key))
        (certs / f"{name}.crt").write_bytes(authorities[name][1].public_bytes(pem))
    signer_key = serialization.load_pem_private_key(signers.private("stranger").read_bytes(), None)
    ca_key, ca_cert = authorities["fleet-ca"]
    (certs / "signer.crt").write_bytes(_certificate("release-signer", signer_key, ca_cert, ca_key).public_bytes(pem))
    bdir = bundle_root / "digits" / "1"
    model_signing.Config().set_hashing_config(
        hashing.Config().set_ignored_paths(paths=["model.sig"], ignore_git_paths=False)
    ).use_certificate_signer(
        private_key=signers.private("stranger"),
        signing_certificate=certs / "signer.crt",
        certificate_chain=[certs / "fleet-ca.crt"],
    ).sign(bdir, bdir / "model.sig")
    assert "no CA certificate (*.crt) is trusted" in _refusal(bundle_root, signers.trust)  # keys only: not enough
    shutil.copy(certs / "other-ca.crt", signers.trust)
    assert "by the certificate 'CN=release-signer' does not verify" in _refusal(bundle_root, signers.trust)
    shutil.copy(certs / "fleet-ca.crt", signers.trust)
    loaded = load_bundle(bundle_root, "digits", "1", signatures=SignaturePolicy("required", signers.trust))
    assert loaded.signed_by == "the certificate 'CN=release-signer'"


def test_a_tampered_candidate_is_refused_at_staging_while_the_serving_version_answers(
    make_server, bundle_root: Path, models: dict[str, bytes], rows: np.ndarray, signers: Signers
) -> None:
    for version in ("1", "2"):
        bw.sign_bundle(bundle_root / "digits" / version, signers.private("release"))
    _replace_model(bundle_root / "digits" / "2", models["a"])  # v2 now carries v1's model: tampered
    bw.sign_bundle(bw.write_bundle(bundle_root, "digits", "3", models["b"]), signers.private("next"))
    s = make_server(bundle_root, extra=["--signature-policy", "required", "--trusted-keys", str(signers.trust)])
    assert s.wait_ready(), s.logs()
    row = rows[5:6]
    body = json.dumps(infer_body(row)).encode()
    with Hammer(s.url + INFER, body, threads=2) as hammer:
        assert hammer.wait_for(50)
        r = s.admin("POST", f"{REPO}/stage", json={"parameters": {"version": "2"}})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert f"changed after it was signed by key {signers.hint('release')}" in error
        assert "model.json changed, model.onnx changed" in error
        assert r.json()["serving_version"] == "1"
        assert hammer.wait_for(50)
    assert hammer.failures == [], hammer.failures[:5]
    assert set(hammer.versions) == {"1"}
    status = s.admin("GET", f"{REPO}/status").json()
    assert (status["serving_version"], status["candidate_version"]) == ("1", None)
    assert "model.onnx changed" in status["last_stage"]["reason"]
    # A good version signed by the other trusted key stages and answers on the admin listener.
    r = s.admin("POST", f"{REPO}/stage", json={"parameters": {"version": "3"}})
    assert r.status_code == 200, r.text
    staged = next(rec for rec in s.log_records() if rec.get("msg", "").startswith("staged;"))
    assert staged["signed_by"] == f"key {signers.hint('next')}"
    r = s.admin("POST", "/v2/models/digits/versions/3/infer", json=infer_body(row))
    assert r.status_code == 200 and r.json()["model_version"] == "3"
    assert s.post(INFER, json=infer_body(row)).json()["model_version"] == "1"
