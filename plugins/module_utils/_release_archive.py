# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Releases for air-gapped sites (private): one directory that carries a model version to a
site the controller's registries cannot reach, and loads it there.

A release directory holds the bundle's image (the same image registry delivery pushes,
``_bundle_registry.build_bundle_image``) and the model server's image, each as an OCI
archive, and ``release.json``: each archive's sha256 and image ID, and every bundle file's
sha256. ``export_release`` writes it where the bundle was verified; ``import_release``
runs at the site (its control node, or any machine that reaches the site registry): it
checks every archive against release.json, every image against its ID, every bundle file
against its digest and the bundle's signature against the site's own trust, before it
pushes anything to the site registry or writes the bundle into the site control node's
bundle directory. A deployment at the site then runs unchanged: registry delivery finds the
site registry holding the bundle image and pushes nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    file_differences,
    validate_name,
    validate_version,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_registry import (
    PodmanClient,
    RegistryClient,
    build_bundle_image,
    local_image_id,
    push_everywhere,
    require_same_image,
    set_modes,
    unpack_bundle_image,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import bundle_files, verify_deliverable
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import sha256_file

RELEASE_MANIFEST = "release.json"
RELEASE_FORMAT = 1
ARCHIVES = {"bundle": "bundle.oci.tar", "server_image": "server-image.oci.tar"}
TAGGED_HINT = "Give the tagged reference model_deployment_image names, e.g. localhost/edgeml-model-server:1.2."
REEXPORT_HINT = "Export the release again where it was made (playbooks/export_release.yml) and carry it over again."


# --- what a release is ----------------------------------------------------------------------


def split_image_reference(reference: str) -> tuple[str, str]:
    """(repository without its registry, tag) of REFERENCE, e.g.
    127.0.0.1:5000/edgeml-model-server:1.2 -> ('edgeml-model-server', '1.2')."""
    if "@" in reference:
        raise EdgeMLError(
            f"server_image {reference!r} is pinned by digest; a release needs a tag to push it under at the site.",
            TAGGED_HINT,
        )
    name, _colon, tag = reference.rpartition(":")
    if not name or "/" in tag:
        raise EdgeMLError(
            f"server_image {reference!r} has no tag.",
            TAGGED_HINT,
        )
    first, _slash, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        name = rest  # a registry host, not part of the repository
    return name, tag


def read_release(src: str) -> dict[str, t.Any]:
    """release.json of the release directory SRC, checked for what import needs."""
    path = os.path.join(src, RELEASE_MANIFEST)
    try:
        with open(path, encoding="utf-8") as handle:
            release = json.load(handle)
    except FileNotFoundError:
        raise EdgeMLError(f"No release at {src}: {RELEASE_MANIFEST} is missing.", REEXPORT_HINT) from None
    except (OSError, ValueError) as exc:
        raise EdgeMLError(f"{path} cannot be read as a release: {exc}.", REEXPORT_HINT) from None
    found_format = release.get("format") if isinstance(release, dict) else None
    if found_format != RELEASE_FORMAT:
        raise EdgeMLError(f"{path} is not a release of format {RELEASE_FORMAT} ({found_format!r}).", REEXPORT_HINT)
    try:
        validate_name(str(release["name"]))
        validate_version(str(release["version"]))
        for part in ARCHIVES:
            entry = release[part]
            for key in ("archive", "sha256", "image_id", "repository", "tag"):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise KeyError(f"{part}.{key}")
            if os.path.basename(entry["archive"]) != entry["archive"]:
                raise KeyError(f"{part}.archive")
        if not isinstance(release["bundle"].get("files"), dict) or not release["bundle"]["files"]:
            raise KeyError("bundle.files")
    except KeyError as exc:
        raise EdgeMLError(f"{path} lacks or mangles {exc.args[0]}.", REEXPORT_HINT) from None
    return release


# --- export ---------------------------------------------------------------------------------


def export_release(
    podman: PodmanClient,
    *,
    path: str,
    files: dict[str, str],
    name: str,
    version: str,
    repository: str,
    server_image: str,
    dest: str,
    check_mode: bool,
) -> dict[str, t.Any]:
    """Write the release of the verified bundle PATH (FILES) and SERVER_IMAGE (in this
    host's podman storage) into DEST, or find it there already."""
    validate_name(name)
    validate_version(version)
    server_repository, server_tag = split_image_reference(server_image)
    server_id = local_image_id(podman, server_image)
    if server_id is None:
        raise EdgeMLError(
            f"The server image {server_image} is not in this host's podman storage.",
            "Build it (playbooks/build_server_image.yml) or pull it here first.",
        )
    tag = f"localhost/{repository}:{version}"
    existed = podman.run("image", "exists", tag, check=False)[0] == 0
    try:
        bundle_id = build_bundle_image(podman, path, files, tag)
        wanted = {
            "format": RELEASE_FORMAT,
            "name": name,
            "version": version,
            "bundle": {
                "archive": ARCHIVES["bundle"],
                "repository": repository,
                "tag": version,
                "image_id": bundle_id,
                "files": dict(sorted(files.items())),
            },
            "server_image": {
                "archive": ARCHIVES["server_image"],
                "repository": server_repository,
                "tag": server_tag,
                "image_id": server_id,
            },
        }
        found = _exported(dest, wanted)
        if found is not None:
            return {"changed": False, "dest": dest, "release": found}
        if check_mode:
            return {"changed": True, "dest": dest, "release": wanted}
        parent = os.path.dirname(os.path.abspath(dest))
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".release-", dir=parent)
        try:
            for part, reference in (("bundle", tag), ("server_image", server_image)):
                archive = os.path.join(staging, ARCHIVES[part])
                podman.run("save", "--quiet", "--format", "oci-archive", "-o", archive, reference)
                wanted[part]["sha256"] = sha256_file(archive)
                os.chmod(archive, 0o644)
            with open(os.path.join(staging, RELEASE_MANIFEST), "w", encoding="utf-8") as handle:
                json.dump(wanted, handle, indent=2, sort_keys=True)
                handle.write("\n")
            os.chmod(staging, 0o755)
            os.rename(staging, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return {"changed": True, "dest": dest, "release": wanted}
    finally:
        if check_mode and not existed:
            podman.run("rmi", tag, check=False)


def _exported(dest: str, wanted: dict[str, t.Any]) -> dict[str, t.Any] | None:
    """The release in DEST when it is WANTED with intact archives; None when DEST is not
    there; refused when DEST holds something else (a release is never rewritten)."""
    if not os.path.exists(dest):
        return None
    try:
        release = read_release(dest)
    except EdgeMLError as exc:
        raise EdgeMLError(
            f"{dest} exists and is not a release this module wrote: {exc.msg}",
            "Give dest a directory that does not exist yet (one per release), or remove this one.",
        ) from None
    same = all(
        {k: v for k, v in release[part].items() if k != "sha256"} == wanted[part] for part in ARCHIVES
    ) and (release["name"], release["version"]) == (wanted["name"], wanted["version"])
    if not same:
        raise EdgeMLError(
            f"{dest} holds another release of {release['name']} {release['version']} "
            f"(bundle image {release['bundle']['image_id']}, server image {release['server_image']['image_id']}).",
            "A release is never rewritten: export into a new directory, or remove this one first.",
        )
    _check_archives(dest, release)
    return release


def _check_archives(src: str, release: dict[str, t.Any]) -> None:
    for part in ARCHIVES:
        archive = os.path.join(src, release[part]["archive"])
        if not os.path.isfile(archive):
            raise EdgeMLError(f"The release at {src} lacks {release[part]['archive']}.", REEXPORT_HINT)
        actual = sha256_file(archive)
        if actual != release[part]["sha256"]:
            raise EdgeMLError(
                f"{archive} is corrupt or was replaced: its sha256 is {actual}, {RELEASE_MANIFEST} says "
                f"{release[part]['sha256']}. Nothing was loaded or pushed.",
                REEXPORT_HINT,
            )


# --- import ---------------------------------------------------------------------------------


def import_release(
    podman: PodmanClient,
    registry_client: RegistryClient,
    *,
    src: str,
    registry: str,
    bundle_root: str | None,
    trust: dict[str, t.Any],
    check_mode: bool,
) -> dict[str, t.Any]:
    """Check the release in SRC, then make REGISTRY hold both images under their tags and
    BUNDLE_ROOT/NAME/VERSION (when given) hold the bundle. Nothing is pushed or written
    before every check passed. TRUST: policy, trusted_keys, trusted_certificates."""
    release = read_release(src)
    _check_archives(src, release)
    loaded: list[str] = []
    try:
        loaded = _load_images(podman, src, release)
        with tempfile.TemporaryDirectory(prefix="edgeml-release-") as work:
            bundle = os.path.join(work, "bundle")
            os.mkdir(bundle)
            verdict = _check_bundle(podman, bundle, src=src, registry=registry, release=release, trust=trust)
            # The registry is read before anything is written or pushed: a tag there holding
            # other content stops the import with nothing changed.
            holding = {
                part: registry_client.manifest(registry, release[part]["repository"], release[part]["tag"])
                for part in ARCHIVES
            }
            for part, found in holding.items():
                if found is not None:
                    require_same_image(registry, _reference(release, part), found, release[part]["image_id"])
            placed = _place_bundle(bundle, bundle_root, release, check_mode)
        pushed = [part for part, found in holding.items() if found is None]
        if not check_mode:
            for part in pushed:
                holding[part] = _push(podman, registry_client, registry, release, part)
    finally:
        if check_mode:
            for image in loaded:
                podman.run("rmi", "--force", image, check=False)
    return {
        "changed": bool(pushed) or placed["changed"],
        "name": release["name"],
        "version": release["version"],
        "registry": registry,
        "pushed": pushed,
        "images": {
            part: {
                "repository": release[part]["repository"],
                "tag": release[part]["tag"],
                "image_id": release[part]["image_id"],
                "digest": holding[part][0] if holding[part] is not None else None,
            }
            for part in ARCHIVES
        },
        "bundle_dir": placed["path"],
        "sha256": verdict["sha256"],
        "signature": verdict["signature"],
    }


def _reference(release: dict[str, t.Any], part: str) -> str:
    return f"{release[part]['repository']}:{release[part]['tag']}"


def _load_images(podman: PodmanClient, src: str, release: dict[str, t.Any]) -> list[str]:
    """Load each archive whose image is not here yet; return the IDs loaded. Images are
    used by ID, never by tag: the ID is the digest of the image's config, which names the
    digest of every layer."""
    loaded = []
    for part in ARCHIVES:
        entry = release[part]
        if local_image_id(podman, entry["image_id"]) is None:
            podman.run("load", "--quiet", "-i", os.path.join(src, entry["archive"]))
            loaded.append(entry["image_id"])
        if local_image_id(podman, entry["image_id"]) is None:
            raise EdgeMLError(
                f"{entry['archive']} does not hold the image {entry['image_id']} that {RELEASE_MANIFEST} names. "
                "Nothing was pushed.",
                REEXPORT_HINT,
            )
    return loaded


def _check_bundle(
    podman: PodmanClient, into: str, *, src: str, registry: str, release: dict[str, t.Any], trust: dict[str, t.Any]
) -> dict[str, t.Any]:
    """Unpack the bundle image into INTO and check it: the files release.json lists, then
    the bundle's signature against the site's own trust."""
    unpack_bundle_image(podman, release["bundle"]["image_id"], into)
    set_modes(into)
    changed = file_differences(release["bundle"]["files"], bundle_files(into, {}))
    if changed:
        raise EdgeMLError(
            f"The bundle image in {src} does not hold the files {RELEASE_MANIFEST} lists: "
            f"{', '.join(changed)}. Nothing was pushed.",
            REEXPORT_HINT,
            changes=changed,
        )
    try:
        return verify_deliverable(
            into,
            name=str(release["name"]),
            version=str(release["version"]),
            policy=trust["policy"],
            trusted_keys=trust["trusted_keys"],
            trusted_certificates=trust["trusted_certificates"],
        )
    except EdgeMLError as exc:
        raise EdgeMLError(
            f"The release in {src} is refused: {exc.msg} Nothing was pushed to {registry}.",
            exc.hint,
            **exc.details,
        ) from None


def _push(
    podman: PodmanClient, registry_client: RegistryClient, registry: str, release: dict[str, t.Any], part: str
) -> tuple[str, dict[str, t.Any]]:
    entry = release[part]
    if part == "bundle":  # as registry delivery pushes it (model_bundle_push): its layer uncompressed
        push_everywhere(podman, registry_client, entry["image_id"], [(registry, entry["repository"], entry["tag"])])
    else:
        podman.run(
            "push",
            "--quiet",
            f"--tls-verify={'true' if registry_client.tls_verify else 'false'}",
            entry["image_id"].removeprefix("sha256:"),  # the image, by its ID: never a tag that may have moved
            f"docker://{registry}/{_reference(release, part)}",
        )
    found = registry_client.manifest(registry, entry["repository"], entry["tag"])
    if found is None:
        raise EdgeMLError(
            f"{registry}/{_reference(release, part)} is not there right after the push.",
            "Check the registry's storage and logs.",
        )
    require_same_image(registry, _reference(release, part), found, entry["image_id"])
    return found


def _place_bundle(
    unpacked: str, bundle_root: str | None, release: dict[str, t.Any], check_mode: bool
) -> dict[str, t.Any]:
    """Copy the checked bundle to BUNDLE_ROOT/NAME/VERSION for the site's control node,
    unless it holds exactly it already; another build there is refused (a version is
    immutable, and the site's deployments would verify that one)."""
    if not bundle_root:
        return {"path": None, "changed": False}
    name, version = str(release["name"]), str(release["version"])
    dest = os.path.join(bundle_root, name, version)
    if os.path.isdir(dest):
        differences = file_differences(release["bundle"]["files"], bundle_files(dest, {}))
        if not differences:
            return {"path": dest, "changed": False}
        raise EdgeMLError(
            f"{dest} holds another build of {name} {version} than the release: {', '.join(differences)}. "
            "Nothing was pushed.",
            "A version is never rewritten: find out where that bundle came from, remove it, and import again.",
            changes=differences,
        )
    if check_mode:
        return {"path": dest, "changed": True}
    parent = os.path.dirname(dest)
    os.makedirs(parent, mode=0o755, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".import-", dir=parent)
    try:
        shutil.copytree(unpacked, os.path.join(staging, "bundle"))
        os.rename(os.path.join(staging, "bundle"), dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"path": dest, "changed": True}


# --- runners --------------------------------------------------------------------------------


def run_model_release_export(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    if not params["files"]:
        raise EdgeMLError("files is empty: nothing to check the bundle against.", "Pass model_bundle_verify's files.")
    return export_release(
        PodmanClient(wrapper.module),
        path=params["path"],
        files=params["files"],
        name=params["name"],
        version=params["version"],
        repository=params["repository"] or f"edgeml-bundles/{params['name']}",
        server_image=params["server_image"],
        dest=params["dest"],
        check_mode=wrapper.check_mode,
    )


def run_model_release_import(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    return import_release(
        PodmanClient(wrapper.module),
        RegistryClient(params["tls_verify"]),
        src=params["src"],
        registry=params["registry"],
        bundle_root=params["bundle_root"],
        trust={
            "policy": params["signature_policy"],
            "trusted_keys": params["trusted_keys"],
            "trusted_certificates": params["trusted_certificates"],
        },
        check_mode=wrapper.check_mode,
    )
