# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Plan a rollout: rings in order, each cut into batches that respect a per-site budget."""

from __future__ import annotations

import math

from ansible.errors import AnsibleFilterError


def _count(value, total: int, what: str) -> int:
    """A count from a number or a percentage string of total; at least 1."""
    text = str(value).strip()
    try:
        if text.endswith("%"):
            return max(1, math.floor(total * float(text[:-1]) / 100))
        count = int(text)
    except ValueError:
        raise AnsibleFilterError(f"{what} must be a number or a percentage like '25%', got {value!r}") from None
    if count < 1:
        raise AnsibleFilterError(f"{what} must be at least 1, got {value!r}")
    return count


def _batches(hosts: list[dict], serial: int, site_budget: dict[str, int]) -> list[list[str]]:
    """Greedy batches in host order: at most `serial` hosts, at most the budget per site."""
    remaining = list(hosts)
    batches = []
    while remaining:
        batch, per_site = [], {}
        for host in list(remaining):
            site = host["site"]
            if len(batch) < serial and per_site.get(site, 0) < site_budget[site]:
                batch.append(host["name"])
                per_site[site] = per_site.get(site, 0) + 1
                remaining.remove(host)
        batches.append(batch)
    return batches


def rollout_plan(hosts: list[dict], rings: list[str], site_max_unavailable=1, overrides=None) -> dict:
    """Order and batch the hosts of a rollout.

    hosts: dicts with name, ring, site, serial (the ring's batch size, number or
    percentage of the ring) and max_fail_percentage, in inventory order.
    rings: ring names in rollout order. site_max_unavailable: at most this many hosts
    (or this percentage of a site's hosts) of one site update at once.
    overrides: {ring: {serial, max_fail_percentage}} from extra vars.
    Returns {"rings": [{name, group, hosts, batches, serial, max_fail_percentage}],
    "unplaced": [hosts in no listed ring]}.
    """
    overrides = overrides or {}
    sites: dict[str, int] = {}
    for host in hosts:
        sites[host["site"]] = sites.get(host["site"], 0) + 1
    site_budget = {
        site: _count(site_max_unavailable, total, "edgeml_site_max_unavailable") for site, total in sites.items()
    }
    planned = []
    for ring in rings:
        members = [host for host in hosts if host["ring"] == ring]
        if not members:
            continue
        settings = {**members[0], **overrides.get(ring, {})}
        serial = _count(settings.get("serial", 1), len(members), f"serial of ring {ring}")
        max_fail = settings.get("max_fail_percentage", 0)
        try:
            max_fail = float(max_fail)
        except (TypeError, ValueError):
            raise AnsibleFilterError(f"max_fail_percentage of ring {ring} must be a number, got {max_fail!r}") from None
        if not 0 <= max_fail <= 100:
            raise AnsibleFilterError(f"max_fail_percentage of ring {ring} must be within 0..100, got {max_fail}")
        batches = _batches(members, serial, site_budget)
        planned.append(
            {
                "name": ring,
                "group": f"rollout_ring_{len(planned)}",
                "hosts": [name for batch in batches for name in batch],
                "batches": batches,
                "serial": [len(batch) for batch in batches],
                "max_fail_percentage": max_fail,
            }
        )
    placed = {name for ring in planned for name in ring["hosts"]}
    return {"rings": planned, "unplaced": [host["name"] for host in hosts if host["name"] not in placed]}


def batch_exceeds(failed: int, total: int, max_fail_percentage: float) -> bool:
    """Ansible's rule: a batch fails when MORE than max_fail_percentage of it failed."""
    return total > 0 and failed * 100.0 / total > float(max_fail_percentage)


def _gate_text(gate: dict) -> str:
    measured = gate.get("measured") or {}
    values = ", ".join(f"{key}={value}" for key, value in sorted(measured.items()))
    return f"{gate.get('name')}:{'ok' if gate.get('passed') else 'FAIL'}" + (f" ({values})" if values else "")


def rollout_row(host_vars: dict) -> dict:
    """One host's line of the rollout summary, from its hostvars."""
    gates = list(host_vars.get("rollout_gates") or [])
    return {
        "host": host_vars.get("inventory_hostname"),
        "ring": (host_vars.get("rollout_describe") or {}).get("ring") or "-",
        "site": (host_vars.get("rollout_describe") or {}).get("site") or "-",
        "old_version": host_vars.get("rollout_old_version"),
        "new_version": host_vars.get("rollout_new_version"),
        "outcome": host_vars.get("rollout_outcome") or "not started",
        "reason": host_vars.get("rollout_reason"),
        "rollback_seconds": host_vars.get("rollout_rollback_seconds"),
        "gates": gates,
        "gates_text": "; ".join(_gate_text(gate) for gate in gates),
    }


class FilterModule:
    """Rollout planning filters."""

    def filters(self):
        return {"rollout_plan": rollout_plan, "rollout_batch_exceeds": batch_exceeds, "rollout_row": rollout_row}
