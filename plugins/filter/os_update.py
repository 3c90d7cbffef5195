# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the os_update and os_image roles: image-based OS update commands and their output.

Kept here, not in Jinja, so that the command lines a host runs are unit-tested
(tests/unit/roles/os_update/) on a machine with neither bootc nor rpm-ostree.
"""

from __future__ import annotations

import json
from typing import Any

from ansible.errors import AnsibleFilterError

TOOLS = ("bootc", "rpm-ostree")
ACTIONS = ("switch", "upgrade", "rollback", "status")
TRANSPORTS = ("registry", "oci", "oci-archive", "containers-storage", "dir")


def os_update_command(
    tool: str,
    action: str,
    image: str = "",
    *,
    transport: str = "registry",
    enforce_signature_policy: bool = False,
    ostree_remote: str = "",
    ostree_ref: str = "",
    check: bool = False,
) -> list[str]:
    """The argv that stages (or checks, or reads) an OS update with bootc or rpm-ostree."""
    if tool not in TOOLS:
        raise AnsibleFilterError(f"os_update: unknown tool {tool!r}, expected one of {', '.join(TOOLS)}")
    if action not in ACTIONS:
        raise AnsibleFilterError(f"os_update: unknown action {action!r}, expected one of {', '.join(ACTIONS)}")
    if transport not in TRANSPORTS:
        raise AnsibleFilterError(f"os_update: unknown transport {transport!r}, expected one of {', '.join(TRANSPORTS)}")
    if action == "switch" and not image and not (tool == "rpm-ostree" and ostree_ref):
        raise AnsibleFilterError("os_update: switch needs os_update_image (or, for rpm-ostree, os_update_ostree_ref)")
    if image and image.startswith("-"):
        raise AnsibleFilterError(f"os_update: image {image!r} must not start with '-'")

    if tool == "bootc":
        return _bootc_command(action, image, transport, enforce_signature_policy, check)
    return _rpm_ostree_command(
        action, image, transport, check, signed=enforce_signature_policy, remote=ostree_remote, ref=ostree_ref
    )


def _bootc_command(action: str, image: str, transport: str, signed: bool, check: bool) -> list[str]:
    fixed = {"status": ["bootc", "status", "--json"], "rollback": ["bootc", "rollback"]}
    if action in fixed:
        return fixed[action]
    if action == "upgrade":
        return ["bootc", "upgrade", *(["--check"] if check else [])]
    argv = ["bootc", "switch"]
    if transport != "registry":
        argv += ["--transport", transport]
    if signed:
        argv.append("--enforce-container-sigpolicy")
    return [*argv, image]


def _rpm_ostree_command(
    action: str, image: str, transport: str, check: bool, *, signed: bool, remote: str, ref: str
) -> list[str]:
    fixed = {"status": ["rpm-ostree", "status", "--json"], "rollback": ["rpm-ostree", "rollback"]}
    if action in fixed:
        return fixed[action]
    if action == "upgrade":
        # 77 = nothing new: lets the role report "not changed" without parsing text.
        return ["rpm-ostree", "upgrade", "--check" if check else "--unchanged-exit-77"]
    return ["rpm-ostree", "rebase", _rpm_ostree_target(image, transport, signed, remote, ref)]


def _rpm_ostree_target(image: str, transport: str, signed: bool, remote: str, ref: str) -> str:
    if ref and not image:
        return f"{remote}:{ref}" if remote else ref
    if transport != "registry":
        # ostree-unverified-image:TRANSPORT:REFERENCE, e.g. oci-archive:/path.tar
        prefix = "ostree-image-signed" if signed else "ostree-unverified-image"
        return f"{prefix}:{transport}:{image}"
    return f"ostree-image-signed:docker://{image}" if signed else f"ostree-unverified-registry:{image}"


def _bootc_entry(entry: dict | None) -> dict | None:
    if not entry:
        return None
    image = entry.get("image") or {}
    ref = (image.get("image") or {}).get("image", "")
    digest = image.get("imageDigest", "")
    return {
        "image": ref,
        "digest": digest,
        "version": image.get("version") or "",
        "id": digest or (entry.get("ostree") or {}).get("checksum", ""),
    }


def _rpm_ostree_entry(entry: dict | None) -> dict | None:
    if not entry:
        return None
    ref = entry.get("container-image-reference") or entry.get("origin") or ""
    return {
        "image": ref,
        "digest": entry.get("container-image-reference-digest", ""),
        "version": entry.get("version") or "",
        "id": entry.get("checksum", ""),
    }


def os_update_status(stdout: str | dict, tool: str) -> dict[str, Any]:
    """Booted, staged and rollback deployments from `bootc status --json` or `rpm-ostree status --json`."""
    try:
        data = json.loads(stdout) if isinstance(stdout, str) else stdout
    except ValueError as exc:
        raise AnsibleFilterError(f"os_update: {tool} status is not JSON: {exc}") from exc
    if tool == "bootc":
        status = (data or {}).get("status") or {}
        return {
            "tool": "bootc",
            "booted": _bootc_entry(status.get("booted")),
            "staged": _bootc_entry(status.get("staged")),
            "rollback": _bootc_entry(status.get("rollback")),
        }
    if tool == "rpm-ostree":
        deployments = (data or {}).get("deployments") or []
        booted = next((d for d in deployments if d.get("booted")), None)
        staged = next((d for d in deployments if d.get("staged")), None)
        others = [d for d in deployments if d is not booted and d is not staged]
        return {
            "tool": "rpm-ostree",
            "booted": _rpm_ostree_entry(booted),
            "staged": _rpm_ostree_entry(staged),
            "rollback": _rpm_ostree_entry(others[0] if others else None),
        }
    raise AnsibleFilterError(f"os_update: unknown tool {tool!r}")


def os_update_outcome(before: dict, staged: dict, after: dict) -> dict[str, Any]:
    """What happened: updated, unchanged, or rolled back (greenboot) - and why, in words."""
    booted_before = (before or {}).get("booted") or {}
    target = (staged or {}).get("staged") or {}
    booted_after = (after or {}).get("booted") or {}
    if not target:
        return {"result": "unchanged", "rolled_back": False, "reason": "nothing new was staged"}
    if booted_after.get("id") and booted_after.get("id") == target.get("id"):
        return {"result": "updated", "rolled_back": False, "reason": ""}
    if booted_after.get("id") == booted_before.get("id"):
        return {
            "result": "rolled_back",
            "rolled_back": True,
            "reason": (
                f"the host booted {target.get('image') or target.get('id')} but came back on "
                f"{booted_before.get('image') or booted_before.get('id')}: greenboot's required checks failed "
                "and it rolled back"
            ),
        }
    return {
        "result": "unexpected",
        "rolled_back": False,
        "reason": (
            f"the host booted {booted_after.get('image') or booted_after.get('id')}, "
            "neither the old nor the staged image"
        ),
    }


def composer_body(stdout: str) -> dict[str, Any]:
    """The body of a `composer-cli --json` answer (a list of API calls in composer-cli 35+, a dict before)."""
    try:
        data = json.loads(stdout)
    except ValueError as exc:
        raise AnsibleFilterError(f"composer-cli did not answer JSON: {exc}: {stdout[:200]!r}") from exc
    if isinstance(data, list):
        if not data:
            raise AnsibleFilterError("composer-cli answered an empty list")
        data = data[-1]
        if isinstance(data, dict) and "body" in data:
            return data["body"]
    if not isinstance(data, dict):
        raise AnsibleFilterError(f"composer-cli answered {type(data).__name__}, not an object")
    return data


class FilterModule:
    """Image-based OS update filters."""

    def filters(self):
        return {
            "os_update_command": os_update_command,
            "os_update_status": os_update_status,
            "os_update_outcome": os_update_outcome,
            "composer_body": composer_body,
        }
