# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The service of model_deployment (private): read what runs, plan the change and hand it
to a strategy (_deploy_strategies: in place or blue/green, gates before exposure), with
the state file (_deploy_state) and the checks before any change (_deploy_verify).

``observe`` and ``plan`` only read; every mutation is in the strategies and the store.
"""

from __future__ import annotations

import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import Files, HostClient, read_text
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_plan import (
    SLOTS,
    DeployRequest,
    HostLayout,
    Observed,
    Outcome,
    Plan,
    Target,
    other_slot,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_state import StateStore
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_strategies import (
    BlueGreen,
    InPlace,
    RecordDeployed,
    live_action,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_verify import Verifier


class DeployService:
    def __init__(self, request: DeployRequest, host: HostClient, files: Files) -> None:
        self.req = request
        self.host = host
        self.files = files
        self.name = request.name
        self.layout = HostLayout(request)
        self.store = StateStore(request, self.layout, files)
        self.verifier = Verifier(request, host, self.store)

    def verify(self, state: dict[str, t.Any]) -> Target:
        return self.verifier.verify(state)

    def observe(self, state: dict[str, t.Any]) -> Observed:
        units = {slot: read_text(self.layout.unit_path(slot)) for slot in SLOTS}
        active = [s for s in SLOTS if self.host.service_state(self.layout.service(s)).get("ActiveState") == "active"]
        serving_slot = (state.get("serving") or {}).get("slot")
        slot = serving_slot if serving_slot in active else (active[0] if active else None)
        healthy, version = False, None
        if slot is not None:
            answer = self.layout.client(slot, self.layout.running_port(state, slot)).status()
            if answer.ok and isinstance(answer.json, dict):
                healthy = bool(answer.json.get("ready"))
                version = answer.json.get("serving_version")
        return Observed(state, units, slot, healthy, version, read_text(self.layout.pointer_path))

    def plan(self, target: Target, seen: Observed) -> Plan:
        active = seen.active_slot
        pointer_ok = (seen.pointer or "").strip() == target.version
        if active is not None and seen.healthy:
            same_image = seen.serving.get("image_id") == target.image_id and seen.serving.get("slot") == active
            same_unit = seen.units[active] == self.layout.desired_unit(active, target.image)
            if same_image and same_unit:
                if seen.serving_version == target.version and pointer_ok:
                    return Plan("unchanged", active, None, seen.units[active] or "", seen.pointer)
                plan = Plan("swap", active, None, seen.units[active] or "", seen.pointer)
                port = self.layout.running_port(seen.state, active)
                plan.actions = [
                    f"stage {self.name} {target.version} beside {seen.serving_version} on slot {active} "
                    f"(admin port {port})",
                    "gates on the staged version (no public traffic reaches it)",
                    f"promote {target.version}: public traffic moves to it",
                    f"write {self.layout.pointer_path}: {target.version}",
                ]
                if self.req.gates.live_enabled:
                    plan.actions.append(live_action(self.req))
                plan.actions += [f"write {self.layout.state_path}", f"commit: release {seen.serving_version}"]
                return plan
        slot = other_slot(active) if active else SLOTS[0]
        plan = Plan("bluegreen", slot, active, self.layout.desired_unit(slot, target.image), seen.pointer)
        plan.actions = [
            f"write {self.layout.unit_path(slot)} (public port held, version {target.version} pinned)",
            "systemctl daemon-reload",
            f"systemctl start {self.layout.service(slot)}",
            f"gates on slot {slot} (admin port {self.req.slots[slot].admin_port}; no public traffic reaches it)",
            f"open the public listener of slot {slot}",
        ]
        if active:
            plan.actions.append(f"close the public listener of slot {active}")
        if not pointer_ok:
            plan.actions.append(f"write {self.layout.pointer_path}: {target.version}")
        if self.req.gates.live_enabled:
            plan.actions.append(live_action(self.req))
        plan.actions += [f"write {self.layout.unit_path(slot)}", f"write {self.layout.state_path}"]
        if active:
            plan.actions += [f"systemctl stop {self.layout.service(active)}", f"remove {self.layout.unit_path(active)}"]
        plan.actions.append("systemctl daemon-reload")
        return plan

    def deploy(self, state: dict[str, t.Any], target: Target, seen: Observed, plan: Plan) -> tuple[Outcome, dict]:
        """Apply PLAN and record the outcome: the state file says a deployment is in progress
        before anything changes (``Refused`` when it cannot be written), records a success
        before the previous version is released, and records any failure's reason."""
        state = self.store.begin(state, target, plan)
        recorded: dict[str, t.Any] = {}

        def record_deployed(outcome: Outcome) -> None:
            recorded["state"] = self.store.deployed(state, target, plan, outcome)
            outcome.actions.append(f"write {self.layout.state_path}")

        outcome = self.apply(target, seen, plan, record_deployed)
        if outcome.outcome == "deployed":
            return outcome, recorded["state"]
        return outcome, self.store.failed(state, target, plan, outcome)

    def apply(self, target: Target, seen: Observed, plan: Plan, record: RecordDeployed) -> Outcome:
        kind = InPlace if plan.kind == "swap" else BlueGreen
        return kind(self.req, self.layout, self.host, self.files).apply(target, seen, plan, record)
