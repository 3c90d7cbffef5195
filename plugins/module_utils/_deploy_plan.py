# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""What model_deployment works with (private): the request, where things are on the host,
the target version, what runs, the plan and the outcome. Data and names only; the state
store, the verifier and the strategies act on them.
"""

from __future__ import annotations

import datetime
import os
import re
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import ServerClient
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import GateResult, GateSettings

SLOTS = ("blue", "green")
_IMAGE_LINE = re.compile(r"^(\s*Image\s*=\s*)(.*?)\s*$", re.MULTILINE)
_CONTAINER_NAME = re.compile(r"^\s*ContainerName\s*=\s*(\S+)\s*$", re.MULTILINE)
_CONTAINER_SECTION = re.compile(r"^\[Container\]\s*$", re.MULTILINE)


class Refused(EdgeMLError):
    """A check before anything changed failed: the host is untouched."""


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def other_slot(slot: str) -> str:
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


def unit_image(unit: str) -> str | None:
    match = _IMAGE_LINE.search(unit)
    return match.group(2) if match else None


def with_image(unit: str, image: str) -> str:
    return _IMAGE_LINE.sub(lambda m: m.group(1) + image, unit, count=1)


def staged_unit(unit: str, version: str) -> str:
    """UNIT as a new slot runs it while it is judged: the public port held closed until the
    deployer opens it, and the version pinned (the pointer file still names the version
    that serves, which the other slot restarts onto)."""
    lines = f"Environment=EDGEML_PUBLIC_HOLD=1\nEnvironment=EDGEML_VERSION={version}\n"
    return _CONTAINER_SECTION.sub(lambda m: m.group(0) + "\n" + lines.rstrip("\n"), unit, count=1)


def normalize_id(image_id: str) -> str:
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


def describe(exc: BaseException) -> str:
    """One line for any exception on the deploy path (not only EdgeMLError)."""
    return str(exc) if isinstance(exc, EdgeMLError) else f"{type(exc).__name__}: {exc}"


@dataclass
class SlotSpec:
    admin_port: int
    unit: str


@dataclass
class DeployRequest:
    name: str
    version: str | None
    rollback: str | None
    bundle_root: str
    bundle_sha256: str | None
    image: str
    image_digest: str | None
    port: int
    slots: dict[str, SlotSpec]
    unit_dir: str
    state_dir: str
    history_size: int
    gates: GateSettings
    log_lines: int = 40
    lock_dir: str = "/run/edgeml"
    lock_wait: float = 0.0
    # Seconds the deployment may take (the module's deadline option) and when, on the
    # monotonic clock, they end: no switch and no commit after that.
    deadline_seconds: int | None = None
    deadline_at: float | None = None
    # Check mode only: what the check run predicted to deliver but did not (not verified).
    pending: frozenset[str] = frozenset()


class HostLayout:
    """Where one model's pieces are on the host: units, services, pointer, state, clients."""

    def __init__(self, req: DeployRequest) -> None:
        self.req = req
        self.name = req.name

    def unit_path(self, slot: str) -> str:
        return os.path.join(self.req.unit_dir, f"edgeml-{self.name}-{slot}.container")

    def service(self, slot: str) -> str:
        return f"edgeml-{self.name}-{slot}.service"

    @property
    def pointer_path(self) -> str:
        return os.path.join(self.req.bundle_root, self.name, "current")

    @property
    def state_path(self) -> str:
        return os.path.join(self.req.state_dir, f"{self.name}.json")

    def client(self, slot: str, admin_port: int | None = None) -> ServerClient:
        return ServerClient(admin_port or self.req.slots[slot].admin_port, self.name)

    def running_port(self, state: dict[str, t.Any], slot: str) -> int:
        """The admin port a RUNNING slot listens on: the recorded one (the units given now
        may move it), else the one given now."""
        serving = state.get("serving") or {}
        if serving.get("slot") == slot and serving.get("admin_port"):
            return int(serving["admin_port"])
        return self.req.slots[slot].admin_port

    def container(self, slot: str, unit: str | None) -> str:
        match = _CONTAINER_NAME.search(unit or "")
        return match.group(1) if match else f"systemd-edgeml-{self.name}-{slot}"

    def desired_unit(self, slot: str, image: str) -> str:
        unit = self.req.slots[slot].unit
        return with_image(unit, image) if self.req.rollback else unit


@dataclass
class Target:
    version: str
    sha256: str
    image: str
    image_id: str
    image_digest: str | None
    manifest: dict[str, t.Any]
    reason: str | None = None  # why this deployment happens, e.g. "rollback to previous"


@dataclass
class Observed:
    state: dict[str, t.Any]
    units: dict[str, str | None]
    active_slot: str | None
    healthy: bool
    serving_version: str | None
    pointer: str | None  # raw file content (None: absent)

    @property
    def serving(self) -> dict[str, t.Any]:
        return self.state.get("serving") or {}


@dataclass
class Plan:
    kind: str  # unchanged | swap | bluegreen
    slot: str  # the slot that serves the target at the end
    old_slot: str | None
    unit: str  # the desired (final) unit content of ``slot``
    pointer_before: str | None
    actions: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.kind != "unchanged"


@dataclass
class Outcome:
    outcome: str  # deployed | unchanged | rolled_back | rollback_failed
    gates: list[GateResult]
    failed: GateResult | None = None
    rollback_reason: str | None = None
    restored_version: str | None = None
    rollback_performed: bool = False
    # From the failed gate to the previous version confirmed serving again.
    rollback_seconds: float | None = None
    log_tail: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    # True once public traffic reached the new version (the live window ran or started).
    exposed: bool = False


def rolled_back(
    results: list[GateResult],
    failed: GateResult,
    *,
    why: str | None,
    restored: str | None,
    failed_at: float,
    log_tail: list[str],
    done: list[str],
    exposed: bool,
) -> Outcome:
    """The outcome of a failed gate: restored when `why` is None, else a failed rollback."""
    return Outcome(
        "rolled_back" if why is None else "rollback_failed",
        results,
        failed=failed,
        rollback_reason=f"{failed.name} gate: {failed.detail}" + (f"; {why}" if why else ""),
        restored_version=restored,
        rollback_performed=True,
        rollback_seconds=round(time.monotonic() - failed_at, 3) if restored else None,
        log_tail=log_tail,
        actions=done,
        exposed=exposed,
    )
