# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""A host made ready for a version before anything that serves changes (private): what
``model_deployment``'s stage did in several tasks, in one call on the host (``model_stage``).

At fleet scale every task is a round trip per host per batch: the stage used to run five
(make the trust directory, list it, make the bundle directory, unpack the bundle, check the
server image), each paying Ansible's and SSH's cost for every host. One module call does the
same checks in the same order and stops at the first that fails:

1. the host trusts a bundle signer (its trust directory holds a key or CA certificate) when
   signatures are required: else its model server would refuse every version;
2. the model's bundle directory (BUNDLE_ROOT/NAME) root's and 0755, whatever the umask: the
   model server's unit mounts it and reads it as an unprivileged user;
3. the bundle, when it comes from the registry, unpacked by digest (``_bundle_registry.pull_bundle``);
4. the server image, pinned by digest, in the host's podman storage (pulled when missing).

Client: podman through ``run_command`` and the registry's HTTP API (``_bundle_registry``).
Service: ``trusted_signers`` and ``ensure_image``. Runner: ``run_model_stage``.
"""

from __future__ import annotations

import fnmatch
import os
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_registry import (
    DIR_MODE,
    PodmanClient,
    RegistryClient,
    pull_bundle,
    split_pinned_ref,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule

# What the model server reads as a trusted signer: public keys and CA certificates (PEM).
SIGNER_PATTERNS = ("*.pub", "*.pem", "*.crt")
# Which step a failure stopped at, returned as ``failed_at`` (the role refuses the bundle only
# for STEP_BUNDLE; the others are the host's own failures).
STEP_TRUST, STEP_MODEL_DIR, STEP_BUNDLE, STEP_IMAGE = "trust", "model_dir", "bundle", "image"


# --- service --------------------------------------------------------------------------------


def host_error(step: str, what: str, error: OSError) -> EdgeMLError:
    return EdgeMLError(
        f"{what} failed on this host: {error}. No bundle or image was delivered by this step.",
        "Fix the path or its permissions on the host (the role runs as root), then run the rollout again.",
        failed_at=step,
    )


def make_root_dir(path: str) -> None:
    """Make PATH (and its parents) a directory of root's with mode 0755, whatever the umask."""
    os.makedirs(path, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)
    os.chown(path, 0, 0)


def trusted_signers(trust_dir: str, *, check_mode: bool) -> tuple[list[str], bool]:
    """(the signer files in TRUST_DIR, whether the directory was (or would be) created). The
    directory is made when missing (root's, 0755): the model server's unit mounts it."""
    try:
        if not os.path.isdir(trust_dir):
            if not check_mode:
                make_root_dir(trust_dir)
            return [], True
        # A symlinked key counts (the server follows it); a dangling link or a directory does not.
        names = [
            name
            for name in os.listdir(trust_dir)
            if any(fnmatch.fnmatch(name, pattern) for pattern in SIGNER_PATTERNS)
            and os.path.isfile(os.path.join(trust_dir, name))
        ]
    except OSError as error:
        raise host_error(STEP_TRUST, f"Reading the trust directory {trust_dir}", error) from None
    return sorted(names), False


def ensure_model_dir(path: str, *, check_mode: bool) -> bool:
    """Make PATH (BUNDLE_ROOT/NAME) a directory owned by root with mode 0755, whatever the
    umask: the model server's unit mounts it and reads it as its own, unprivileged user.
    True when it was (or would be) made or changed."""
    try:
        if not os.path.isdir(path):
            if not check_mode:
                make_root_dir(path)
            return True
        held = os.stat(path)
        if (held.st_mode & 0o7777, held.st_uid, held.st_gid) == (DIR_MODE, 0, 0):
            return False
        if not check_mode:
            os.chmod(path, DIR_MODE)
            os.chown(path, 0, 0)
        return True
    except OSError as error:
        raise host_error(STEP_MODEL_DIR, f"Making the model's bundle directory {path}", error) from None


def require_signer(signers: list[str], trust_dir: str, policy: str) -> None:
    if policy == "required" and not signers:
        raise EdgeMLError(
            f"This host trusts no bundle signer ({trust_dir} holds no key or CA certificate: "
            f"{', '.join(SIGNER_PATTERNS)}) and the signature policy is required, so its model server would "
            "refuse every version. No bundle or image was delivered to it.",
            "Install the trusted keys with edgeml.fleet.edge_host (edgeml_trusted_keys, playbooks/provision.yml), "
            "or set edgeml_signature_policy to optional for this host's group.",
            failed_at=STEP_TRUST,
        )


def ensure_image(podman: PodmanClient, ref: str, *, tls_verify: bool, check_mode: bool) -> bool:
    """Make the image REF (pinned by digest) be in podman's storage; True when it was (or
    would be) pulled. A pull by digest is checked by podman against that digest."""
    try:
        if podman.run("image", "exists", ref, check=False)[0] == 0:
            return False
        if not check_mode:
            podman.run("pull", "--quiet", f"--tls-verify={'true' if tls_verify else 'false'}", ref)
    except EdgeMLError as error:
        raise EdgeMLError(
            f"The server image {ref} could not be pulled: {error.msg} The bundle is in place; nothing that "
            "serves was changed.",
            "Check that the host reaches its registry (edgeml_registry) and that the image is there, then run "
            "the rollout again.",
            failed_at=STEP_IMAGE,
        ) from None
    return True


# --- runner ---------------------------------------------------------------------------------


def run_model_stage(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    params = wrapper.params
    bundle = params["bundle"]
    # Arguments first: a ref not pinned by digest changes nothing, not even the trust directory.
    if bundle is not None:
        split_pinned_ref(bundle["ref"])
        if not bundle["files"]:
            raise EdgeMLError("bundle.files is empty: nothing to check the unpacked bundle against.",
                              "Pass model_bundle_verify's files.")
    if params["image"] is not None:
        try:
            split_pinned_ref(params["image"])
        except EdgeMLError:
            raise EdgeMLError(
                f"image {params['image']!r} is not pinned by digest (REGISTRY/REPOSITORY@sha256:DIGEST).",
                "Pass the server image by the digest its registry holds (the role looks it up): a tag can be "
                "moved to other content.",
            ) from None

    signers, trust_dir_created = trusted_signers(params["trust_dir"], check_mode=wrapper.check_mode)
    require_signer(signers, params["trust_dir"], params["signature_policy"])
    result: dict[str, t.Any] = {"trusted_signers": signers, "bundle": {"changed": False}, "image": {"changed": False}}
    model_dir_changed = False
    if params["model_dir"] is not None:
        model_dir_changed = ensure_model_dir(params["model_dir"], check_mode=wrapper.check_mode)

    if bundle is not None:
        try:
            result["bundle"] = pull_bundle(
                RegistryClient(params["tls_verify"]),
                ref=bundle["ref"],
                dest=bundle["dest"],
                files=bundle["files"],
                check_mode=wrapper.check_mode,
            )
        except EdgeMLError as error:
            error.details.setdefault("failed_at", STEP_BUNDLE)
            raise
    if params["image"] is not None:
        podman = PodmanClient(wrapper.module)
        pulled = ensure_image(podman, params["image"], tls_verify=params["tls_verify"], check_mode=wrapper.check_mode)
        result["image"] = {"changed": pulled, "ref": params["image"]}
    result["changed"] = any(
        (trust_dir_created, model_dir_changed, result["bundle"]["changed"], result["image"]["changed"])
    )
    return result
