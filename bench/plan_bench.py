"""Rollout planning benchmark (not a test): how long planning a 10,000-host rollout takes.

A 10,000-device fleet (40 sites of uneven sizes, tests/unit/plugins/inventory/fleetgen.py)
is written as a CSV device list with an `edgeml.fleet.fleet` inventory file beside it
(rings canary 1% / wave1 10% / wave2 the rest, with the lab's serial and failure
thresholds as ring vars), then, in one process, as `ansible-playbook` would:

1. parse: Ansible's InventoryManager builds the inventory (the `auto` plugin picks ours);
2. vars: each host's variables as a play sees them (VariableManager: host, group and
   ring vars), reduced to what deploy_model.yml hands the planner (name, ring, site,
   serial, max_fail_percentage);
3. plan: the collection's planning filter (plugins/filter/rollout.py `rollout_plan`) cuts
   the rings into batches under the per-site budget.

With --playbook it also runs `ansible-playbook` on a one-play playbook that plans on
localhost from every host's hostvars with the same filter (no connection to any host),
and reports its wall time: parse, variables and plan, plus Ansible's start-up.

    .venv/bin/python bench/plan_bench.py [--devices 10000] [--sites 40] [--repeat 3] [--playbook]

Prints the best of --repeat runs per phase (target: under 5 s for the whole plan) and
writes them to bench/results/plan_bench.json.
"""

from __future__ import annotations

import argparse
import datetime
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, bench/ is on sys.path: inventory_bench sets up the collection loader on import.
import inventory_bench
import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.vars.manager import VariableManager

ROOT, best = inventory_bench.ROOT, inventory_bench.best

from ansible_collections.edgeml.fleet.plugins.filter import rollout as rollout_filters  # noqa: E402
from ansible_collections.edgeml.fleet.tests.unit.plugins.inventory.fleetgen import (  # noqa: E402
    fleet,
    write_csv,
)

TARGET_SECONDS = 5.0
# The lab's ring settings (roles/lab/defaults/main.yml) as ring vars of the plugin.
RINGS = [
    {"name": "canary", "percent": 1, "vars": {"edgeml_ring_serial": 1, "edgeml_ring_max_fail_percentage": 0}},
    {"name": "wave1", "percent": 10, "vars": {"edgeml_ring_serial": "50%", "edgeml_ring_max_fail_percentage": 49}},
    {"name": "wave2", "vars": {"edgeml_ring_serial": "50%", "edgeml_ring_max_fail_percentage": 49}},
]
# The planner's inputs as deploy_model.yml derives them from each host's variables, but on
# localhost for all hosts at once (deploy_model.yml derives them in a task on every host).
PLAN_PLAYBOOK = """\
- name: Plan a rollout from the inventory alone (no host is contacted)
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Plan
      vars:
        described: "{{ groups['edge'] | map('extract', hostvars) | map('edgeml.fleet.rollout_host') | list }}"
      ansible.builtin.set_fact:
        plan_batches: >-
          {{ (described | edgeml.fleet.rollout_plan(none, SITE_BUDGET)).rings
             | map(attribute='batches') | map('length') | list }}
"""


def describe(inventory: InventoryManager) -> list[dict]:
    """What deploy_model.yml hands rollout_plan: each host's variables as a play sees them,
    through the collection's rollout_host filter (or, for the filter before issue 11, the
    same five keys deploy_model.yml derived itself)."""
    variables = VariableManager(loader=inventory._loader, inventory=inventory)
    rollout_host = getattr(rollout_filters, "rollout_host", None)
    described = []
    for host in inventory.groups["edge"].get_hosts():
        hostvars = variables.get_vars(host=host, include_hostvars=False)
        described.append(rollout_host(hostvars) if rollout_host else {
            "name": host.name,
            "ring": str(hostvars["edgeml_ring"]),
            "site": str(hostvars.get("edgeml_site", "all")),
            "serial": hostvars.get("edgeml_ring_serial", 1),
            "max_fail_percentage": hostvars.get("edgeml_ring_max_fail_percentage", 0),
        })
    return described


def plan(inventory: InventoryManager, described: list[dict], rings: list[str], site_budget) -> dict:
    """rollout_plan as deploy_model.yml calls it (with the inventory's group names when it takes them)."""
    if "group_names" in inspect.signature(rollout_filters.rollout_plan).parameters:
        return rollout_filters.rollout_plan(described, rings, site_budget, {}, list(inventory.groups))
    return rollout_filters.rollout_plan(described, rings, site_budget)


def run_playbook(work: Path, config: Path, site_budget) -> tuple[float, list[int]]:
    playbook = work / "plan.yml"
    playbook.write_text(PLAN_PLAYBOOK.replace("SITE_BUDGET", json.dumps(str(site_budget))))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    start = time.perf_counter()
    result = subprocess.run(
        [Path(sys.executable).parent / "ansible-playbook", "-i", str(config), str(playbook)],
        capture_output=True, text=True, cwd=ROOT, env=env, check=False,
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"ansible-playbook failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-2000:]}")
    report = json.loads(result.stdout[result.stdout.index("{"):])
    (task,) = report["plays"][0]["tasks"]
    return seconds, task["hosts"]["localhost"]["ansible_facts"]["plan_batches"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--sites", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--site-max-unavailable", default="1",
                        help="edgeml_site_max_unavailable: a count or a percentage (default 1, as the lab)")
    parser.add_argument("--playbook", action="store_true", help="also time ansible-playbook planning on localhost")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "plan_bench.json")
    args = parser.parse_args()
    budget = args.site_max_unavailable

    planner = rollout_filters.rollout_plan
    print(f"rollout_plan{inspect.signature(planner)}: {inspect.getdoc(planner).splitlines()[0]}")
    rows = fleet(args.devices, args.sites)
    with tempfile.TemporaryDirectory(prefix="edgeml-plan-bench-") as tmp:
        work = Path(tmp)
        write_csv(work / "devices.csv", rows)
        config = work / "bench.fleet.yml"
        config.write_text(yaml.safe_dump({"plugin": "edgeml.fleet.fleet", "rings": RINGS,
                                          "source": {"type": "csv", "path": "devices.csv"}}, sort_keys=False))

        parse_s, inventory = best(args.repeat, lambda: InventoryManager(loader=DataLoader(), sources=[str(config)]))
        hosts = len(inventory.groups["edge"].get_hosts())
        assert hosts == args.devices, f"{hosts} hosts parsed"
        rings = list(inventory.groups["edge"].get_vars()["edgeml_rings"])
        vars_s, described = best(args.repeat, lambda: describe(inventory))
        plan_s, planned = best(args.repeat, lambda: plan(inventory, described, rings, budget))
        total = parse_s + vars_s + plan_s
        assert not planned["unplaced"], planned["unplaced"][:5]
        assert sum(len(ring["hosts"]) for ring in planned["rings"]) == args.devices

        results = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "load_average": [round(load, 2) for load in os.getloadavg()],
                        "python": platform.python_version()},
            "devices": args.devices, "sites": args.sites, "repeat": args.repeat,
            "site_max_unavailable": budget, "rings": RINGS,
            "seconds": {"parse": round(parse_s, 3), "vars": round(vars_s, 3), "plan": round(plan_s, 3),
                        "total": round(total, 3)},
            "target_seconds": TARGET_SECONDS,
            "plan": [{"ring": ring["name"], "hosts": len(ring["hosts"]), "batches": len(ring["batches"]),
                      "largest_batch": max(ring["serial"])} for ring in planned["rings"]],
        }
        print(f"{args.devices:,} devices in {args.sites} sites, site budget {budget}, best of {args.repeat}:")
        print(f"  parse (InventoryManager, edgeml.fleet.fleet, CSV): {parse_s:.2f} s")
        print(f"  vars (each host's variables as a play sees them):  {vars_s:.2f} s")
        print(f"  plan (edgeml.fleet.rollout_plan):                   {plan_s:.2f} s")
        verdict = "under" if total < TARGET_SECONDS else "OVER"
        print(f"  total: {total:.2f} s ({verdict} the {TARGET_SECONDS:.0f} s target)")
        for ring in results["plan"]:
            print(f"  ring {ring['ring']}: {ring['hosts']:,} hosts in {ring['batches']} batches"
                  f" (largest {ring['largest_batch']})")

        if args.playbook and not hasattr(rollout_filters, "rollout_host"):
            print("  ansible-playbook: not run (this rollout filter has no rollout_host to derive hosts with)")
        elif args.playbook:
            seconds, batches = run_playbook(work, config, budget)
            assert batches == [ring["batches"] for ring in results["plan"]], (batches, results["plan"])
            results["seconds"]["ansible_playbook"] = round(seconds, 3)
            print(f"  ansible-playbook, planning on localhost from hostvars (one run, with start-up): {seconds:.2f} s")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}")


if __name__ == "__main__":
    main()
