# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Verification of model_deployment (private): the bundle and the image a deployment (or
rollback) would run are checked on the host before anything running is touched. Every
failure is ``Refused``: the host is untouched.
"""

from __future__ import annotations

import os
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    MANIFEST_FILE,
    MODEL_FILE,
    loads_manifest,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import HostClient, read_text, sha256_file
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_plan import (
    DeployRequest,
    Refused,
    Target,
    normalize_id,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_state import StateStore
from ansible_collections.edgeml.fleet.plugins.module_utils._podman_support import require_unit_podman


class Verifier:
    def __init__(self, req: DeployRequest, host: HostClient, store: StateStore) -> None:
        self.req = req
        self.host = host
        self.store = store

    def verify(self, state: dict[str, t.Any]) -> Target:
        """Check podman, the bundle and the image before anything running is touched."""
        req = self.req
        require_unit_podman(self.host.podman_version(), Refused)
        reason = None
        if req.rollback:
            entry = self.store.resolve_rollback(state)
            version, sha256 = entry["version"], entry["sha256"]
            image, expected_image = entry["image"], entry.get("image_id")
            digest = entry.get("image_digest")
            reason = f"rollback to {req.rollback}" + (f" ({version})" if req.rollback == "previous" else "")
        else:
            version, sha256 = t.cast(str, req.version), t.cast(str, req.bundle_sha256)
            image, expected_image, digest = req.image, None, req.image_digest
        # A check run's predicted delivery is not on the host: the real run verifies it.
        manifest = {} if "bundle" in req.pending else self.verify_bundle(version, sha256)
        image_id = "" if "image" in req.pending else self.verify_image(image, digest, expected_image)
        return Target(version, sha256, image, image_id, digest, manifest, reason)

    def verify_bundle(self, version: str, sha256: str) -> dict[str, t.Any]:
        bdir = os.path.join(self.req.bundle_root, self.req.name, version)
        model, manifest_path = os.path.join(bdir, MODEL_FILE), os.path.join(bdir, MANIFEST_FILE)
        for path in (model, manifest_path):
            if not os.path.isfile(path):
                raise Refused(
                    f"The bundle {self.req.name} {version} is incomplete on this host: {path} is missing.",
                    f"Copy the bundle directory to {bdir}/ (model.onnx and model.json) before deploying.",
                )
        text = read_text(manifest_path) or ""
        try:
            manifest = loads_manifest(text.encode("utf-8"), manifest_path)
        except EdgeMLError as exc:
            raise Refused(exc.msg, "Copy the bundle again from the controller.") from None
        if manifest.get("name") != self.req.name or manifest.get("version") != version:
            raise Refused(
                f"{manifest_path} describes {manifest.get('name')!r} {manifest.get('version')!r}, "
                f"not {self.req.name!r} {version!r}.",
                "Copy the right bundle to that directory.",
            )
        recorded = (manifest.get("model") or {}).get("sha256")
        actual = sha256_file(model)
        if not (recorded == sha256 == actual):
            raise Refused(
                f"Checksum mismatch for {self.req.name} {version}: expected bundle_sha256 {sha256}, "
                f"model.json records {recorded}, {model} has {actual}.",
                "The copy on the host is not the bundle the controller built: copy it again, or pass "
                "the sha256 from the bundle's manifest. Nothing was changed.",
            )
        self._verify_profile(bdir, manifest, version)
        return manifest

    def _verify_profile(self, bdir: str, manifest: dict[str, t.Any], version: str) -> None:
        """The reference profile is part of the bundle: the server refuses a version whose profile
        does not match model.json, so refuse it here, before anything running is touched."""
        ref = manifest.get("reference_profile")
        if ref is None:
            return
        name = ref.get("file") if isinstance(ref, dict) else None
        path = os.path.join(bdir, str(name))
        actual = sha256_file(path) if isinstance(name, str) and os.path.isfile(path) else "(missing)"
        if actual != ref.get("sha256"):
            raise Refused(
                f"The reference profile of {self.req.name} {version} does not match its manifest: "
                f"model.json records {ref.get('sha256')}, {path} has {actual}.",
                "Copy the whole bundle directory again from the controller (model.onnx, model.json, "
                f"{name}). Nothing was changed.",
            )

    def verify_image(self, ref: str, digest: str | None, expected_id: str | None) -> str:
        info = self.host.image_inspect(ref)
        if info is None:
            raise Refused(
                f"The image {ref} is not on this host.",
                "Pull it (by digest) or load it from its OCI archive before deploying. Nothing was changed.",
            )
        image_id = normalize_id(str(info.get("Id", "")))
        if digest:
            accepted = {image_id, str(info.get("Digest", ""))}
            accepted.update(str(d).rpartition("@")[2] for d in info.get("RepoDigests") or [])
            if normalize_id(digest) not in accepted:
                raise Refused(
                    f"The image {ref} on this host does not match image_digest {digest} "
                    f"(id {image_id}, digests {sorted(accepted - {image_id, ''})}).",
                    "Pull the image by digest (REPO@sha256:...) so the tag cannot drift. Nothing was changed.",
                )
        if expected_id and normalize_id(expected_id) != image_id:
            raise Refused(
                f"The image {ref} now resolves to {image_id}, not to {expected_id} recorded in the history.",
                "The tag moved: pin images by digest. Load the old image again to roll back to it.",
            )
        return image_id
