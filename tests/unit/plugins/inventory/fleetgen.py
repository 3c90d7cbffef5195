"""Generated fleets for the fleet inventory plugin's tests and bench/inventory_bench.py."""

from __future__ import annotations

import csv
import random
from pathlib import Path


def site_sizes(devices: int, sites: int, seed: int = 11) -> list[int]:
    """`sites` uneven site sizes (about 1:15 between the smallest and the largest) adding up to `devices`."""
    rnd = random.Random(seed)
    weights = [rnd.uniform(0.2, 3.0) for _ in range(sites)]
    sizes = [max(1, int(devices * weight / sum(weights))) for weight in weights]
    sizes[sizes.index(max(sizes))] += devices - sum(sizes)
    return sizes


def fleet(devices: int = 10_000, sites: int = 40, seed: int = 11) -> list[dict]:
    """Devices named like a CMDB export's, each with a site and a hardware label."""
    rnd = random.Random(seed)
    rows = []
    for index, size in enumerate(site_sizes(devices, sites, seed)):
        for number in range(size):
            rows.append({"name": f"edge-{index:02d}-{number:05d}", "host": f"10.{index}.{number // 250}.{number % 250}",
                         "port": 22, "site": f"site{index:02d}", "hardware": rnd.choice(["jetson", "rpi5", "nuc"])})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
