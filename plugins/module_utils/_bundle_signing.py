# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Bundle signatures with OpenSSF model signing (the ``model-signing`` library), private.

A bundle's signature is ``model.sig`` in the bundle directory: a Sigstore bundle whose
DSSE payload lists the sha256 of every other file of the directory (model, manifest with
its smoke vectors, reference profile), signed with an elliptic-curve private key or a
private key and its certificate chain. Nothing of the directory but ``model.sig`` itself
is left out, so a file added, removed or changed after signing fails verification.

Verification is offline: against trusted public keys (several at once, for rotation: the
signature names its key by a hint, the sha256 of the key's PEM) or trusted CA
certificates. Before any cryptography the signed digests are compared with the files,
so a failure says which file changed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import read_file, sha256_hex
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import file_differences
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

SIGNATURE_FILE = "model.sig"
# The library the collection pins (requirements.txt); its import is deferred so that a
# module that signs nothing never needs it.
LIBRARY_HINT = "Install it there: pip install model-signing==1.1.1 (pinned in the collection's requirements.txt)."
POLICIES = ("required", "optional")


def _library() -> tuple[t.Any, t.Any, t.Any]:
    try:
        from model_signing import hashing, signing, verifying  # noqa: PLC0415 (optional dependency)
    except ImportError as exc:
        raise EdgeMLError(
            f"Signing and verifying bundles needs the model-signing Python library (OpenSSF model signing): {exc}.",
            LIBRARY_HINT,
        ) from None
    return hashing, signing, verifying


def _hashing_config(hashing: t.Any) -> t.Any:
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def key_hint(public_key_pem: bytes) -> str:
    """The hint a signature carries for the key that made it (as model-signing computes it)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    key = serialization.load_pem_public_key(public_key_pem)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return sha256_hex(pem)


def _read(path: str, what: str) -> bytes:
    return read_file(path, what, "Check the path and its permissions.")


class Signature:
    """What ``model.sig`` says: the signer (key hint or certificate) and the signed digests."""

    def __init__(self, path: str, key: str | None, leaf_certificate: bytes | None, digests: dict[str, str]) -> None:
        self.path = path
        self.key = key
        self.leaf_certificate = leaf_certificate  # DER, in certificate mode
        self.certificate = leaf_certificate is not None
        self.digests = digests

    @property
    def signer(self) -> str:
        return f"key {self.key}" if self.key else "a certificate" if self.certificate else "an unnamed key"


def read_signature(bundle_dir: str) -> Signature | None:
    """The bundle's signature, or None when it has none. A malformed one is an error."""
    path = os.path.join(bundle_dir, SIGNATURE_FILE)
    if not os.path.isfile(path):
        return None
    try:
        document = json.loads(_read(path, "Bundle signature"))
        material = document["verificationMaterial"]
        payload = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"], validate=True))
        resources = payload["predicate"]["resources"]
        digests = {str(item["name"]): str(item["digest"]) for item in resources}
        key = (material.get("publicKey") or {}).get("hint") or None
        chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
        leaf = base64.b64decode(chain[0]["rawBytes"], validate=True) if chain else None
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise EdgeMLError(
            f"{path} is not a model signature this collection can read ({type(exc).__name__}: {exc}).",
            "Sign the bundle again (model_bundle with signing_key), or remove the file.",
        ) from None
    return Signature(path, key, leaf, digests)


def content_changes(bundle_dir: str, signature: Signature) -> list[str]:
    """How the directory differs from what was signed: changed, added and missing files."""
    actual: dict[str, str] = {}
    for root, dirs, files in os.walk(bundle_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, bundle_dir)
            if relative != SIGNATURE_FILE:
                actual[relative] = sha256_hex(_read(path, "Bundle file"))
    return file_differences(signature.digests, actual)


def sign_bundle(
    bundle_dir: str,
    private_key: str,
    password: str | None = None,
    certificate: str | None = None,
    certificate_chain: t.Sequence[str] = (),
) -> Signature:
    """Sign BUNDLE_DIR into its ``model.sig``, atomically (written beside, then renamed in)."""
    if certificate and not certificate_chain:
        raise EdgeMLError(
            f"Signing {bundle_dir} with the certificate {certificate} needs its certificate chain.",
            "Give the certificates of the CAs that issued it (signing_certificate_chain), "
            "up to the root the hosts trust.",
        )
    hashing, signing, _verifying = _library()
    config = signing.Config().set_hashing_config(_hashing_config(hashing))
    parent = os.path.dirname(os.path.abspath(bundle_dir))
    fd, staged = tempfile.mkstemp(prefix=f".{os.path.basename(bundle_dir)}.sig-", dir=parent)
    os.close(fd)
    try:
        if certificate:
            config.use_certificate_signer(
                private_key=private_key, signing_certificate=certificate, certificate_chain=list(certificate_chain)
            )
        else:
            config.use_elliptic_key_signer(private_key=private_key, password=password.encode() if password else None)
        config.sign(bundle_dir, staged)
        os.chmod(staged, 0o644)
        os.replace(staged, os.path.join(bundle_dir, SIGNATURE_FILE))
    except (ValueError, TypeError, OSError) as exc:
        # The library's messages name files and formats, never the key's content or password.
        raise EdgeMLError(
            f"Cannot sign {bundle_dir} with the private key {private_key}: {type(exc).__name__}: {exc}.",
            "Use an unencrypted or password-protected PEM elliptic-curve key (P-256, P-384 or P-521), "
            "its password in signing_key_password, and with a certificate the certificate of that key.",
        ) from None
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    signature = read_signature(bundle_dir)
    if signature is None:  # pragma: no cover - just written
        raise EdgeMLError(f"{bundle_dir}/{SIGNATURE_FILE} vanished right after it was written.")
    return signature


def verify_bundle(
    bundle_dir: str,
    trusted_keys: t.Sequence[str] = (),
    trusted_certificates: t.Sequence[str] = (),
    policy: str = "required",
) -> dict[str, t.Any]:
    """Check BUNDLE_DIR's signature against the trusted public keys (PEM files) or CA
    certificates under POLICY (required | optional). Return what was checked (with the
    signed sha256 of every file, which then equals the file's); raise EdgeMLError saying
    what is wrong otherwise.

    Under ``optional`` an unsigned bundle passes, and so does a signed one where nothing is
    trusted at all (signatures are not checked there: anyone could strip one, so refusing a
    signed bundle but not an unsigned one would protect nothing). Once a key or CA is
    trusted, a signature must verify against it."""
    if policy not in POLICIES:
        raise EdgeMLError(f"Unknown signature policy {policy!r}.", f"Use one of {', '.join(POLICIES)}.")
    signature = read_signature(bundle_dir)
    if signature is None:
        if policy == "required":
            raise EdgeMLError(
                f"{bundle_dir} is not signed (no {SIGNATURE_FILE}) and the signature policy requires signatures.",
                "Sign the bundle with model_bundle's signing_key, or set the policy of this host's group to optional.",
            )
        return {"signed": False, "policy": policy}
    if policy == "optional" and not trusted_keys and not trusted_certificates:
        return {"signed": True, "checked": False, "policy": policy, "signer": signature.signer}
    changes = content_changes(bundle_dir, signature)
    if changes:
        raise EdgeMLError(
            f"{bundle_dir} changed after it was signed by {signature.signer}: {', '.join(changes)}.",
            "Do not deploy it: rebuild the bundle from its source and sign it again.",
            changes=changes,
        )
    hashing, _signing, verifying = _library()
    config = verifying.Config().set_hashing_config(_hashing_config(hashing))
    if signature.key or not signature.certificate:
        key = _trusted_key(bundle_dir, signature, trusted_keys)
        config.use_elliptic_key_verifier(public_key=key)
        checked: dict[str, t.Any] = {"key": signature.key, "trusted_key": key}
    else:
        if not trusted_certificates:
            raise EdgeMLError(
                f"{bundle_dir} is signed with a certificate, and no CA certificate is trusted.",
                "Add the CA that issued the signing certificate to the trusted CA certificates.",
            )
        config.use_certificate_verifier(certificate_chain=list(trusted_certificates))
        checked = {"certificate": True}
    _verify(config, bundle_dir, signature)
    return {
        "signed": True,
        "checked": True,
        "policy": policy,
        "signer": signature.signer,
        **checked,
        "digests": dict(signature.digests),
    }


def _trusted_key(bundle_dir: str, signature: Signature, trusted_keys: t.Sequence[str]) -> str:
    """The trusted public key (file) the signature names by its hint; an error if none does."""
    hints = {key_hint(_read(path, "Trusted public key")): path for path in trusted_keys}
    key = hints.get(signature.key or "")
    if key is None:
        trusted = ", ".join(sorted(hints)) or "none"
        raise EdgeMLError(
            f"{bundle_dir} is signed by {signature.signer}, which is not a trusted key (trusted: {trusted}).",
            "Add its public key to the trusted keys if it is yours, or sign the bundle with a trusted key.",
        )
    return key


def _verify(config: t.Any, bundle_dir: str, signature: Signature) -> None:
    try:
        config.verify(bundle_dir, signature.path)
    except Exception as exc:  # the library raises its own, cryptography's and OpenSSL's types
        raise EdgeMLError(
            f"The signature of {bundle_dir} does not verify: {type(exc).__name__}: {exc}.",
            "Do not deploy it: rebuild the bundle from its source and sign it again with a trusted key.",
        ) from None


class Signer:
    """The signing material model_bundle was given: a private key (and its password), or a
    private key with its certificate and chain. Knows whether a signature is its own."""

    def __init__(
        self,
        private_key: str,
        password: str | None = None,
        certificate: str | None = None,
        certificate_chain: t.Sequence[str] = (),
    ) -> None:
        self.private_key = private_key
        self.password = password
        self.certificate = certificate
        self.certificate_chain = list(certificate_chain)
        self.key = None if certificate else key_hint(self._public_key_pem())

    def _public_key_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        try:
            key = serialization.load_pem_private_key(
                _read(self.private_key, "Signing key"), self.password.encode() if self.password else None
            )
        except (ValueError, TypeError) as exc:
            # Never the key's bytes or the password: only what kind of problem it is.
            raise EdgeMLError(
                f"Cannot read the signing key {self.private_key}: {type(exc).__name__}: {exc}.",
                "Give a PEM elliptic-curve private key (P-256, P-384 or P-521), and its password in "
                "signing_key_password if it is encrypted.",
            ) from None
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def describe(self) -> str:
        return f"the certificate {self.certificate}" if self.certificate else f"key {self.key}"

    def made(self, bundle_dir: str, signature: Signature) -> bool:
        """Whether SIGNATURE is this signer's: made by its key (checked, not only named), or
        naming its certificate as the leaf."""
        from cryptography import x509  # noqa: PLC0415
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

        if self.certificate is not None:
            ours = x509.load_pem_x509_certificate(_read(self.certificate, "Signing certificate"))
            return signature.leaf_certificate == ours.public_bytes(serialization.Encoding.DER)
        if signature.key != self.key:
            return False
        with tempfile.NamedTemporaryFile(suffix=".pub") as public:
            public.write(self._public_key_pem())
            public.flush()
            try:
                verify_bundle(bundle_dir, [public.name])
            except EdgeMLError:
                return False
        return True

    def sign(self, bundle_dir: str) -> Signature:
        return sign_bundle(bundle_dir, self.private_key, self.password, self.certificate, self.certificate_chain)


def ensure_signature(bundle_dir: str, signer: Signer, check_mode: bool) -> tuple[list[str], dict[str, t.Any]]:
    """Sign an existing bundle unless it already carries this signer's signature over its
    current content. Return (actions, the signature's description). A bundle that changed
    after it was signed is refused, not signed again: signing it would hide the change."""
    path = os.path.join(bundle_dir, SIGNATURE_FILE)
    existing = read_signature(bundle_dir)
    if existing is not None:
        changes = content_changes(bundle_dir, existing)
        if changes:
            raise EdgeMLError(
                f"{bundle_dir} changed after it was signed by {existing.signer}: {', '.join(changes)}.",
                "Do not sign or deploy it: remove that directory and build the bundle again.",
                changes=changes,
            )
        if signer.made(bundle_dir, existing):
            return [], {"file": path, "signed_by": signer.describe()}
        actions = [f"sign {bundle_dir} again with {signer.describe()} into {path} (was signed by {existing.signer})"]
    else:
        actions = [f"sign {bundle_dir} with {signer.describe()} into {path}"]
    if not check_mode:
        signer.sign(bundle_dir)
    return actions, {"file": path, "signed_by": signer.describe()}
