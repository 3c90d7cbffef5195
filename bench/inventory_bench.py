"""Fleet inventory benchmark (not a test): how long edgeml.fleet.fleet takes on big fleets.

- parse time of a 10,000-device fleet (40 sites of uneven sizes) as Ansible builds the
  inventory (InventoryManager, the `auto` plugin picking ours), from a CSV and from a YAML
  device list, and with keyed_groups, compose and groups (templating per host);
- the time to compute rings (balanced per site, with the fleet totals rounded too) for
  100,000 devices over 400 sites, without Ansible.

    .venv/bin/python bench/inventory_bench.py [--devices 10000] [--repeat 3]

Prints the best of --repeat runs for each (the target for the 10,000-device parse is under 3 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ansible.inventory.manager import InventoryManager
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader

ROOT = Path(__file__).resolve().parents[1]
init_plugin_loader([str(ROOT / ".collections")])  # before any ansible_collections import

from ansible_collections.edgeml.fleet.plugins.module_utils._fleet_rings import (  # noqa: E402
    assign_rings,
    parse_rings,
)
from ansible_collections.edgeml.fleet.tests.unit.plugins.inventory.fleetgen import (  # noqa: E402
    fleet,
    write_csv,
)

RINGS = [{"name": "canary", "percent": 1}, {"name": "wave1", "percent": 10}, {"name": "wave2"}]
CONSTRUCTED = {
    "keyed_groups": [{"key": "edgeml_labels.hardware", "prefix": "hw"}],
    "compose": {"ansible_user": "'edge'"},
    "groups": {"early": "edgeml_ring != 'wave2'"},
}


def best(repeat: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    rows = fleet(args.devices, 40)
    with tempfile.TemporaryDirectory(prefix="edgeml-inventory-bench-") as tmp:
        work = Path(tmp)
        write_csv(work / "devices.csv", rows)
        (work / "devices.yml").write_text(yaml.safe_dump(rows, sort_keys=False))
        cases = {
            "CSV": {"source": {"type": "csv", "path": "devices.csv"}},
            "YAML": {"source": {"type": "yaml", "path": "devices.yml"}},
            "CSV + keyed_groups, compose, groups": {"source": {"type": "csv", "path": "devices.csv"}, **CONSTRUCTED},
        }
        print(f"edgeml.fleet.fleet, {args.devices:,} devices in 40 sites, best of {args.repeat}:")
        for number, (label, options) in enumerate(cases.items()):
            config = work / f"bench{number}.fleet.yml"
            config.write_text(yaml.safe_dump({"plugin": "edgeml.fleet.fleet", "rings": RINGS, **options}))
            seconds, inventory = best(args.repeat, lambda config=config: InventoryManager(
                loader=DataLoader(), sources=[str(config)]))
            hosts = len(inventory.groups["edge"].get_hosts())
            assert hosts == args.devices, f"{label}: {hosts} hosts parsed"
            print(f"  parse, {label}: {seconds:.2f} s")

    rings = parse_rings(RINGS)
    big = [(row["name"], row["site"], None) for row in fleet(100_000, 400)]
    seconds, assignment = best(args.repeat, lambda: assign_rings(big, rings))
    assert len(assignment) == 100_000
    print(f"rings for 100,000 devices in 400 sites: {seconds:.2f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
