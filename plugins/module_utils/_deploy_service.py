# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The service of model_deployment (private): verify artifacts, read what runs, plan the
change, apply it (in-place swap or blue/green slot switch) behind the gates, roll back
on failure, and keep the host's state file.

Every mutation happens in ``apply`` only; ``verify``, ``observe`` and ``plan`` read.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    MANIFEST_FILE,
    MODEL_FILE,
    loads_manifest,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import (
    Files,
    HostClient,
    ServerClient,
    read_text,
    sha256_file,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import (
    GateResult,
    Gates,
    GateSettings,
)

SLOTS = ("blue", "green")
STATE_SCHEMA = 1
_IMAGE_LINE = re.compile(r"^(\s*Image\s*=\s*)(.*?)\s*$", re.MULTILINE)
_CONTAINER_NAME = re.compile(r"^\s*ContainerName\s*=\s*(\S+)\s*$", re.MULTILINE)


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


def normalize_id(image_id: str) -> str:
    return image_id if image_id.startswith("sha256:") else f"sha256:{image_id}"


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
    unit: str  # the desired unit content of ``slot``
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


def _rolled_back(
    results: list[GateResult],
    failed: GateResult,
    *,
    why: str | None,
    restored: str | None,
    failed_at: float,
    log_tail: list[str],
    done: list[str],
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
    )


class DeployService:
    def __init__(self, request: DeployRequest, host: HostClient, files: Files) -> None:
        self.req = request
        self.host = host
        self.files = files
        self.name = request.name

    # --- names and paths --------------------------------------------------------------
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

    @contextlib.contextmanager
    def lock(self) -> t.Iterator[None]:
        """One deployment of NAME at a time on this host (an exclusive flock)."""
        os.makedirs(self.req.state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(self.req.state_dir, f".{self.name}.lock")
        handle = open(path, "a", encoding="utf-8")
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise EdgeMLError(
                    f"Another deployment of {self.name} is running on this host (lock {path}).",
                    "Wait for it to finish; do not run two plays against one host at once.",
                ) from None
            yield
        finally:
            handle.close()

    def container(self, slot: str, unit: str | None) -> str:
        match = _CONTAINER_NAME.search(unit or "")
        return match.group(1) if match else f"systemd-edgeml-{self.name}-{slot}"

    # --- state file ---------------------------------------------------------------------
    def load_state(self) -> dict[str, t.Any]:
        text = read_text(self.state_path)
        if text is None:
            return {"schema_version": STATE_SCHEMA, "name": self.name, "serving": None, "history": []}
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise EdgeMLError(
                f"The state file {self.state_path} is not valid JSON ({exc}).",
                "Move it away (it is rebuilt on the next deployment, without history) or repair it.",
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
            raise EdgeMLError(f"The state file {self.state_path} does not hold a state object.")
        state.setdefault("history", [])
        return state

    def save_state(self, state: dict[str, t.Any]) -> None:
        self.files.write(self.state_path, json.dumps(state, sort_keys=True, indent=2) + "\n", mode=0o600)

    # --- what to deploy -----------------------------------------------------------------
    def resolve_rollback(self, state: dict[str, t.Any]) -> dict[str, t.Any]:
        """The history entry a rollback (previous | VERSION) deploys."""
        wanted = self.req.rollback
        serving = state.get("serving") or {}
        deployed = [h for h in state.get("history", []) if isinstance(h, dict) and h.get("outcome") == "deployed"]
        for entry in deployed:
            if wanted == "previous":
                if (entry.get("version"), entry.get("image_id")) != (
                    serving.get("version"),
                    serving.get("image_id"),
                ):
                    return entry
            elif entry.get("version") == wanted:
                return entry
        known = sorted({str(h.get("version")) for h in deployed})
        raise Refused(
            f"Cannot roll back {self.name} to {wanted!r}: the history in {self.state_path} has no "
            f"such successful deployment (successful versions: {', '.join(known) or 'none'}).",
            "Use rollback: previous only after at least two successful deployments, or give a "
            "version listed above; or deploy a version with version: and bundle_sha256:.",
        )

    def verify(self, state: dict[str, t.Any]) -> Target:
        """Check the bundle and the image before anything running is touched."""
        req = self.req
        reason = None
        if req.rollback:
            entry = self.resolve_rollback(state)
            version, sha256 = entry["version"], entry["sha256"]
            image, expected_image = entry["image"], entry.get("image_id")
            digest = entry.get("image_digest")
            reason = f"rollback to {req.rollback}" + (f" ({version})" if req.rollback == "previous" else "")
        else:
            version, sha256 = t.cast(str, req.version), t.cast(str, req.bundle_sha256)
            image, expected_image, digest = req.image, None, req.image_digest
        manifest = self.verify_bundle(version, sha256)
        image_id = self.verify_image(image, digest, expected_image)
        return Target(version, sha256, image, image_id, digest, manifest, reason)

    def verify_bundle(self, version: str, sha256: str) -> dict[str, t.Any]:
        bdir = os.path.join(self.req.bundle_root, self.name, version)
        model, manifest_path = os.path.join(bdir, MODEL_FILE), os.path.join(bdir, MANIFEST_FILE)
        for path in (model, manifest_path):
            if not os.path.isfile(path):
                raise Refused(
                    f"The bundle {self.name} {version} is incomplete on this host: {path} is missing.",
                    f"Copy the bundle directory to {bdir}/ (model.onnx and model.json) before deploying.",
                )
        text = read_text(manifest_path) or ""
        try:
            manifest = loads_manifest(text.encode("utf-8"), manifest_path)
        except EdgeMLError as exc:
            raise Refused(exc.msg, "Copy the bundle again from the controller.") from None
        if manifest.get("name") != self.name or manifest.get("version") != version:
            raise Refused(
                f"{manifest_path} describes {manifest.get('name')!r} {manifest.get('version')!r}, "
                f"not {self.name!r} {version!r}.",
                "Copy the right bundle to that directory.",
            )
        recorded = (manifest.get("model") or {}).get("sha256")
        actual = sha256_file(model)
        if not (recorded == sha256 == actual):
            raise Refused(
                f"Checksum mismatch for {self.name} {version}: expected bundle_sha256 {sha256}, "
                f"model.json records {recorded}, {model} has {actual}.",
                "The copy on the host is not the bundle the controller built: copy it again, or pass "
                "the sha256 from the bundle's manifest. Nothing was changed.",
            )
        return manifest

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

    def desired_unit(self, slot: str, target: Target) -> str:
        unit = self.req.slots[slot].unit
        return with_image(unit, target.image) if self.req.rollback else unit

    # --- what runs ----------------------------------------------------------------------
    def observe(self, state: dict[str, t.Any]) -> Observed:
        units = {slot: read_text(self.unit_path(slot)) for slot in SLOTS}
        active = [s for s in SLOTS if self.host.service_state(self.service(s)).get("ActiveState") == "active"]
        serving_slot = (state.get("serving") or {}).get("slot")
        slot = serving_slot if serving_slot in active else (active[0] if active else None)
        healthy, version = False, None
        if slot is not None:
            answer = self.client(slot, self.running_port(state, slot)).status()
            if answer.ok and isinstance(answer.json, dict):
                healthy = bool(answer.json.get("ready"))
                version = answer.json.get("serving_version")
        return Observed(state, units, slot, healthy, version, read_text(self.pointer_path))

    def plan(self, target: Target, seen: Observed) -> Plan:
        active = seen.active_slot
        pointer_ok = (seen.pointer or "").strip() == target.version
        if active is not None and seen.healthy:
            same_image = seen.serving.get("image_id") == target.image_id and seen.serving.get("slot") == active
            same_unit = seen.units[active] == self.desired_unit(active, target)
            if same_image and same_unit:
                if seen.serving_version == target.version and pointer_ok:
                    return Plan("unchanged", active, None, seen.units[active] or "", seen.pointer)
                plan = Plan("swap", active, None, seen.units[active] or "", seen.pointer)
                port = self.req.slots[active].admin_port
                plan.actions = [
                    f"write {self.pointer_path}: {target.version}",
                    f"load {self.name} {target.version} in place on slot {active} (admin port {port})",
                    f"gates on slot {active}",
                    f"write {self.state_path}",
                ]
                return plan
        slot = other_slot(active) if active else SLOTS[0]
        plan = Plan("bluegreen", slot, active, self.desired_unit(slot, target), seen.pointer)
        plan.actions = [] if pointer_ok else [f"write {self.pointer_path}: {target.version}"]
        plan.actions += [
            f"write {self.unit_path(slot)}",
            "systemctl daemon-reload",
            f"systemctl start {self.service(slot)}",
            f"gates on slot {slot} (admin port {self.req.slots[slot].admin_port})",
        ]
        if active:
            plan.actions += [
                f"systemctl stop {self.service(active)}",
                f"remove {self.unit_path(active)}",
                "systemctl daemon-reload",
            ]
        plan.actions.append(f"write {self.state_path}")
        return plan

    # --- applying -----------------------------------------------------------------------
    def _write_pointer(self, content: str | None, done: list[str]) -> None:
        if content is None:
            self.files.remove(self.pointer_path)
            done.append(f"remove {self.pointer_path}")
        else:
            self.files.write(self.pointer_path, content)
            done.append(f"write {self.pointer_path}: {content.strip()}")

    def _log_tail(self, slot: str, unit: str | None) -> list[str]:
        try:
            return self.host.log_tail(self.service(slot), self.container(slot, unit), self.req.log_lines)
        except EdgeMLError as exc:
            return [f"(no log: {exc})"]

    def apply(self, target: Target, seen: Observed, plan: Plan) -> Outcome:
        if plan.kind == "swap":
            return self._swap(target, seen, plan)
        return self._bluegreen(target, seen, plan)

    def _run_gates(self, slot: str, target: Target, watch: t.Any, load_first: bool) -> list[GateResult]:
        gates = Gates(self.client(slot), self.req.gates, target.manifest, target.version)
        if load_first:
            answer = self.client(slot).load(target.version, timeout=max(self.req.gates.readiness_timeout, 1.0))
            if not answer.ok:
                return [
                    GateResult(
                        "readiness",
                        False,
                        {"seconds_to_ready": None},
                        {"timeout_seconds": self.req.gates.readiness_timeout},
                        f"the server refused version {target.version}: {answer.reason()}",
                    )
                ]
        results = [gates.readiness(watch)]
        if results[0].passed:
            results += gates.after_ready()
        return results

    def _swap(self, target: Target, seen: Observed, plan: Plan) -> Outcome:
        done: list[str] = []
        slot = plan.slot
        previous = seen.serving_version
        try:
            self._write_pointer(target.version + "\n", done)
            port = self.req.slots[slot].admin_port
            done.append(f"load {self.name} {target.version} in place on slot {slot} (admin port {port})")
            results = self._run_gates(slot, target, None, load_first=True)
            done.append(f"gates on slot {slot}")
        except EdgeMLError as exc:
            results = [GateResult("rollout", False, {}, {}, str(exc))]
        failed = next((r for r in results if not r.passed), None)
        if failed is None:
            return Outcome("deployed", results, actions=done)
        failed_at = time.monotonic()
        log_tail = self._log_tail(slot, seen.units.get(slot))
        # Swap back: the previous version in place, the pointer as it was.
        restored, why = None, None
        try:
            if previous:
                answer = self.client(slot).load(previous, timeout=max(self.req.gates.readiness_timeout, 1.0))
                done.append(f"load {self.name} {previous} back on slot {slot}")
                if not answer.ok:
                    why = f"swap back to {previous} failed: {answer.reason()}"
            self._write_pointer(seen.pointer, done)
            status = self.client(slot).status()
            now = status.json.get("serving_version") if status.ok and isinstance(status.json, dict) else None
            if previous and now == previous and why is None:
                restored = previous
            elif why is None:
                why = f"slot {slot} serves {now!r} after the swap back, not {previous!r}"
        except EdgeMLError as exc:
            why = f"swap back failed: {exc}"
        return _rolled_back(
            results, failed, why=why, restored=restored, failed_at=failed_at, log_tail=log_tail, done=done
        )

    def _service_watch(self, slot: str) -> t.Callable[[], tuple[str | None, str | None]]:
        """(problem, pending) of the slot's systemd service, for the readiness gate."""
        service = self.service(slot)
        baseline: dict[str, int] = {}

        def watch() -> tuple[str | None, str | None]:
            state = self.host.service_state(service)
            if state.get("LoadState") == "not-found":
                return (
                    f"{service} does not exist after daemon-reload: quadlet rejected "
                    f"{self.unit_path(slot)} (check it with "
                    "/usr/lib/systemd/system-generators/podman-system-generator --dryrun)",
                    None,
                )
            if state.get("ActiveState") == "failed":
                return f"{service} failed (result {state.get('Result')})", None
            try:
                restarts = int(state.get("NRestarts") or 0)
            except ValueError:
                restarts = 0
            baseline.setdefault("n", restarts)
            if restarts > baseline["n"]:
                return f"{service} restarted {restarts - baseline['n']} time(s): a crash loop", None
            if state.get("ActiveState") != "active":
                sub = state.get("SubState") or "?"
                return None, (
                    f"{service} is {state.get('ActiveState')} ({sub}): systemd waits for the container's "
                    "health check (Notify=healthy); check HealthCmd"
                )
            return None, None

        return watch

    def _bluegreen(self, target: Target, seen: Observed, plan: Plan) -> Outcome:
        done: list[str] = []
        slot, old = plan.slot, plan.old_slot
        unit_path = self.unit_path(slot)
        results: list[GateResult] = []
        try:
            if (seen.pointer or "").strip() != target.version:
                self._write_pointer(target.version + "\n", done)
            self.files.write(unit_path, plan.unit)
            done.append(f"write {unit_path}")
            self.host.daemon_reload()
            done.append("systemctl daemon-reload")
            self.host.start(self.service(slot))
            done.append(f"systemctl start {self.service(slot)}")
            results = self._run_gates(slot, target, self._service_watch(slot), load_first=False)
            done.append(f"gates on slot {slot} (admin port {self.req.slots[slot].admin_port})")
        except EdgeMLError as exc:
            results.append(GateResult("rollout", False, {}, {}, str(exc)))
        failed = next((r for r in results if not r.passed), None)
        if failed is None:
            if old:
                self.host.stop(self.service(old))
                done.append(f"systemctl stop {self.service(old)}")
                self.files.remove(self.unit_path(old))
                done.append(f"remove {self.unit_path(old)}")
                self.host.daemon_reload()
                done.append("systemctl daemon-reload")
            return Outcome("deployed", results, actions=done)

        failed_at = time.monotonic()
        log_tail = self._log_tail(slot, plan.unit)
        why = None
        try:
            self.host.stop(self.service(slot))
            done.append(f"systemctl stop {self.service(slot)}")
            self.files.remove(unit_path)
            done.append(f"remove {unit_path}")
            self.host.daemon_reload()
            done.append("systemctl daemon-reload")
            if (seen.pointer or "").strip() != target.version:
                self._write_pointer(seen.pointer, done)
        except EdgeMLError as exc:
            why = f"cleaning up slot {slot} failed: {exc}"
        restored = None
        if old and why is None:
            status = self.client(old, self.running_port(seen.state, old)).status()
            now = status.json.get("serving_version") if status.ok and isinstance(status.json, dict) else None
            if now == seen.serving_version and status.json.get("ready"):
                restored = now
            else:
                why = f"slot {old} serves {now!r}, not {seen.serving_version!r}"
        return _rolled_back(
            results, failed, why=why, restored=restored, failed_at=failed_at, log_tail=log_tail, done=done
        )

    # --- recording ----------------------------------------------------------------------
    def record(self, state: dict[str, t.Any], target: Target, plan: Plan, outcome: Outcome) -> dict[str, t.Any]:
        """Update the state: serving, history (newest first, trimmed), last_failure."""
        now = utc_now()
        state = dict(state)
        entry = {
            "version": target.version,
            "sha256": target.sha256,
            "image": target.image,
            "image_id": target.image_id,
            "image_digest": target.image_digest,
            "slot": plan.slot,
            "deployed_at": now,
            "outcome": outcome.outcome,
            "reason": outcome.rollback_reason or target.reason,
        }
        if outcome.outcome == "deployed":
            state["serving"] = {
                "version": target.version,
                "sha256": target.sha256,
                "image": target.image,
                "image_id": target.image_id,
                "image_digest": target.image_digest,
                "slot": plan.slot,
                "admin_port": self.req.slots[plan.slot].admin_port,
                "since": now,
            }
        elif outcome.outcome == "rollback_failed":
            serving = dict(state.get("serving") or {})
            serving["degraded"] = outcome.rollback_reason
            state["serving"] = serving
        if outcome.failed is not None:
            state["last_failure"] = {
                "version": target.version,
                "gate": outcome.failed.name,
                "reason": outcome.rollback_reason,
                "measured": outcome.failed.measured,
                "threshold": outcome.failed.threshold,
                "at": now,
            }
        state["history"] = [entry, *state.get("history", [])][: self.req.history_size]
        state["schema_version"] = STATE_SCHEMA
        state["name"] = self.name
        self.save_state(state)
        return state
