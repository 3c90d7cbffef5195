"""Bundle signatures (docs/bundle-format.md, "model.sig"), checked before a bundle loads.

The collection signs bundles (plugins/module_utils/_bundle_signing.py); the server image
cannot import the collection, so the checks it needs are here again. In order:
  1. no model.sig: refused under the ``required`` policy, loaded as before under ``optional``
     (as is a signed bundle under ``optional`` on a host that trusts no signer at all);
  2. the signed sha256 digests against the files, so a failure names what changed;
  3. the signer: the trusted public key the signature's hint names, or (certificate mode)
     the trusted CA certificates, all from one trust directory;
  4. the cryptographic check by model_signing, imported only now: a server whose bundles
     are unsigned never imports it.
The result holds the digests of the very signature bytes that were verified; bundle.py
requires the bytes it then reads and uses to match them (no time-of-check/time-of-use gap).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bundle import BundleError

SIGNATURE_FILE = "model.sig"
POLICIES = ("required", "optional")
DEFAULT_POLICY = "optional"
DEFAULT_TRUSTED_KEYS = Path("/etc/edgeml/trusted-keys")
# A signature lists a few digests (and maybe a certificate chain): kilobytes, not megabytes.
_SIGNATURE_MAX_BYTES = 1024 * 1024
_RESIGN = "rebuild the bundle from its source and sign it again (model_bundle's signing_key)"


@dataclass(frozen=True)
class SignaturePolicy:
    """What --signature-policy and --trusted-keys say."""

    policy: str = DEFAULT_POLICY
    trusted_keys: Path = DEFAULT_TRUSTED_KEYS

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"signature policy {self.policy!r} is not one of {', '.join(POLICIES)}")


@dataclass(frozen=True)
class VerifiedSignature:
    signer: str  # "key <hint>" or "certificate <subject>", for messages and logs
    key_hint: str | None  # None in certificate mode
    digests: dict[str, str]  # file name in the bundle -> sha256 hex, as signed

    def require(self, path: Path, sha256: str) -> None:
        """Refuse bytes about to be used that are not the bytes signed."""
        signed = self.digests.get(path.name)
        if signed != sha256:
            raise BundleError(
                f"{path} changed after its signature (by {self.signer}) was verified: the bytes read have "
                f"sha256 {sha256}, the signature lists {signed or 'no such file'}; refusing to load it "
                "(something writes into the bundle directory while it is loaded)"
            )


def verify_signature(bdir: Path, policy: SignaturePolicy) -> VerifiedSignature | None:
    """Check BDIR's model.sig under POLICY; None for an unsigned bundle the policy allows.
    Raise BundleError saying what is wrong otherwise."""
    raw = _read_signature(bdir)
    if raw is None:
        if policy.policy == "required":
            raise BundleError(
                f"{bdir} is not signed (no {SIGNATURE_FILE}) and the signature policy is required; "
                "sign the bundle (model_bundle's signing_key) or set the policy to optional"
            )
        return None
    keys, ca_certificates = _trust(policy.trusted_keys)
    if policy.policy == "optional" and not keys and not ca_certificates:
        # Nothing trusted: optional checks no signature, as the collection's verify_bundle
        # (anyone could strip one, so refusing a signed bundle but not an unsigned one would
        # protect nothing). A host that trusts a key checks every signature against it.
        return None
    hashing, verifying = _library(bdir)
    key_hint, leaf_certificate, digests = _parse(bdir, raw)
    signer = _describe_signer(bdir, key_hint, leaf_certificate)
    changes = _changes(bdir, digests)
    if changes:
        raise BundleError(
            f"{bdir} changed after it was signed by {signer}: {', '.join(changes)}; do not serve it: {_RESIGN}"
        )
    config = verifying.Config().set_hashing_config(
        hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    )
    if leaf_certificate is None:
        key = keys.get(key_hint or "")
        if key is None:
            trusted = ", ".join(sorted(keys)) or _none_trusted(policy.trusted_keys)
            raise BundleError(
                f"{bdir} is signed by {signer}, which is not among the trusted keys in {policy.trusted_keys} "
                f"(trusted: {trusted}); add its public key there if the key is yours, or sign the bundle "
                "with a trusted key"
            )
        trust_anchor = f"the trusted key {key}"
    else:
        if not ca_certificates:
            raise BundleError(
                f"{bdir} is signed by {signer}, and no CA certificate (*.crt) is trusted in {policy.trusted_keys} "
                f"({_none_trusted(policy.trusted_keys)}); add the certificate of the CA that issued it there"
            )
        trust_anchor = f"the CA certificates in {policy.trusted_keys}"
    # model_signing reads the signature from a path. Give it the bytes parsed above, in an
    # anonymous in-memory file, not model.sig again: the digests returned are then the ones
    # the cryptography checked, even if model.sig is replaced meanwhile.
    with os.fdopen(os.memfd_create(SIGNATURE_FILE), "w+b") as verified_copy:
        verified_copy.write(raw)
        verified_copy.flush()
        try:
            if leaf_certificate is None:
                config.use_elliptic_key_verifier(public_key=key)
            else:
                config.use_certificate_verifier(certificate_chain=ca_certificates)
            config.verify(bdir, f"/proc/self/fd/{verified_copy.fileno()}")
        except Exception as exc:  # model_signing raises its own, cryptography's and OpenSSL's types
            raise BundleError(
                f"the signature of {bdir} by {signer} does not verify against {trust_anchor}: "
                f"{type(exc).__name__}: {exc}; do not serve it: {_RESIGN}"
            ) from None
    return VerifiedSignature(signer, key_hint if leaf_certificate is None else None, digests)


def _read_signature(bdir: Path) -> bytes | None:
    path = bdir / SIGNATURE_FILE
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_SIGNATURE_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise BundleError(f"cannot read the signature {path}: {exc}") from None
    if len(raw) > _SIGNATURE_MAX_BYTES:
        raise BundleError(f"{path} is larger than {_SIGNATURE_MAX_BYTES} bytes: not a bundle signature")
    return raw


def _parse(bdir: Path, raw: bytes) -> tuple[str | None, bytes | None, dict[str, str]]:
    """(key hint, DER leaf certificate, {file: sha256}) from a Sigstore bundle with a DSSE payload."""
    try:
        document = json.loads(raw)
        material = document["verificationMaterial"]
        payload = json.loads(base64.b64decode(document["dsseEnvelope"]["payload"], validate=True))
        digests: dict[str, str] = {}
        for item in payload["predicate"]["resources"]:
            if item.get("algorithm", "sha256") != "sha256":
                raise ValueError(f"{item['name']} has a {item['algorithm']} digest; this server checks sha256")
            digests[str(item["name"])] = str(item["digest"])
        key_hint = (material.get("publicKey") or {}).get("hint") or None
        chain = (material.get("x509CertificateChain") or {}).get("certificates") or []
        leaf = base64.b64decode(chain[0]["rawBytes"], validate=True) if chain and not key_hint else None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:  # binascii.Error is a ValueError
        raise BundleError(
            f"{bdir}/{SIGNATURE_FILE} is not a model signature this server can read "
            f"({type(exc).__name__}: {exc}); {_RESIGN}"
        ) from None
    return key_hint, leaf, digests


def _describe_signer(bdir: Path, key_hint: str | None, leaf_certificate: bytes | None) -> str:
    if leaf_certificate is None:
        return f"key {key_hint}" if key_hint else "a key it does not name (no key hint)"
    from cryptography import x509  # noqa: PLC0415 - only for signed bundles, with model_signing

    try:
        subject = x509.load_der_x509_certificate(leaf_certificate).subject.rfc4514_string()
    except ValueError as exc:
        raise BundleError(f"{bdir}/{SIGNATURE_FILE} holds a signing certificate that cannot be read: {exc}") from None
    return f"the certificate {subject!r}"


def _changes(bdir: Path, signed: dict[str, str]) -> list[str]:
    """How the directory differs from what was signed: changed, added and missing files."""
    actual: dict[str, str] = {}
    for root, dirs, files in os.walk(bdir):
        dirs.sort()
        for name in files:
            path = Path(root, name)
            relative = path.relative_to(bdir).as_posix()
            if relative == SIGNATURE_FILE:
                continue
            try:
                with open(path, "rb") as fh:
                    actual[relative] = hashlib.file_digest(fh, "sha256").hexdigest()
            except OSError as exc:
                raise BundleError(f"cannot read {path} to check it against the signature: {exc}") from None
    changes = [f"{name} changed" for name in sorted(actual) if name in signed and actual[name] != signed[name]]
    changes += [f"{name} added" for name in sorted(set(actual) - set(signed))]
    changes += [f"{name} missing" for name in sorted(set(signed) - set(actual))]
    return changes


def _trust(directory: Path) -> tuple[dict[str, Path], list[Path]]:
    """The trusted public keys by hint (*.pub, and *.pem holding a public key) and the CA
    certificates (*.crt) in DIRECTORY; none when it is absent."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - only for signed bundles

    keys: dict[str, Path] = {}
    ca_certificates: list[Path] = []
    try:
        # is_file() follows symlinks: Kubernetes mounts a Secret's files as links into ..data/.
        paths = sorted(p for p in directory.iterdir() if p.is_file()) if directory.is_dir() else []
        for path in paths:
            if path.suffix == ".crt":
                ca_certificates.append(path)
            elif path.suffix in (".pub", ".pem"):
                pem = path.read_bytes()
                try:
                    key = serialization.load_pem_public_key(pem)
                except ValueError as exc:
                    if path.suffix == ".pem":
                        continue  # a .pem may hold a certificate or a private key: not a trusted key
                    raise BundleError(f"the trusted key {path} is not a PEM public key: {exc}") from None
                # The hint model_signing writes: sha256 of the key's PEM (SubjectPublicKeyInfo).
                spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                keys[hashlib.sha256(spki).hexdigest()] = path
    except OSError as exc:
        raise BundleError(f"cannot read the trusted keys in {directory}: {exc}") from None
    return keys, ca_certificates


def _none_trusted(directory: Path) -> str:
    # Never "does not exist": swap.py answers 404 to load failures that say so.
    return "none" if directory.is_dir() else f"none: there is no directory {directory}"


def _library(bdir: Path) -> tuple[Any, Any]:
    try:
        from model_signing import hashing, verifying  # noqa: PLC0415 - only for signed bundles
    except ImportError as exc:
        raise BundleError(
            f"{bdir} is signed, and this server cannot check signatures: {exc}; install the model-signing "
            "library (pinned in the server's requirements.txt)"
        ) from None
    return hashing, verifying
