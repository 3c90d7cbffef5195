# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Rollout filters: what a host is to a rollout (ring, site, batch settings), the plan (rings
in order, each cut into batches that respect a per-site budget), the judgement of a batch,
a failed host's record, and the report's rows. The outcome names every rollout playbook and
report uses are defined here, once (`rollout_outcomes` hands them to the playbooks)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

# Rings in rollout order when the inventory sets no `edgeml_rings` (the lab's and the
# inventory plugin's default ring names).
DEFAULT_RINGS = ("canary", "wave1", "wave2")
# A host's site when it has neither `edgeml_site` nor a `site_*` group.
NO_SITE = "all"
SITE_GROUP_PREFIX = "site_"


class Outcome:
    """What happened to one host in a rollout or rollback (the report's OUTCOME column)."""

    # From the model_deployment module (roles/model_deployment): the host's own verdict.
    DEPLOYED = "deployed"
    UNCHANGED = "unchanged"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    REFUSED = "refused"
    # Set by the rollout playbooks.
    FAILED = "failed"  # the role failed without a module verdict (e.g. a task before the module)
    UNREACHABLE = "unreachable"  # gone during its batch
    TIMED_OUT = "timed out"  # its batch's deadline (rollout_batch_timeout) passed first
    UNREACHABLE_AT_START = "unreachable at start"  # rollout_unreachable: fail
    PENDING = "pending"  # unreachable at start under rollout_unreachable: pending
    NOT_STARTED = "not started"
    PAUSED = "paused"  # not started: rollouts were paused (pause_rollouts.yml, the rulebook's drift action)
    SKIPPED = "skipped (rollout halted)"
    FLEET_ROLLED_BACK = "rolled back (fleet)"
    FLEET_ROLLBACK_FAILED = "fleet rollback failed"
    # rollback.yml
    REQUESTED_ROLLBACK = "rolled_back (requested)"
    REQUESTED_ROLLBACK_FAILED = "rollback failed"


# A host in a batch that ended with one of these did not fail its batch.
BATCH_OK = (Outcome.DEPLOYED, Outcome.UNCHANGED)
# A run ends well when every host ended with one of these (PENDING only under
# rollout_unreachable: pending).
DONE = (Outcome.DEPLOYED, Outcome.UNCHANGED, Outcome.REQUESTED_ROLLBACK)
UNREACHABLE_MODES = ("fail", "pending")


def rollout_outcomes(_unused=None) -> dict:
    """The outcome names for playbooks and templates: {'deployed': 'deployed', ...,
    'skipped': 'skipped (rollout halted)', 'batch_ok': [...], 'done': [...]}."""
    names = {key.lower(): value for key, value in vars(Outcome).items() if key.isupper()}
    names["skipped"] = Outcome.SKIPPED
    return {**names, "batch_ok": list(BATCH_OK), "done": list(DONE)}


def _count(value, total: int, what: str) -> int:
    """A count from a number or a percentage string of total; at least 1."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise AnsibleFilterError(f"{what} must be a percentage within 0..100 (exclusive of 0), got {value!r}")
            return max(1, math.floor(total * percent / 100))
        count = int(text)
    except ValueError:
        raise AnsibleFilterError(f"{what} must be a number or a percentage like '25%', got {value!r}") from None
    if count < 1:
        raise AnsibleFilterError(f"{what} must be at least 1, got {value!r}")
    return count


def _rings(value, what: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise AnsibleFilterError(f"{what} must be a non-empty list of ring names in rollout order, got {value!r}")
    rings = [str(ring) for ring in value]
    duplicates = sorted({ring for ring in rings if rings.count(ring) > 1})
    if duplicates:
        raise AnsibleFilterError(f"{what} names a ring twice: {', '.join(duplicates)}")
    return rings


def rollout_host(host_vars: Mapping) -> dict:
    """What one host is to a rollout, from its hostvars (`hostvars[inventory_hostname]`):
    name; rings (`edgeml_rings`, or the default); ring (`edgeml_ring`, else the first of
    the rings whose group it is in, else ''); site (`edgeml_site`, else its first `site_*`
    group, else 'all'); serial and max_fail_percentage (its ring's `edgeml_ring_serial`,
    default 1, and `edgeml_ring_max_fail_percentage`, default 0)."""
    name = host_vars.get("inventory_hostname")
    rings = _rings(host_vars.get("edgeml_rings", list(DEFAULT_RINGS)), f"edgeml_rings of {name}")
    groups = list(host_vars.get("group_names") or [])
    ring = host_vars.get("edgeml_ring") or next((ring for ring in rings if ring in groups), "")
    site = host_vars.get("edgeml_site") or next(
        (group for group in groups if group.startswith(SITE_GROUP_PREFIX)), NO_SITE
    )
    return {
        "name": name,
        "rings": rings,
        "ring": str(ring),
        "site": str(site),
        "serial": host_vars.get("edgeml_ring_serial", 1),
        "max_fail_percentage": host_vars.get("edgeml_ring_max_fail_percentage", 0),
    }


def report_dir(host_vars: Mapping) -> str:
    """Where reports and fleet pages go for a run over this host's inventory:
    `rollout_report_dir`, else reports/ beside the inventory it comes from (docs/paths.md)."""
    if host_vars.get("rollout_report_dir"):
        return os.path.expanduser(str(host_vars["rollout_report_dir"]))
    if host_vars.get("inventory_dir"):
        return f"{host_vars['inventory_dir']}/reports"
    raise AnsibleFilterError(
        f"reports go to reports/ beside the inventory, and {host_vars.get('inventory_hostname')} comes from none:"
        " set rollout_report_dir"
    )


def _batches(hosts: list[dict], serial: int, site_budget: dict[str, int]) -> list[list[str]]:
    """Greedy batches in host order: at most `serial` hosts, at most the budget per site."""
    remaining = list(hosts)
    batches = []
    while remaining:
        batch, per_site, left = [], {}, []
        for host in remaining:
            site = host["site"]
            if len(batch) < serial and per_site.get(site, 0) < site_budget[site]:
                batch.append(host["name"])
                per_site[site] = per_site.get(site, 0) + 1
            else:
                left.append(host)
        batches.append(batch)
        remaining = left
    return batches


def _max_fail(value, ring: str) -> float:
    try:
        max_fail = float(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"max_fail_percentage of ring {ring} must be a number, got {value!r}") from None
    if not 0 <= max_fail <= 100:
        raise AnsibleFilterError(f"max_fail_percentage of ring {ring} must be within 0..100, got {max_fail}")
    return max_fail


# Characters that make a name an Ansible host pattern rather than a plain host name: the
# batch play's `hosts:` is the plan's list of names.
_PATTERN_CHARS = set("!&~*?[]:,")


def rollout_plan(hosts: list[dict], rings=None, site_max_unavailable=1, overrides=None, group_names=()) -> dict:
    """Order and batch the hosts of a rollout.

    hosts: `rollout_host` dicts (name, rings, ring, site, serial, max_fail_percentage) of
    the hosts in scope, in inventory order; one with `reachable: false` (unreachable at
    the start) is left out of every batch and listed in "unreachable" (site percentages
    still count it: it is a host of its site). rings: ring names in rollout order (default:
    the hosts' `rings`, which must agree). site_max_unavailable: at most this many hosts
    (or this percentage of a site's hosts) of one site update at once. overrides:
    {ring: {serial, max_fail_percentage}} from extra vars. group_names: the inventory's
    groups (a host named like one could not be addressed by name).

    Any number of rings. Returns
    {"rings": [{name, hosts, batches, serial, max_fail_percentage}],
     "batches": [{index, ring, ring_index, first_in_ring, hosts, max_fail_percentage}],
     "batch_sizes": [len of each batch, for the batch play's `serial`],
     "order": [every planned host, batch after batch], "batch_of": {host: batch index},
     "unplaced": [hosts in no listed ring], "unreachable": [hosts left out],
     "empty_rings": [listed rings with no host to update]}.
    """
    overrides = overrides or {}
    if rings is None:
        seen = {tuple(host["rings"]) for host in hosts if "rings" in host}
        if len(seen) > 1:
            views = "; ".join(
                f"{', '.join(view)} ({next(h['name'] for h in hosts if tuple(h.get('rings', ())) == view)})"
                for view in sorted(seen)
            )
            raise AnsibleFilterError(f"the hosts disagree on edgeml_rings (set it once, on a common group): {views}")
        rings = list(seen.pop()) if seen else list(DEFAULT_RINGS)
    rings = _rings(rings, "edgeml_rings")
    unknown = sorted(set(overrides) - set(rings))
    if unknown:
        raise AnsibleFilterError(
            f"rollout_ring_overrides names rings not in edgeml_rings {rings}: {', '.join(unknown)}"
        )
    clashing = sorted(
        host["name"]
        for host in hosts
        if _PATTERN_CHARS & set(str(host["name"])) or str(host["name"]) in set(group_names)
    )
    if clashing:
        raise AnsibleFilterError(
            "a rollout addresses hosts by name, and these names read as host patterns or groups: "
            f"{', '.join(clashing)}; rename them (none of !&~*?[]:, and no group's name)"
        )
    sites: dict[str, int] = {}
    for host in hosts:
        sites[host["site"]] = sites.get(host["site"], 0) + 1
    site_budget = {
        site: _count(site_max_unavailable, total, "edgeml_site_max_unavailable") for site, total in sites.items()
    }
    by_ring: dict[str, list[dict]] = {}
    unreachable = [host["name"] for host in hosts if host.get("reachable", True) in (False, "false", "False")]
    left_out = set(unreachable)
    for host in hosts:
        if host["name"] in left_out:
            continue
        by_ring.setdefault(host["ring"], []).append(host)
    planned, flat = [], []
    for ring in rings:
        members = by_ring.get(ring)
        if not members:
            continue
        settings = {**members[0], **overrides.get(ring, {})}
        serial = _count(settings.get("serial", 1), len(members), f"serial of ring {ring}")
        max_fail = _max_fail(settings.get("max_fail_percentage", 0), ring)
        batches = _batches(members, serial, site_budget)
        for number, batch in enumerate(batches):
            flat.append(
                {
                    "index": len(flat),
                    "ring": ring,
                    "ring_index": len(planned),
                    "first_in_ring": number == 0,
                    "hosts": batch,
                    "max_fail_percentage": max_fail,
                }
            )
        planned.append(
            {
                "name": ring,
                "hosts": [name for batch in batches for name in batch],
                "batches": batches,
                "serial": [len(batch) for batch in batches],
                "max_fail_percentage": max_fail,
            }
        )
    order = [name for batch in flat for name in batch["hosts"]]
    placed = set(order)
    return {
        "rings": planned,
        "batches": flat,
        "batch_sizes": [len(batch["hosts"]) for batch in flat],
        "order": order,
        "batch_of": {name: batch["index"] for batch in flat for name in batch["hosts"]},
        "unplaced": [host["name"] for host in hosts if host["name"] not in placed | left_out],
        "unreachable": unreachable,
        "empty_rings": [ring for ring in rings if not by_ring.get(ring)],
    }


def batch_exceeds(failed: int, total: int, max_fail_percentage: float) -> bool:
    """Ansible's rule: a batch fails when MORE than max_fail_percentage of it failed."""
    return total > 0 and failed * 100.0 / total > float(max_fail_percentage)


def rollout_judge(batch_host_vars: list[Mapping], batch: Mapping) -> dict:
    """Judge one batch (its hosts' hostvars, and its entry of the plan's `batches`):
    {failed: [host: outcome], exceeds: bool, reason: text for the halt}."""
    failed = [
        f"{vars_.get('inventory_hostname')}: {vars_.get('rollout_outcome') or Outcome.NOT_STARTED}"
        for vars_ in batch_host_vars
        if (vars_.get("rollout_outcome") or Outcome.NOT_STARTED) not in BATCH_OK
    ]
    total, threshold = len(batch_host_vars), batch["max_fail_percentage"]
    return {
        "failed": failed,
        "exceeds": batch_exceeds(len(failed), total, threshold),
        "reason": (
            f"ring {batch['ring']} (batch {batch['index'] + 1}): {len(failed)} of {total} hosts failed "
            f"({'; '.join(failed)}), more than the allowed {threshold:g}%"
        ),
    }


def rollout_failure(failed_result, alive_result=None, deploy_result=None, batch_timeout=None) -> dict:
    """A host's record after its deployment failed (the rescue of the batch play).

    failed_result: ansible_failed_result; alive_result: the rescue's reachability check
    (a ping with its own timeout); deploy_result: model_deployment_result if the role set
    one (a refused bundle sets it itself; a host that never reached the module has none).
    Returns {outcome, old_version, new_version, gates, rollback_seconds, reason}."""
    failed_result = failed_result or {}
    alive_result = alive_result or {}
    deploy = deploy_result or {}
    model = deploy.get("model") or {}
    rollback = deploy.get("rollback") or {}
    reason = rollback.get("reason") or deploy.get("msg") or failed_result.get("msg") or "failed"
    if failed_result.get("timedout") or alive_result.get("timedout"):
        outcome = Outcome.TIMED_OUT
        where = "its deployment" if failed_result.get("timedout") else "the reachability check after a failure"
        reason = (
            f"{where} did not finish within the batch deadline (rollout_batch_timeout={batch_timeout} s): "
            "the host accepted the connection and then stopped answering. It may finish or restore on its "
            f"own when it answers again; rerun the rollout to converge it. ({failed_result.get('msg') or reason})"
        )
    elif alive_result.get("unreachable") or failed_result.get("unreachable"):
        outcome = Outcome.UNREACHABLE
    else:
        outcome = deploy.get("outcome") or Outcome.FAILED
    return {
        "outcome": outcome,
        "old_version": model.get("previous_version"),
        "new_version": model.get("serving_version"),
        "gates": list(deploy.get("gates") or []),
        "rollback_seconds": rollback.get("seconds"),
        "reason": reason,
    }


def _gate_text(gate: dict) -> str:
    measured = gate.get("measured") or {}
    values = ", ".join(f"{key}={value}" for key, value in sorted(measured.items()))
    return f"{gate.get('name')}:{'ok' if gate.get('passed') else 'FAIL'}" + (f" ({values})" if values else "")


def rollout_row(host_vars: Mapping) -> dict:
    """One host's line of the rollout summary, from its hostvars."""
    gates = list(host_vars.get("rollout_gates") or [])
    describe = host_vars.get("rollout_describe") or {}
    return {
        "host": host_vars.get("inventory_hostname"),
        "ring": describe.get("ring") or "-",
        "site": describe.get("site") or "-",
        "model": host_vars.get("edgeml_model_name"),
        "attempted_version": host_vars.get("rollout_attempted_version"),
        "old_version": host_vars.get("rollout_old_version"),
        "new_version": host_vars.get("rollout_new_version"),
        "outcome": host_vars.get("rollout_outcome") or Outcome.NOT_STARTED,
        "reason": host_vars.get("rollout_reason"),
        "rollback_seconds": host_vars.get("rollout_rollback_seconds"),
        # From the start of the host's batch to its deployment's end (or failure).
        "seconds": host_vars.get("rollout_seconds"),
        "gates": gates,
        "gates_text": "; ".join(_gate_text(gate) for gate in gates),
    }


def rollout_summary(rows: list[Mapping], halted=False, halt_reason=None, unreachable="fail", pause=None) -> dict:
    """The verdict of a run from its rows: {completed, pending: [hosts], paused: [hosts],
    failed: ["host: outcome"], status: one line}. Pending hosts do not fail a run under
    rollout_unreachable: pending; any other outcome outside DONE does. pause: the pause
    record (pause_record) that stopped the run before some of its batches, or None."""
    if unreachable not in UNREACHABLE_MODES:
        raise AnsibleFilterError(
            f"rollout_unreachable must be one of {', '.join(UNREACHABLE_MODES)}, got {unreachable!r}"
        )
    pending = [row["host"] for row in rows if row["outcome"] == Outcome.PENDING]
    allowed = DONE + ((Outcome.PENDING,) if unreachable == "pending" else ())
    paused = [row["host"] for row in rows if row["outcome"] == Outcome.PAUSED]
    allowed += (Outcome.PAUSED,)  # counted below: a paused run is not completed, nor failed
    failed = [f"{row['host']}: {row['outcome']}" for row in rows if row["outcome"] not in allowed]
    completed = not halted and not failed and not paused
    if halted:
        status = f"HALTED: {halt_reason}"
    elif paused:
        status = (
            f"PAUSED: {(pause or {}).get('reason') or 'rollouts are paused'} (since {(pause or {}).get('paused_at')});"
            f" {len(paused)} host(s) not started: {', '.join(paused)}."
            + (f" Failed: {'; '.join(failed)}." if failed else "")
            + " Hosts already updated keep the new version. When the cause is understood, run the same command"
            " with -e rollout_resume=true: it lifts the pause and updates the hosts not started"
        )
    elif failed:
        status = f"did not complete: {'; '.join(failed)}"
    else:
        status = "completed"
    if pending:
        status += (
            f"; {len(pending)} host(s) pending (unreachable at the start): {', '.join(pending)}. When they are back,"
            " run the same command again: hosts already on the version come out unchanged, the pending ones"
            f" are updated (or add --limit {','.join(pending)})"
        )
    return {"completed": completed, "pending": pending, "paused": paused, "failed": failed, "status": status}


def pause_file(host_vars: Mapping) -> str:
    """The fleet's rollout pause: `rollout_pause_file`, else rollout-paused.json in the
    control node user's state directory ($XDG_STATE_HOME/edgeml-fleet, by default
    ~/.local/state/edgeml-fleet), where the rulebook's pause action and every rollout run by
    that user find it. Not beside the inventory: ansible-rulebook runs its playbooks on a
    temporary copy of the inventory."""
    if host_vars.get("rollout_pause_file"):
        return os.path.expanduser(str(host_vars["rollout_pause_file"]))
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return f"{state}/edgeml-fleet/rollout-paused.json"


def pause_record(content) -> dict | None:
    """The pause file's content (JSON text, '' or None when there is no pause) as a record
    {reason, paused_at}; a file that is not the JSON object pause_rollouts.yml writes still
    pauses, with a reason that says so (a pause is never ignored because it is malformed)."""
    if content is None or (isinstance(content, str) and not content.strip()):
        return None
    try:
        record = json.loads(content) if isinstance(content, str) else content
    except ValueError:
        record = None
    if not isinstance(record, Mapping):
        return {"reason": "the pause file is not the JSON object pause_rollouts.yml writes", "paused_at": None}
    return {"reason": record.get("reason") or "paused (no reason given)", "paused_at": record.get("paused_at")}


class FilterModule:
    """Rollout planning and reporting filters."""

    def filters(self):
        return {
            "rollout_host": rollout_host,
            "rollout_plan": rollout_plan,
            "rollout_batch_exceeds": batch_exceeds,
            "rollout_judge": rollout_judge,
            "rollout_failure": rollout_failure,
            "rollout_row": rollout_row,
            "rollout_summary": rollout_summary,
            "rollout_outcomes": rollout_outcomes,
            "report_dir": report_dir,
            "rollout_pause_file": pause_file,
            "rollout_pause_record": pause_record,
        }
