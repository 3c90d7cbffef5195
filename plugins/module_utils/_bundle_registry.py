# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Bundles through a registry (private): a bundle as a minimal OCI image, pushed once per
site registry by the controller and pulled by digest by each host (the way KServe's
"modelcars" ship models), then unpacked into the bundle directory the server reads.

Client: podman (build, push, pull, create, cp, rm, rmi) through ``run_command``, and the
registry's HTTP API (a tag's manifest and its digest). Service: ``push_bundle`` on the
controller, ``pull_bundle`` on a host, each idempotent and honest in check mode.

The image is built from a fixed Containerfile (``FROM scratch``, the bundle's files under
``/bundle``) with ``--timestamp 0``: the same bundle always makes the same image, so its ID
(the digest of its config, which names the digest of the files' layer) tells whether a tag
in a registry holds this bundle or other content. Hosts never trust a tag: they pull by the
digest the controller read back from each registry, and compare every file they unpack with
the sha256 the controller verified (``model_bundle_verify``'s ``files``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing as t

from ansible.module_utils.urls import open_url
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import file_differences
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import bundle_files
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule

BUNDLE_DIR_IN_IMAGE = "/bundle"
CONTAINERFILE = f"FROM scratch\nCOPY bundle/ {BUNDLE_DIR_IN_IMAGE}/\n"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
FILE_MODE, DIR_MODE = 0o644, 0o755


# --- client ---------------------------------------------------------------------------------


class PodmanClient:
    """podman through ``run_command`` (argument lists, no shell)."""

    def __init__(self, module: t.Any) -> None:
        self.module = module

    def run(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        binary = self.module.get_bin_path("podman", required=False)
        if binary is None:
            raise EdgeMLError("podman is not installed here.", "Bundles through a registry need podman (>= 4.3).")
        rc, out, err = self.module.run_command([binary, *args])
        if check and rc != 0:
            raise EdgeMLError(
                f"'podman {' '.join(args)}' failed with exit code {rc}: {(err or out).strip()[:500]}",
                "Check that the registry is reachable from here and that podman can write its storage.",
            )
        return rc, out, err


class RegistryClient:
    """The registry's HTTP API (distribution spec): what a tag points at."""

    def __init__(self, tls_verify: bool, timeout: float = 30) -> None:
        self.tls_verify = tls_verify
        self.timeout = timeout

    def manifest(self, registry: str, repository: str, reference: str) -> tuple[str, dict[str, t.Any]] | None:
        """(digest, manifest) of REFERENCE (a tag or a digest), or None when it is not there."""
        scheme = "https" if self.tls_verify else "http"
        url = f"{scheme}://{registry}/v2/{repository}/manifests/{reference}"
        try:
            answer = open_url(
                url,
                method="GET",
                headers={"Accept": MANIFEST_TYPES},
                validate_certs=self.tls_verify,
                timeout=self.timeout,
            )
            body = answer.read()
            digest = answer.headers.get("Docker-Content-Digest", "")
        except Exception as error:  # urllib raises HTTPError, URLError, OSError, ssl errors
            if getattr(error, "code", None) == 404:
                return None
            raise EdgeMLError(
                f"The registry {registry} did not answer for {repository}:{reference}: {error}.",
                "Check model_deployment_bundle_registry_from_controller (host:port) and "
                "model_deployment_registry_tls_verify.",
            ) from None
        try:
            return digest, json.loads(body)
        except ValueError:
            raise EdgeMLError(
                f"The registry {registry} answered for {repository}:{reference} with something that is not a manifest.",
                "Check that the address is a container registry.",
            ) from None


# --- service --------------------------------------------------------------------------------


def set_modes(root: str) -> None:
    """Files 0644 and directories 0755, as the SSH delivery leaves them."""
    for directory, _dirs, names in os.walk(root):
        os.chmod(directory, DIR_MODE)
        for name in names:
            os.chmod(os.path.join(directory, name), FILE_MODE)


def build_bundle_image(podman: PodmanClient, path: str, files: dict[str, str], tag: str) -> str:
    """Build the bundle's image from a copy of PATH checked against FILES; return its ID."""
    with tempfile.TemporaryDirectory(prefix="edgeml-bundle-image-") as context:
        staged = os.path.join(context, "bundle")
        shutil.copytree(path, staged, symlinks=False)
        set_modes(staged)
        # The copy is what goes into the image: it must be what was verified.
        changed = file_differences(files, bundle_files(staged, {}))
        if changed:
            raise EdgeMLError(
                f"The bundle {path} changed after it was verified: {', '.join(changed)}.",
                "Something writes into the bundle directory during the rollout; run the rollout again.",
                changes=changed,
            )
        containerfile = os.path.join(context, "Containerfile")
        with open(containerfile, "w", encoding="utf-8") as handle:
            handle.write(CONTAINERFILE)
        podman.run("build", "--quiet", "--timestamp", "0", "--format", "oci", "-t", tag, "-f", containerfile, context)
    image = local_image_id(podman, tag)
    if image is None:
        raise EdgeMLError(f"podman built {tag} but cannot find it.", "Check podman's storage on this host.")
    return image


def local_image_id(podman: PodmanClient, reference: str) -> str | None:
    """The ID (sha256:...) of the image REFERENCE in this host's podman storage, or None."""
    rc, out, _err = podman.run("image", "inspect", "--format", "{{.Id}}", reference, check=False)
    if rc != 0:
        return None
    image = out.strip()
    return image if image.startswith("sha256:") else f"sha256:{image}"


def push_bundle(
    podman: PodmanClient,
    registry_client: RegistryClient,
    *,
    path: str,
    repository: str,
    version: str,
    registries: t.Sequence[str],
    files: dict[str, str],
    check_mode: bool,
) -> dict[str, t.Any]:
    """Make sure every registry holds the bundle under REPOSITORY:VERSION (each pushed to at
    most once); return the digest of the manifest each one holds. A tag holding other content
    is refused, never replaced."""
    tag = f"localhost/{repository}:{version}"
    existed = podman.run("image", "exists", tag, check=False)[0] == 0
    image = build_bundle_image(podman, path, files, tag)
    try:
        # Every registry is read before any is pushed to: one holding other content stops
        # the delivery everywhere, with nothing sent anywhere.
        holding = {registry: registry_client.manifest(registry, repository, version) for registry in registries}
        for registry, found in holding.items():
            if found is not None:
                require_same_image(registry, f"{repository}:{version}", found, image)
        pushed = [registry for registry, found in holding.items() if found is None]
        if check_mode:  # the digests of the registries that hold it already; nothing pushed
            digests = {registry: found[0] for registry, found in holding.items() if found is not None}
            return {"changed": bool(pushed), "image_id": image, "digests": digests, "pushed": pushed}
        for registry in pushed:
            podman.run(
                "push",
                "--quiet",
                f"--tls-verify={'true' if registry_client.tls_verify else 'false'}",
                tag,
                f"docker://{registry}/{repository}:{version}",
            )
            found = registry_client.manifest(registry, repository, version)
            if found is None:
                raise EdgeMLError(
                    f"{registry}/{repository}:{version} is not there right after the push.",
                    "Check the registry's storage and logs.",
                )
            require_same_image(registry, f"{repository}:{version}", found, image)
            holding[registry] = found
    finally:
        if check_mode and not existed:
            podman.run("rmi", tag, check=False)
    digests = {registry: found[0] for registry, found in holding.items() if found is not None}
    return {"changed": bool(pushed), "image_id": image, "digests": digests, "pushed": pushed}


def require_same_image(registry: str, reference: str, found: tuple[str, dict[str, t.Any]], image: str) -> None:
    """Refuse a tag that holds another image than the bundle's: a version is immutable, so
    someone pushed something else under it."""
    digest, manifest = found
    holds = (manifest.get("config") or {}).get("digest")
    if holds != image:
        raise EdgeMLError(
            f"{registry}/{reference} points at other content than the verified bundle: its image is "
            f"{holds or 'not a single image'} ({digest}), the bundle's is {image}. Nothing was sent to any host.",
            "A version is never rewritten: find out who pushed it, then delete the tag from that registry "
            "(or give the bundle a new version) and run the rollout again.",
            registry=registry,
            found=digest,
        )


def unpack_bundle_image(podman: PodmanClient, ref: str, into: str) -> None:
    container = podman.run("create", ref, BUNDLE_DIR_IN_IMAGE)[1].strip()
    try:
        podman.run("cp", f"{container}:{BUNDLE_DIR_IN_IMAGE}/.", into)
    finally:
        podman.run("rm", "--force", container, check=False)


def pull_bundle(
    podman: PodmanClient, *, ref: str, dest: str, files: dict[str, str], tls_verify: bool, check_mode: bool
) -> dict[str, t.Any]:
    """Make DEST hold exactly FILES (path -> sha256), unpacked from the bundle image REF
    (pinned by digest); nothing is pulled when it already does."""
    held = bundle_files(dest, {}) if os.path.isdir(dest) else {}
    if held == files:
        return {"changed": False, "ref": ref, "dest": dest}
    if check_mode:
        return {"changed": True, "ref": ref, "dest": dest, "changes": file_differences(files, held)}
    parent = os.path.dirname(dest.rstrip("/"))
    os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
    podman.run("pull", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}", ref)
    unpacked = tempfile.mkdtemp(prefix=".pull-", dir=parent)
    try:
        try:
            unpack_bundle_image(podman, ref, unpacked)
        finally:
            podman.run("rmi", ref, check=False)  # the unpacked copy is the one kept
        changed = file_differences(files, bundle_files(unpacked, {}))
        if changed:
            raise EdgeMLError(
                f"The bundle image {ref} does not hold the verified bundle: {', '.join(changed)}. "
                "Nothing on this host was changed.",
                "The registry served other content under this digest, or the bundle changed on the controller "
                "after it was verified: run the rollout again, and check the registry if it happens again.",
                changes=changed,
            )
        set_modes(unpacked)
        if os.path.isdir(dest):
            # Only a copy that is not the verified bundle gets here: set it aside, then replace it.
            aside = tempfile.mkdtemp(prefix=".replaced-", dir=parent)
            os.rename(dest, os.path.join(aside, "bundle"))
            os.rename(unpacked, dest)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(unpacked, dest)
    finally:
        if os.path.isdir(unpacked):
            shutil.rmtree(unpacked, ignore_errors=True)
    return {"changed": True, "ref": ref, "dest": dest, "changes": file_differences(files, held)}


# --- runners --------------------------------------------------------------------------------


def run_model_bundle_push(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    if not params["registries"]:
        raise EdgeMLError("No registry to push the bundle to (registries is empty).", "List at least one host:port.")
    return push_bundle(
        PodmanClient(wrapper.module),
        RegistryClient(params["tls_verify"]),
        path=params["path"],
        repository=params["repository"],
        version=params["version"],
        registries=params["registries"],
        files=params["files"],
        check_mode=wrapper.check_mode,
    )


def run_model_bundle_pull(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    ref = params["ref"]
    if "@sha256:" not in ref:
        raise EdgeMLError(
            f"ref {ref!r} is not pinned by digest.",
            "Give REGISTRY/REPOSITORY@sha256:DIGEST (model_bundle_push returns the digest each registry holds): "
            "a tag can be moved to other content.",
        )
    if not params["files"]:
        raise EdgeMLError(
            "files is empty: nothing to check the unpacked bundle against.",
            "Pass model_bundle_verify's files.",
        )
    return pull_bundle(
        PodmanClient(wrapper.module),
        ref=ref,
        dest=params["dest"],
        files=params["files"],
        tls_verify=params["tls_verify"],
        check_mode=wrapper.check_mode,
    )
