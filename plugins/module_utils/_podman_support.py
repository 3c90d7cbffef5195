# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Which podman can run the model server's units (private to the collection).

The slot units (roles/model_deployment/templates/model-server.container.j2, and the OS
image's baked unit) are quadlet ``.container`` files with ``Notify=healthy`` and the
``HealthStartup*`` keys. Read from podman's sources (pkg/systemd/quadlet/quadlet.go at each
tag): quadlet came in 4.4; the ``Health*`` keys in 4.5, and before that quadlet writes no
unit at all for a file with a key it does not know (``systemctl`` then finds no service);
``Notify=healthy`` in 5.0, and before that 4.5-4.9 read ``healthy`` as false without a word
and start the service at once instead of when its health check passed. So a host needs
podman 5.0 or later, and is told so before anything is written.
"""

from __future__ import annotations

import re

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

# `podman version` with only the client's version ("5.4.2", "5.0.0-rc1", "4.9.4-rhel").
PODMAN_VERSION_ARGS = ("version", "--format", "{{.Client.Version}}")
MIN_PODMAN = (5, 0)


def parse_podman_version(text: str) -> tuple[int, int] | None:
    """(major, minor) of what ``podman version --format {{.Client.Version}}`` printed, or None."""
    match = re.match(r"\s*v?(\d+)\.(\d+)", text or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def require_unit_podman(text: str, error: type[EdgeMLError] = EdgeMLError) -> None:
    """Raise ERROR unless TEXT (podman's client version) can run the model server's units."""
    version = parse_podman_version(text)
    if version is not None and version >= MIN_PODMAN:
        return
    if version is None:
        found, why = f"a podman whose version reads {text.strip()!r}", "which cannot be told"
    elif version < (4, 5):
        found, why = f"podman {text.strip()}", "whose quadlet writes no unit from a file with the Health* keys"
    else:
        found, why = f"podman {text.strip()}", "which starts the service before its health check passed"
    raise error(
        f"This host has {found}, {why}; the model server's units need podman "
        f"{'.'.join(map(str, MIN_PODMAN))} or later (quadlet with Notify=healthy and a startup health check). "
        "Nothing on the host was changed.",
        "Update podman on the host (RHEL 9.5 or later, RHEL 10, Debian 13, Fedora 40 or later), or serve this "
        "host's models on MicroShift (edgeml_serving_target: kubernetes, docs/microshift.md).",
    )
