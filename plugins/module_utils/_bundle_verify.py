# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Runner of model_bundle_verify (private): is this bundle the one to deliver?

One pass over the bundle's files: with a signature, the signed digests are compared with
the files (``verify_bundle``; the library then checks the signature over them), and the
model's sha256 in model.json with the signed one; without, the model is hashed once. Then
the name and version the deployment asks for. The result lists every file's sha256 (the
signed digests where there are some: no file is read twice), so that a host already holding
this exact bundle is not sent it again.
"""

from __future__ import annotations

import os
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import read_file, sha256_hex
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import MANIFEST_FILE, loads_manifest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_signing import verify_bundle
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import sha256_file

REBUILD_HINT = (
    "Do not deploy it: rebuild it with edgeml.fleet.model_bundle (and sign it). Nothing was changed on any host."
)


def verify_deliverable(
    path: str,
    *,
    name: str | None = None,
    version: str | None = None,
    policy: str = "required",
    trusted_keys: t.Sequence[str] = (),
    trusted_certificates: t.Sequence[str] = (),
) -> dict[str, t.Any]:
    """Check the bundle directory PATH before it is delivered; return what was checked or
    raise EdgeMLError saying what is wrong."""
    if not os.path.isdir(path):
        raise EdgeMLError(
            f"No bundle at {path}.",
            "Build it with edgeml.fleet.model_bundle, or point the deployment at the right bundle root "
            "(model_deployment_bundle_src).",
        )
    # The signature first: when the manifest was tampered with, that is what to say.
    try:
        signature = verify_bundle(path, trusted_keys, trusted_certificates, policy)
    except EdgeMLError as exc:
        raise EdgeMLError(exc.msg, f"{exc.hint} Nothing was changed on any host.", **exc.details) from None
    manifest = loads_manifest(
        read_file(os.path.join(path, MANIFEST_FILE), "Bundle manifest", REBUILD_HINT), os.path.join(path, MANIFEST_FILE)
    )
    model = manifest.get("model") or {}
    model_file = str(model.get("file", ""))
    if not model_file or os.path.basename(model_file) != model_file:
        raise EdgeMLError(f"{path}/{MANIFEST_FILE} names no model file (model.file is {model_file!r}).", REBUILD_HINT)
    # A checked signature listed every file's digest, now equal to the file's: no second read.
    digests = signature.pop("digests", {})
    model_sha256 = digests.get(model_file) or sha256_hex(
        read_file(os.path.join(path, model_file), "Bundle model", REBUILD_HINT)
    )
    if model_sha256 != model.get("sha256"):
        raise EdgeMLError(
            f"The bundle {path} is corrupt: {model_file} has sha256 {model_sha256}, "
            f"model.json says {model.get('sha256')}.",
            REBUILD_HINT,
        )
    mislabelled = [
        f"{what} {manifest.get(what)!r} where {wanted!r} is deployed"
        for what, wanted in (("name", name), ("version", version))
        if wanted is not None and str(manifest.get(what)) != wanted
    ]
    if mislabelled:
        raise EdgeMLError(f"The bundle {path} is mislabelled: model.json says {', '.join(mislabelled)}.", REBUILD_HINT)
    return {
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "sha256": model_sha256,
        "signature": signature,
        "files": bundle_files(path, {**digests, model_file: model_sha256}),
    }


def bundle_files(path: str, known: dict[str, str]) -> dict[str, str]:
    """Every regular file under PATH (relative, '/'-separated) and its sha256: from KNOWN
    where it is there, else read."""
    files = {}
    for directory, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(directory, name)
            relative = os.path.relpath(full, path).replace(os.sep, "/")
            files[relative] = known.get(relative) or sha256_file(full)
    return dict(sorted(files.items()))


def run_model_bundle_verify(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    verdict = verify_deliverable(
        params["path"],
        name=params["name"],
        version=params["version"],
        policy=params["signature_policy"],
        trusted_keys=params["trusted_keys"],
        trusted_certificates=params["trusted_certificates"],
    )
    return {"changed": False, **verdict}
