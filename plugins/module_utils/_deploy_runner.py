# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Runner of model_deployment (private): parameters -> request -> service -> result.

The flow: validate parameters, read the state file, verify bundle and image (refuse
before touching anything), observe what runs, plan, then (not in check mode) apply
behind the gates, record the outcome in the state file and report the result shape of
docs/deployment-result.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    validate_name,
    validate_version,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import (
    EdgeMLError,
    EdgeMLModule,
    make_diff,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import Files, HostClient
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import GateSettings, gate_default
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_plan import (
    SLOTS,
    DeployRequest,
    Observed,
    Plan,
    Refused,
    SlotSpec,
    Target,
    unit_image,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_service import DeployService

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
DIGEST_RE = re.compile(r"^(sha256:)?[0-9a-f]{64}$")
ROLLBACK_LATENCY_REASON = "a rollback restores a version that passed its latency gate when it was deployed"


def _number(value: t.Any, what: str, low: float, high: float, hint: str) -> float:
    if value is None or not math.isfinite(float(value)) or not low <= float(value) <= high:
        raise EdgeMLError(f"{what} is {value!r}; it must be between {low:g} and {high:g}.", hint)
    return float(value)


def _gates(raw: dict[str, t.Any] | None) -> GateSettings:
    """GateSettings from the module's ``gates`` option; a missing value takes the default
    of GATES_ARGUMENT_SPEC (the module fills them in; direct callers may not)."""
    raw = raw or {}

    def value(*path: str) -> t.Any:
        node: t.Any = raw
        for key in path:
            node = (node or {}).get(key) if isinstance(node, dict) else None
        return gate_default(*path) if node is None else node

    p95 = value("latency", "p95_ms")
    return GateSettings(
        readiness_timeout=_number(
            value("readiness_timeout"),
            "gates.readiness_timeout",
            0.1,
            3600,
            "Give the seconds a slot may take to load its model and pass its self-test, e.g. 60.",
        ),
        smoke_enabled=bool(value("smoke", "enabled")),
        smoke_source=value("smoke", "source"),
        smoke_min_pass_ratio=_number(
            value("smoke", "min_pass_ratio"),
            "gates.smoke.min_pass_ratio",
            0,
            1,
            "Use 1.0 (every vector right) or a fraction such as 0.9.",
        ),
        latency_enabled=bool(value("latency", "enabled")),
        latency_requests=int(
            _number(value("latency", "requests"), "gates.latency.requests", 1, 10000, "Use e.g. 30 requests.")
        ),
        latency_p95_ms=None
        if p95 is None
        else _number(p95, "gates.latency.p95_ms", 1e-6, 3.6e6, "Give the p95 budget in milliseconds, e.g. 50."),
        error_rate_enabled=bool(value("error_rate", "enabled")),
        soak_seconds=_number(
            value("error_rate", "soak_seconds"),
            "gates.error_rate.soak_seconds",
            0,
            600,
            "Use a short window such as 5 seconds.",
        ),
        max_error_ratio=_number(
            value("error_rate", "max_ratio"),
            "gates.error_rate.max_ratio",
            0,
            1,
            "Use 0.0 (no server error allowed) or a fraction such as 0.01.",
        ),
        live_enabled=bool(value("live", "enabled")),
        live_seconds=_number(
            value("live", "seconds"),
            "gates.live.seconds",
            0,
            3600,
            "Give the seconds real traffic is watched after the switch, e.g. 5.",
        ),
        live_min_requests=int(
            _number(value("live", "min_requests"), "gates.live.min_requests", 1, 1e6, "Use e.g. 20 requests.")
        ),
    )


def _port(value: t.Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise EdgeMLError(f"{what} is {value!r}; it must be a TCP port 1..65535.")
    return value


def _deadline(params: dict[str, t.Any]) -> int | None:
    deadline = params.get("deadline")
    if deadline is None:
        return None
    if params.get("rollback") is not None:
        raise EdgeMLError(
            "deadline is set on a rollback; it bounds only a deployment of a new version.",
            "Leave deadline unset for rollback (a rollback that ends late still ends on the version asked for).",
        )
    if not 1 <= deadline <= 86400:
        raise EdgeMLError(
            f"deadline is {deadline}; use 1..86400 seconds, or leave it unset for no deadline.",
            "Pass what is left of the rollout's batch deadline, e.g. 600.",
        )
    return deadline


def _request_gates(raw: dict[str, t.Any] | None, rollback: bool) -> GateSettings:
    gates = _gates(raw)
    if not rollback:
        return gates
    # Going back must not hinge on speed: the version restored passed its latency gate when it
    # was deployed, and the one it replaces (too slow, say) may still load the host and slow
    # every answer. Judged on readiness, answers and errors; latency measured only.
    return dataclasses.replace(gates, latency_p95_ms=None, latency_unjudged_reason=ROLLBACK_LATENCY_REASON)


def build_request(params: dict[str, t.Any], check_mode: bool = False) -> DeployRequest:
    validate_name(params["name"])
    version, rollback = params.get("version"), params.get("rollback")
    if version is not None:
        validate_version(version)
        sha = params.get("bundle_sha256")
        if not sha or not SHA256_RE.fullmatch(sha):
            raise EdgeMLError(
                f"bundle_sha256 is {sha!r}; deploying a version needs the sha256 of its model.onnx "
                "(64 lowercase hex digits).",
                "Pass the 'sha256' returned by edgeml.fleet.model_bundle (or model.sha256 of model.json).",
            )
        if not params.get("image"):
            raise EdgeMLError(
                "image is required when deploying a version.",
                "Give the server image reference the units run, e.g. registry.example/edgeml-model-server@sha256:...",
            )
    elif rollback is None:
        raise EdgeMLError(
            "Neither version nor rollback is set.",
            "Give version (with bundle_sha256 and image) to deploy, or rollback: previous.",
        )
    elif rollback != "previous":
        try:
            validate_version(rollback)
        except EdgeMLError as exc:
            raise EdgeMLError(
                f"rollback is {rollback!r}; use 'previous' or a version from the host's history.",
                exc.hint,
            ) from None
    digest = params.get("image_digest")
    if digest and not DIGEST_RE.fullmatch(digest):
        raise EdgeMLError(
            f"image_digest is {digest!r}; it must be sha256:<64 hex digits>.",
            "Pass the manifest digest (RepoDigests) or the image id, e.g. sha256:3f2a...",
        )
    port = _port(params["port"], "port")
    slots = {}
    raw_slots = params.get("slots") or {}
    for slot in SLOTS:
        spec = raw_slots.get(slot) or {}
        admin = _port(spec.get("admin_port"), f"slots.{slot}.admin_port")
        unit = spec.get("unit") or ""
        if "[Container]" not in unit or unit_image(unit) is None:
            raise EdgeMLError(
                f"slots.{slot}.unit is not a quadlet .container unit with an Image= line.",
                "Render the unit from the role's template: a [Container] section with Image=, "
                "Network=host, the admin port and Notify=healthy.",
            )
        if version is not None and unit_image(unit) != params["image"]:
            raise EdgeMLError(
                f"slots.{slot}.unit runs Image={unit_image(unit)}, but image is {params['image']}.",
                "Render the units with the same image reference that is passed as image.",
            )
        slots[slot] = SlotSpec(admin, unit)
    ports = [port, slots["blue"].admin_port, slots["green"].admin_port]
    if len(set(ports)) != len(ports):
        raise EdgeMLError(
            f"port and the slots' admin ports must all differ (got {ports}).",
            "Give each slot its own admin port, e.g. port 8080, blue 8081, green 8082.",
        )
    history_size = params.get("history_size", 10)
    if not 1 <= history_size <= 1000:
        raise EdgeMLError(f"history_size is {history_size}; use 1..1000.")
    lock_wait = _number(
        params.get("lock_wait", 0), "lock_wait", 0, 86400, "Seconds; 0 fails at once when another deployment runs."
    )
    deadline = _deadline(params)
    return DeployRequest(
        name=params["name"],
        version=version,
        rollback=rollback,
        bundle_root=params["bundle_root"],
        bundle_sha256=params.get("bundle_sha256"),
        image=params.get("image") or "",
        image_digest=params.get("image_digest"),
        port=port,
        slots=slots,
        unit_dir=params["unit_dir"],
        state_dir=params["state_dir"],
        history_size=history_size,
        gates=_request_gates(params.get("gates"), rollback is not None),
        log_lines=params.get("log_lines", 40),
        lock_wait=lock_wait,
        deadline_seconds=deadline,
        deadline_at=None if deadline is None else time.monotonic() + deadline,
        pending=frozenset(params.get("pending_delivery") or ()) if check_mode else frozenset(),
    )


def _history(state: dict[str, t.Any]) -> list[dict[str, t.Any]]:
    return [h for h in state.get("history", []) if isinstance(h, dict)]


def base_result(req: DeployRequest, state: dict[str, t.Any], target: Target | None) -> dict[str, t.Any]:
    serving = state.get("serving") or {}
    return {
        "changed": False,
        "target": "podman",
        "outcome": "unchanged",
        "model": {
            "name": req.name,
            "version": target.version if target else req.version,
            "previous_version": serving.get("version"),
            "serving_version": serving.get("version"),
            "sha256": target.sha256 if target else req.bundle_sha256,
        },
        "image": {
            "ref": target.image if target else req.image,
            "digest": (target.image_digest or target.image_id) if target else req.image_digest,
        },
        "slot": serving.get("slot"),
        "gates": [],
        "failed_gate": None,
        "rollback": {"performed": False, "reason": None, "restored_version": None},
        "log_tail": [],
        "history": _history(state),
        "last_failure": state.get("last_failure"),
        "actions": [],
    }


def _diff(svc: DeployService, seen: Observed, plan: Plan, target: Target) -> list[dict[str, t.Any]]:
    diffs = [
        make_diff(
            seen.pointer or "",
            target.version + "\n" if plan.kind != "unchanged" else seen.pointer or "",
            before_header=svc.layout.pointer_path if seen.pointer is not None else "(absent)",
            after_header=svc.layout.pointer_path,
        ),
        make_diff(
            seen.units.get(plan.slot) or "",
            plan.unit,
            before_header=svc.layout.unit_path(plan.slot) if seen.units.get(plan.slot) is not None else "(absent)",
            after_header=svc.layout.unit_path(plan.slot),
        ),
    ]
    if plan.kind == "bluegreen" and plan.old_slot:
        diffs.append(
            make_diff(
                seen.units.get(plan.old_slot) or "",
                "",
                before_header=svc.layout.unit_path(plan.old_slot),
                after_header="(absent)",
            )
        )
    return diffs


def run_model_deployment(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    req = build_request(wrapper.params, wrapper.check_mode)
    svc = DeployService(req, HostClient(wrapper.module), Files())
    # One deployment of NAME at a time (check mode changes nothing, so it takes no lock);
    # the state is read and the artifacts verified once, under the lock.
    with contextlib.nullcontext() if wrapper.check_mode else svc.store.lock():
        state = svc.store.load()
        try:
            target = svc.verify(state)
        except Refused as exc:
            result = base_result(req, state, None)
            result.update(outcome="refused", failed_gate=None)
            wrapper.fail(exc, **result)
        return _deploy(wrapper, svc, state, target)


def _deploy(wrapper: EdgeMLModule, svc: DeployService, state: dict[str, t.Any], target: Target) -> dict[str, t.Any]:
    req = svc.req
    seen = svc.observe(state)
    plan = svc.plan(target, seen)
    result = base_result(req, state, target)
    result["model"]["previous_version"] = seen.serving_version
    result["model"]["serving_version"] = seen.serving_version
    result["slot"] = seen.active_slot
    result["plan"] = plan.kind
    if wrapper.diff_mode:
        result["diff"] = _diff(svc, seen, plan, target)
    if plan.kind == "unchanged" or wrapper.check_mode:
        result.update(
            changed=plan.changed,
            outcome="deployed" if plan.changed else "unchanged",
            actions=plan.actions,
        )
        if plan.changed:  # predicted
            result["model"]["serving_version"] = target.version
            result["slot"] = plan.slot
        stale = svc.store.stale(state, target, plan.slot) if plan.kind == "unchanged" else None
        if stale:
            # A run killed between the switch and its record: what serves is right, the
            # state file is not. Rewrite it (a change, so reported as one).
            result.update(changed=True, actions=[f"write {svc.layout.state_path} (repair: {stale})"])
            if not wrapper.check_mode:
                state = svc.store.repair(state, target, plan.slot, stale)
                result.update(history=_history(state))
        return result

    try:
        outcome, state = svc.deploy(state, target, seen, plan)
    except Refused as exc:
        result.update(outcome="refused")
        wrapper.fail(exc, **result)
    if outcome.outcome != "deployed":
        # Also in the journal: it survives restarts even where the state file could not be written.
        wrapper.module.log(f"edgeml model_deployment {req.name} {target.version}: {outcome.rollback_reason}")
    result.update(
        changed=True,
        outcome=outcome.outcome,
        gates=[g.as_dict() for g in outcome.gates],
        # A success's state write is in its actions, in order (before the old version goes).
        actions=outcome.actions
        if outcome.outcome == "deployed"
        else [*outcome.actions, f"write {svc.layout.state_path}"],
        history=_history(state),
        last_failure=state.get("last_failure"),
    )
    if outcome.outcome == "deployed":
        result["model"]["serving_version"] = target.version
        result["slot"] = plan.slot
        return result
    failed = t.cast(t.Any, outcome.failed)
    result["model"]["serving_version"] = outcome.restored_version
    result.update(
        failed_gate=failed.name,
        rollback={
            "performed": outcome.rollback_performed,
            "reason": outcome.rollback_reason,
            "restored_version": outcome.restored_version,
            "seconds": outcome.rollback_seconds,
        },
        log_tail=outcome.log_tail,
    )
    verb = "rolled back" if outcome.outcome == "rolled_back" else "ROLLBACK FAILED"
    now = f"serving {outcome.restored_version}" if outcome.restored_version else "no previous version serves"
    error = EdgeMLError(
        f"Deploying {req.name} {target.version} failed the {failed.name} gate: {failed.detail}. {verb}: {now}.",
        "See gates, log_tail and the state file's last_failure; fix the model or image and deploy a new version.",
    )
    wrapper.fail(error, **result)
    raise AssertionError("unreachable")  # pragma: no cover
