# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The host's state file of model_deployment (private): what serves, the history, the
last failure and the deployment in progress; the lock; rollback targets.

The state file is where a failure's reason survives restarts. It is written before
anything changes (``begin``: a deployment in progress, so an unwritable state directory
refuses the deployment while nothing changed yet), while the previous version can still
be switched back (``record`` of a success), and after any restore.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import Files, read_text
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_plan import (
    DeployRequest,
    HostLayout,
    Outcome,
    Plan,
    Refused,
    Target,
    describe,
    utc_now,
)

STATE_SCHEMA = 1
# How often a deployment waiting for another one's lock tries again.
LOCK_POLL_SECONDS = 0.5


def _serving_entry(target: Target, slot: str, admin_port: int, since: str) -> dict[str, t.Any]:
    return {
        "version": target.version,
        "sha256": target.sha256,
        "image": target.image,
        "image_id": target.image_id,
        "image_digest": target.image_digest,
        "slot": slot,
        "admin_port": admin_port,
        "since": since,
    }


class StateStore:
    def __init__(self, req: DeployRequest, layout: HostLayout, files: Files) -> None:
        self.req = req
        self.layout = layout
        self.files = files
        self.name = req.name

    @property
    def path(self) -> str:
        return self.layout.state_path

    @contextlib.contextmanager
    def lock(self) -> t.Iterator[None]:
        """One deployment of NAME (per state file) at a time on this host: an exclusive
        flock in the runtime directory, so a read-only state directory still reaches the
        state file's own check, which says what is wrong."""
        os.makedirs(self.req.lock_dir, mode=0o700, exist_ok=True)
        key = hashlib.sha256(os.path.abspath(self.path).encode("utf-8")).hexdigest()[:16]
        path = os.path.join(self.req.lock_dir, f"{self.name}-{key}.lock")
        handle = open(path, "a", encoding="utf-8")
        # A deployment whose controller died (killed, lost its SSH connection) runs on to its
        # end on the host: a rerun right away waits for it (lock_wait) instead of failing.
        deadline = time.monotonic() + self.req.lock_wait
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError:
                    if time.monotonic() >= deadline:
                        raise EdgeMLError(
                            f"Another deployment of {self.name} is running on this host (lock {path}); "
                            f"waited {self.req.lock_wait:g} s for it to finish.",
                            "Wait for it to finish, or raise lock_wait; do not run two plays against one host at once.",
                        ) from None
                    time.sleep(LOCK_POLL_SECONDS)
            yield
        finally:
            handle.close()

    def load(self) -> dict[str, t.Any]:
        text = read_text(self.path)
        if text is None:
            return {"schema_version": STATE_SCHEMA, "name": self.name, "serving": None, "history": []}
        try:
            state = json.loads(text)
        except ValueError as exc:
            raise EdgeMLError(
                f"The state file {self.path} is not valid JSON ({exc}).",
                "Move it away (it is rebuilt on the next deployment, without history) or repair it.",
            ) from None
        if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
            raise EdgeMLError(f"The state file {self.path} does not hold a state object.")
        state.setdefault("history", [])
        return state

    def save(self, state: dict[str, t.Any]) -> None:
        state["schema_version"] = STATE_SCHEMA
        state["name"] = self.name
        self.files.write(self.path, json.dumps(state, sort_keys=True, indent=2) + "\n", mode=0o600)

    def begin(self, state: dict[str, t.Any], target: Target, plan: Plan) -> dict[str, t.Any]:
        """Record the deployment about to start; refuse (nothing changed) when the state
        file cannot be written, since a failure's reason could then not be kept."""
        state = dict(state)
        state["in_progress"] = {"version": target.version, "plan": plan.kind, "slot": plan.slot, "since": utc_now()}
        try:
            self.save(state)
        except OSError as exc:
            raise Refused(
                f"Cannot write the state file {self.path} ({describe(exc)}): a failed deployment's "
                "reason could not be recorded, so nothing was changed.",
                f"Make {self.req.state_dir} writable for root (is it mounted read-only, or the disk full?), "
                "then deploy again.",
            ) from None
        return state

    def deployed(self, state: dict[str, t.Any], target: Target, plan: Plan, outcome: Outcome) -> dict[str, t.Any]:
        """State after a deployment that passed every gate (raises OSError when unwritable)."""
        return self._record(state, target, plan, outcome)

    def failed(self, state: dict[str, t.Any], target: Target, plan: Plan, outcome: Outcome) -> dict[str, t.Any]:
        """State after a failed deployment; never raises (the reason then goes to the
        host's journal through ``log`` and into the result)."""
        try:
            return self._record(state, target, plan, outcome)
        except OSError as exc:
            outcome.rollback_reason = f"{outcome.rollback_reason}; the state file could not be written: {describe(exc)}"
            return state

    def _record(self, state: dict[str, t.Any], target: Target, plan: Plan, outcome: Outcome) -> dict[str, t.Any]:
        now = utc_now()
        state = dict(state)
        state.pop("in_progress", None)
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
            state["serving"] = _serving_entry(target, plan.slot, self.req.slots[plan.slot].admin_port, now)
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
        self.save(state)
        return state

    def stale(self, state: dict[str, t.Any], target: Target, slot: str) -> str | None:
        """Why the state file does not describe TARGET serving on SLOT (None: it does)."""
        serving = state.get("serving") or {}
        if state.get("in_progress"):
            return f"a deployment of {state['in_progress'].get('version')} was interrupted"
        for key, actual in (("version", target.version), ("sha256", target.sha256), ("image_id", target.image_id)):
            if serving.get(key) != actual:
                return f"it records {key} {serving.get(key)!r} where {actual!r} serves"
        if serving.get("slot") != slot:
            return f"it records slot {serving.get('slot')!r} where slot {slot!r} serves"
        return None

    def repair(self, state: dict[str, t.Any], target: Target, slot: str, why: str) -> dict[str, t.Any]:
        """Make the state describe what serves (an interrupted run left it stale)."""
        state = dict(state)
        state.pop("in_progress", None)
        now = utc_now()
        state["serving"] = _serving_entry(target, slot, self.layout.running_port(state, slot), now)
        entry = {
            **{k: state["serving"][k] for k in ("version", "sha256", "image", "image_id", "image_digest", "slot")},
            "deployed_at": now,
            "outcome": "deployed",
            "reason": f"state file repaired: {why}",
        }
        state["history"] = [entry, *state.get("history", [])][: self.req.history_size]
        self.save(state)
        return state

    def resolve_rollback(self, state: dict[str, t.Any]) -> dict[str, t.Any]:
        """The history entry a rollback (previous | VERSION) deploys."""
        wanted = self.req.rollback
        serving = state.get("serving") or {}
        deployed = [h for h in state.get("history", []) if isinstance(h, dict) and h.get("outcome") == "deployed"]
        for entry in deployed:
            if wanted == "previous":
                if (entry.get("version"), entry.get("image_id")) != (serving.get("version"), serving.get("image_id")):
                    return entry
            elif entry.get("version") == wanted:
                return entry
        known = sorted({str(h.get("version")) for h in deployed})
        raise Refused(
            f"Cannot roll back {self.name} to {wanted!r}: the history in {self.path} has no "
            f"such successful deployment (successful versions: {', '.join(known) or 'none'}).",
            "Use rollback: previous only after at least two successful deployments, or give a "
            "version listed above; or deploy a version with version: and bundle_sha256:.",
        )
