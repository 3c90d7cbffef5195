# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
from __future__ import annotations

DOCUMENTATION = r"""
name: context_digest
author: edgeml.fleet maintainers (@edgeml)
version_added: 0.1.0
short_description: Digest of a build context directory on the controller
description:
  - Returns one SHA-256 digest per directory over the relative names, modes and contents
    of every file below it (sorted, symlinks not followed).
  - Roles label the images they build with it, so that an image is rebuilt exactly when
    what it is built from changed, and a second run changes nothing.
options:
  _terms:
    description: Directories to digest.
    type: list
    elements: path
    required: true
  exclude:
    description: File or directory names to leave out wherever they appear (caches, build output).
    type: list
    elements: str
    default: [__pycache__, .pytest_cache, .ruff_cache]
"""

EXAMPLES = r"""
- name: Digest the model server's build context
  ansible.builtin.set_fact:
    context_sha: "{{ lookup('edgeml.fleet.context_digest', '/srv/build/model-server') }}"
"""

RETURN = r"""
_raw:
  description: One lowercase hex SHA-256 digest per directory.
  type: list
  elements: str
"""

import hashlib
import os

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase


def tree_digest(root: str, exclude: frozenset[str] = frozenset()) -> str:
    """SHA-256 over (relative path, executable bit, content) of every file under root."""
    if not os.path.isdir(root):
        raise AnsibleLookupError(f"context_digest: {root} is not a directory")
    digest = hashlib.sha256()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(name for name in subdirs if name not in exclude)
        for name in sorted(files):
            if name in exclude:
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            digest.update(relative.encode() + b"\0")
            digest.update(b"x" if os.access(path, os.X_OK) else b"-")
            with open(path, "rb") as handle:
                for chunk in iter(lambda handle=handle: handle.read(1 << 20), b""):
                    digest.update(chunk)
            digest.update(b"\0")
    return digest.hexdigest()


class LookupModule(LookupBase):
    """Digest build contexts."""

    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        exclude = frozenset(self.get_option("exclude"))
        return [tree_digest(term, exclude) for term in terms]
