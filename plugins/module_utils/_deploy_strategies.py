# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The two ways model_deployment switches versions (private), both gates-before-exposure:

1. judged unexposed: the new version is loaded beside the serving one and must pass
   readiness, smoke, latency and error-rate gates while only the gates' own requests
   reach it (in place: a staged candidate addressed by its version on the loopback admin
   port; blue/green: a new slot whose public listener is held closed);
2. switch: public traffic moves to it atomically (promote / open the new slot's listener
   and close the old one's), the previous version still loaded;
3. live window: real traffic judged from the server's own counters; a failure switches
   back at once (revert / reopen the old slot), within about a second;
4. commit: the state file records the new version while switching back is still cheap,
   then the previous version is released.

Any exception after the switch switches back and records why; so does a failed gate, and
so does the deployment's deadline (the module's deadline option) when it has passed at the
switch or at the commit: the controller has given up on the host by then.
"""

from __future__ import annotations

import time
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import Files, HostClient, ServerClient
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import GateResult, Gates
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_plan import (
    DeployRequest,
    HostLayout,
    Observed,
    Outcome,
    Plan,
    Target,
    describe,
    rolled_back,
    staged_unit,
)

Watch = t.Callable[[], t.Tuple[t.Optional[str], t.Optional[str]]]
# Called once the live window passed, before the previous version is released: writes the
# state file (raises OSError when it cannot, and the switch is then undone).
RecordDeployed = t.Callable[[Outcome], None]


def serving_of(client: ServerClient) -> tuple[str | None, str]:
    """(the version a server serves and is ready with, or None; what it said)."""
    answer = client.status()
    if not answer.ok or not isinstance(answer.json, dict):
        return None, answer.reason()
    doc = answer.json
    if not doc.get("ready"):
        return None, f"not ready: {doc.get('error')}"
    return doc.get("serving_version"), f"serves {doc.get('serving_version')!r}"


def live_action(req: DeployRequest) -> str:
    """The action line of the live window (the plan predicts the same line)."""
    return f"live window of {req.gates.live_seconds:g} s on real traffic"


def _first_failed(results: list[GateResult]) -> GateResult | None:
    return next((r for r in results if not r.passed), None)


def _rollout_failure(exc: BaseException) -> GateResult:
    return GateResult("rollout", False, {}, {}, describe(exc))


class Strategy:
    def __init__(self, req: DeployRequest, layout: HostLayout, host: HostClient, files: Files) -> None:
        self.req = req
        self.layout = layout
        self.host = host
        self.files = files

    # --- shared steps -------------------------------------------------------------------
    def write_pointer(self, content: str | None, done: list[str]) -> None:
        path = self.layout.pointer_path
        if content is None:
            self.files.remove(path)
            done.append(f"remove {path}")
        else:
            self.files.write(path, content)
            done.append(f"write {path}: {content.strip()}")

    def past_deadline(self, results: list[GateResult], before: str) -> GateResult | None:
        """The failed `deadline` gate (appended to RESULTS) when the deployment's deadline has
        passed, else None; BEFORE names the step it would have been too late for."""
        if self.req.deadline_at is None:
            return None
        late = time.monotonic() - self.req.deadline_at
        if late < 0:
            return None
        result = GateResult(
            "deadline",
            False,
            {"seconds_late": round(late, 1)},
            {"deadline_seconds": self.req.deadline_seconds},
            f"the deployment's deadline of {self.req.deadline_seconds} s had passed by {late:.1f} s when it came "
            f"to {before}: whoever set it (a rollout's batch deadline) has given up on this host, so the new "
            "version is neither switched to nor kept",
        )
        results.append(result)
        return result

    def log_tail(self, slot: str, unit: str | None) -> list[str]:
        try:
            return self.host.log_tail(self.layout.service(slot), self.layout.container(slot, unit), self.req.log_lines)
        except EdgeMLError as exc:
            return [f"(no log: {exc})"]

    def judge_unexposed(self, gates: Gates, watch: Watch | None) -> list[GateResult]:
        results = [gates.readiness(watch)]
        if results[0].passed:
            results += gates.after_ready()
        return results

    def wait_serving(self, client: ServerClient, version: str | None) -> tuple[str | None, str]:
        """Wait (bounded by the readiness timeout) until CLIENT's server is ready with
        VERSION (None: any version); return the version it serves then, and what it said."""
        deadline = time.monotonic() + max(self.req.gates.readiness_timeout, 1.0)
        while True:
            now, said = serving_of(client)
            if now is not None and (version is None or now == version):
                return now, said
            if time.monotonic() >= deadline:
                return now, said
            time.sleep(0.2)

    def bring_back(
        self, client: ServerClient, previous: str | None, slot: str, done: list[str]
    ) -> tuple[str | None, str]:
        """Make CLIENT's server serve PREVIOUS again: it may have been killed and restarted
        meanwhile (systemd), onto what the pointer file named then; wait for it (bounded)
        and load PREVIOUS into it if need be. Return (PREVIOUS or None, what it said)."""
        now, said = serving_of(client)
        if now != previous:
            now, said = self.wait_serving(client, None)
            if now is not None and now != previous and previous is not None:
                answer = client.load(previous, timeout=max(self.req.gates.readiness_timeout, 1.0))
                done.append(f"load {previous} back on slot {slot}: {'ok' if answer.ok else answer.reason()}")
                now, said = self.wait_serving(client, previous)
        return (now if now == previous else None), said

    def service_watch(self, slot: str) -> Watch:
        """(problem, pending) of the slot's systemd service, for the readiness and live gates."""
        service = self.layout.service(slot)
        baseline: dict[str, int] = {}

        def watch() -> tuple[str | None, str | None]:
            state = self.host.service_state(service)
            if state.get("LoadState") == "not-found":
                return (
                    f"{service} does not exist after daemon-reload: quadlet rejected "
                    f"{self.layout.unit_path(slot)} (check it with "
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


class InPlace(Strategy):
    """A model change on the slot that serves: staged, judged, promoted, watched, committed."""

    def apply(self, target: Target, seen: Observed, plan: Plan, record: RecordDeployed) -> Outcome:
        done: list[str] = []
        slot, version, previous = plan.slot, target.version, seen.serving_version
        port = self.layout.running_port(seen.state, slot)
        client = self.layout.client(slot, port)
        gates = Gates(client, self.req.gates, target.manifest, version)
        results: list[GateResult] = []
        try:
            answer = client.stage(version, timeout=max(self.req.gates.readiness_timeout, 1.0))
            done.append(f"stage {self.req.name} {version} beside {previous} on slot {slot} (admin port {port})")
            if answer.ok:
                results = self.judge_unexposed(gates, None)
                done.append("gates on the staged version (no public traffic reaches it)")
            else:
                detail = f"the server refused version {version}: {answer.reason()}"
                threshold = {"timeout_seconds": self.req.gates.readiness_timeout}
                results = [GateResult("readiness", False, {"seconds_to_ready": None}, threshold, detail)]
        except Exception as exc:  # every failure must reach the restore
            results.append(_rollout_failure(exc))
        failed = _first_failed(results) or self.past_deadline(results, "the switch")
        if failed is not None:
            return self._switch_back(
                client, results, failed, previous=previous, seen=seen, slot=slot, done=done, exposed=False
            )

        exposed = False
        try:
            answer = client.promote(version)
            if not answer.ok:
                raise EdgeMLError(f"promoting {version} failed: {answer.reason()}")
            exposed = True
            done.append(f"promote {version}: public traffic moves to it")
            self.write_pointer(version + "\n", done)
            if self.req.gates.live_enabled:
                results.append(gates.live(None))
                done.append(live_action(self.req))
            failed = _first_failed(results) or self.past_deadline(results, "the commit")
            if failed is None:
                outcome = Outcome("deployed", results, actions=done, exposed=True)
                record(outcome)
                answer = client.commit()
                done.append(f"commit: release {previous}" if answer.ok else f"commit failed: {answer.reason()}")
                return outcome
        except Exception as exc:  # every failure must reach the restore
            results.append(_rollout_failure(exc))
            failed = results[-1]
        failed = t.cast(GateResult, failed)
        return self._switch_back(
            client, results, failed, previous=previous, seen=seen, slot=slot, done=done, exposed=exposed
        )

    def _switch_back(
        self,
        client: ServerClient,
        results: list[GateResult],
        failed: GateResult,
        *,
        previous: str | None,
        seen: Observed,
        slot: str,
        done: list[str],
        exposed: bool,
    ) -> Outcome:
        """Back to PREVIOUS: drop the staged version (never exposed) or revert to it (kept
        loaded since the promote), the pointer file as it was; a server that restarted
        meanwhile gets PREVIOUS loaded explicitly."""
        failed_at = time.monotonic()
        problems: list[str] = []
        if exposed:
            answer = client.revert()  # first: public traffic is on the failed version
            done.append(f"revert: {previous} serves again" if answer.ok else f"revert failed: {answer.reason()}")
            try:
                self.write_pointer(seen.pointer, done)
            except Exception as exc:  # keep restoring, say what failed
                problems.append(f"restoring the pointer file failed: {describe(exc)}")
        else:
            answer = client.unstage()
            done.append(f"unstage {failed.name}-failed version" if answer.ok else f"unstage failed: {answer.reason()}")
        log_tail = self.log_tail(slot, seen.units.get(slot))
        restored, said = self.bring_back(client, previous, slot, done)
        if restored is None:
            problems.append(f"slot {slot} {said}, not {previous!r}")
        return rolled_back(
            results,
            failed,
            why="; ".join(problems) or None,
            restored=restored,
            failed_at=failed_at,
            log_tail=log_tail,
            done=done,
            exposed=exposed,
        )


class BlueGreen(Strategy):
    """A new slot (new image or unit, or nothing healthy serves): started with its public
    listener held, judged, then traffic switched from the old slot's listener to its own."""

    def apply(self, target: Target, seen: Observed, plan: Plan, record: RecordDeployed) -> Outcome:
        done: list[str] = []
        slot, old = plan.slot, plan.old_slot
        client = self.layout.client(slot)
        old_client = self.layout.client(old, self.layout.running_port(seen.state, old)) if old else None
        gates = Gates(client, self.req.gates, target.manifest, target.version)
        watch = self.service_watch(slot)
        results: list[GateResult] = []
        try:
            unit_path = self.layout.unit_path(slot)
            self.files.write(unit_path, staged_unit(plan.unit, target.version))
            done.append(f"write {unit_path} (public port held, version {target.version} pinned)")
            self.host.daemon_reload()
            done.append("systemctl daemon-reload")
            self.host.start(self.layout.service(slot))
            done.append(f"systemctl start {self.layout.service(slot)}")
            results = self.judge_unexposed(gates, watch)
            port = self.req.slots[slot].admin_port
            done.append(f"gates on slot {slot} (admin port {port}; no public traffic reaches it)")
        except Exception as exc:  # every failure must reach the restore
            results.append(_rollout_failure(exc))
        failed = _first_failed(results) or self.past_deadline(results, "the switch")
        if failed is not None:
            return self._restore(results, failed, seen=seen, plan=plan, old_client=old_client, done=done, exposed=False)

        exposed = False
        try:
            self._open(client, slot, done)
            exposed = True
            if old_client is not None:
                self._close(old_client, t.cast(str, old), done)
            if (seen.pointer or "").strip() != target.version:
                self.write_pointer(target.version + "\n", done)
            if self.req.gates.live_enabled:
                results.append(gates.live(watch))
                done.append(live_action(self.req))
            failed = _first_failed(results) or self.past_deadline(results, "the commit")
            if failed is None:
                # The final unit first: a restart must open the public port by itself.
                self.files.write(self.layout.unit_path(slot), plan.unit)
                done.append(f"write {self.layout.unit_path(slot)}")
                outcome = Outcome("deployed", results, actions=done, exposed=True)
                record(outcome)
                self._retire(old, done)
                return outcome
        except Exception as exc:  # every failure must reach the restore
            results.append(_rollout_failure(exc))
            failed = results[-1]
        failed = t.cast(GateResult, failed)
        return self._restore(
            results, failed, seen=seen, plan=plan, old_client=old_client, done=done, exposed=exposed
        )

    def _open(self, client: ServerClient, slot: str, done: list[str]) -> None:
        answer = client.public("open")
        if not answer.ok:
            raise EdgeMLError(f"slot {slot} did not open its public listener: {answer.reason()}")
        done.append(f"open the public listener of slot {slot}")

    def _close(self, client: ServerClient, slot: str, done: list[str]) -> None:
        answer = client.public("close")
        # A slot that does not answer cannot take public traffic well either: it is stopped
        # when the deployment commits.
        done.append(f"close the public listener of slot {slot}" + ("" if answer.ok else f" failed: {answer.reason()}"))

    def _retire(self, old: str | None, done: list[str]) -> None:
        """Release the old slot. The new version serves and is recorded: a failure here
        leaves an idle unit behind (reported in the actions), not a wrong version."""
        try:
            if old:
                self.host.stop(self.layout.service(old))
                done.append(f"systemctl stop {self.layout.service(old)}")
                self.files.remove(self.layout.unit_path(old))
                done.append(f"remove {self.layout.unit_path(old)}")
            self.host.daemon_reload()
            done.append("systemctl daemon-reload")
        except Exception as exc:  # reported, the deployment stands
            done.append(f"releasing slot {old} failed: {describe(exc)}")

    def _restore(
        self,
        results: list[GateResult],
        failed: GateResult,
        *,
        seen: Observed,
        plan: Plan,
        old_client: ServerClient | None,
        done: list[str],
        exposed: bool,
    ) -> Outcome:
        failed_at = time.monotonic()
        slot, old = plan.slot, plan.old_slot
        problems: list[str] = []
        reopened, open_error = not exposed, None
        if exposed and old_client is not None:
            try:
                self._open(old_client, t.cast(str, old), done)  # first: public traffic is on the failed slot
                reopened = True
            except EdgeMLError as exc:
                open_error = str(exc)
        log_tail = self.log_tail(slot, plan.unit)
        try:
            if exposed:
                self._close(self.layout.client(slot), slot, done)
            self.host.stop(self.layout.service(slot))
            done.append(f"systemctl stop {self.layout.service(slot)}")
            self.files.remove(self.layout.unit_path(slot))
            done.append(f"remove {self.layout.unit_path(slot)}")
            self.host.daemon_reload()
            done.append("systemctl daemon-reload")
            if exposed:  # the pointer was written at the switch
                self.write_pointer(seen.pointer, done)
        except Exception as exc:  # keep going, say what failed
            problems.append(f"cleaning up slot {slot} failed: {describe(exc)}")
        restored = None
        if old_client is not None:
            restored, said = self.bring_back(old_client, seen.serving_version, t.cast(str, old), done)
            if restored is not None and not reopened:
                # The old slot was down when it should have taken traffic back (killed too,
                # and restarted by systemd): it serves again, so the open can be retried.
                try:
                    self._open(old_client, t.cast(str, old), done)
                    reopened = True
                except EdgeMLError as exc:
                    open_error = str(exc)
            if restored is None:
                problems.append(f"slot {old} {said}, not {seen.serving_version!r}")
        if not reopened and open_error:
            problems.insert(0, open_error)
        return rolled_back(
            results,
            failed,
            why="; ".join(problems) or None,
            restored=restored,
            failed_at=failed_at,
            log_tail=log_tail,
            done=done,
            exposed=exposed,
        )
