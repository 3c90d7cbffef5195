# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Bundle filters: what it takes to make a host's copy of a bundle exactly the bundle the
controller verified (roles/model_deployment, delivery over SSH)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# How the role writes a bundle on a host (roles/model_deployment/tasks/handle_bundle.yml).
FILE_MODE = "0644"
DIRECTORY_MODE = "0755"
OWNER = "root"


def _relative(entry: Mapping, host_dir: str) -> str:
    return os.path.relpath(entry["path"], host_dir).replace(os.sep, "/")


def _as_copied(entry: Mapping) -> bool:
    mode = DIRECTORY_MODE if entry.get("isdir") else FILE_MODE
    return entry.get("mode") == mode and entry.get("pw_name") == OWNER and entry.get("gr_name") == OWNER


def bundle_copy_plan(on_host: list, host_dir: str, verified: Mapping) -> dict:
    """Compare the host's copy (ON_HOST: ansible.builtin.find's files under HOST_DIR, with
    sha256 checksums, owners and modes) with VERIFIED (relative path -> sha256, from
    model_bundle_verify). Returns {'remove': absolute paths of what the copy holds beyond the
    bundle (a stale signature of another build, a file left by hand; outermost only, a
    directory takes what is under it), 'copy_needed': whether a file is missing, differs, or is not
    as the role writes it}. copy never deletes: without 'remove', a stray file would stay
    beside the delivered bundle, and the model server refuses a signed bundle with a file
    added."""
    if not isinstance(on_host, list) or not isinstance(verified, Mapping):
        raise AnsibleFilterError("bundle_copy_plan expects find's files (a list) and the verified files (a dict)")
    paths = [name.split("/") for name in verified]
    wanted_dirs = {"/".join(parts[:end]) for parts in paths for end in range(1, len(parts))}
    beyond, kept = [], {}
    for entry in sorted(on_host, key=lambda found: found["path"]):
        relative = _relative(entry, host_dir)
        if entry.get("isdir"):
            wanted = relative in wanted_dirs
        else:
            wanted = relative in verified and entry.get("isreg", False)
        if not wanted:
            beyond.append(relative)
        else:
            kept[relative] = entry
    outermost = [name for name in beyond if not any(name.startswith(f"{outer}/") for outer in beyond)]
    held = {relative: entry.get("checksum") for relative, entry in kept.items() if not entry.get("isdir")}
    return {
        "remove": [os.path.join(host_dir, name) for name in outermost],
        "copy_needed": held != dict(verified) or not all(_as_copied(entry) for entry in kept.values()),
    }


class FilterModule:
    def filters(self):
        return {"bundle_copy_plan": bundle_copy_plan}
