# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Rollout rings for a fleet: validated ring specs and a balanced, stable assignment.

Private to the collection (the ``edgeml.fleet.fleet`` inventory plugin uses it).
Stdlib and _common only. docs/inventory.md explains the scheme and measures its guarantees.

Within each site, every ring gets a target count: the floor or the ceiling of
``share * site size`` (within one host of its share), chosen across sites so that the
fleet's total per ring is the floor or ceiling of its share too (controlled rounding).
Devices are ordered by a SHA-256 of their name, and the rings take consecutive runs of
that order (the first ring the lowest hashes). A device may be *pinned* to a ring
(a label, by default ``ring``): pinned devices keep their ring and count toward its
target in their site, and the unpinned ones fill what is left, by hash. Pinning the current
assignment therefore makes additions move nobody, exactly.
"""

from __future__ import annotations

import hashlib
import re
import typing as t
from dataclasses import dataclass, field
from fractions import Fraction

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

# What Ansible accepts as a group name without rewriting it.
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HUNDRED = Fraction(100)


@dataclass(frozen=True)
class Ring:
    """One rollout ring: its group name, its share of each site (0..1), its group vars."""

    name: str
    share: Fraction
    vars: dict = field(default_factory=dict, hash=False, compare=False)


def _ring(entry: t.Any, where: str, last: bool, taken: list[Ring]) -> Ring:
    """One validated ring; `taken` are the rings before it."""
    if not isinstance(entry, dict):
        raise EdgeMLError(f"fleet: {where} must be a mapping, got {entry!r}.",
                          hint="Write each ring as {name: wave1, percent: 10}.")
    if not entry.get("name"):
        raise EdgeMLError(f"fleet: {where} has no name.",
                          hint="Give every ring a name (it becomes its group), e.g. {name: canary, percent: 1}.")
    name = str(entry["name"])
    if not _GROUP_NAME.match(name):
        raise EdgeMLError(f"fleet: ring name {name!r} ({where}) is not a valid group name.",
                          hint="Use letters, digits and underscores, starting with a letter, e.g. wave_1.")
    if name in (ring.name for ring in taken):
        raise EdgeMLError(f"fleet: ring {name!r} is listed twice.", hint="Give each ring a distinct name.")
    unknown = sorted(set(entry) - {"name", "percent", "vars"})
    if unknown:
        raise EdgeMLError(f"fleet: ring {name!r} has unknown keys {unknown}.",
                          hint="A ring takes name, percent and vars (its group vars).")
    ring_vars = entry.get("vars") or {}
    if not isinstance(ring_vars, dict):
        raise EdgeMLError(f"fleet: vars of ring {name!r} must be a mapping.",
                          hint="Example: vars: {edgeml_ring_serial: '50%'}")
    percent = entry.get("percent")
    if percent is None:
        if not last:
            raise EdgeMLError(f"fleet: ring {name!r} has no percent.",
                              hint="Every ring but the last needs a percent; the last may leave it out (the rest).")
        return Ring(name, 1 - sum((ring.share for ring in taken), Fraction(0)), dict(ring_vars))
    try:
        value = Fraction(str(percent))
    except (TypeError, ValueError):
        value = Fraction(-1)
    if not 0 <= value <= 100:
        raise EdgeMLError(f"fleet: percent of ring {name!r} is {percent!r}, not a number from 0 to 100.",
                          hint="Write a percentage without the % sign, e.g. percent: 10.")
    return Ring(name, value / _HUNDRED, dict(ring_vars))


def parse_rings(spec: t.Any) -> list[Ring]:
    """Validate the ``rings`` option: names, percentages (the last may take the rest)."""
    if not isinstance(spec, list) or not spec:
        raise EdgeMLError(
            "fleet: rings must be a non-empty list.",
            hint="Example: rings: [{name: canary, percent: 1}, {name: wave1, percent: 10}, {name: wave2}]",
        )
    rings: list[Ring] = []
    for index, entry in enumerate(spec):
        rings.append(_ring(entry, f"rings[{index}]", index == len(spec) - 1, rings))
        total = sum((ring.share for ring in rings), Fraction(0))
        if total > 1 or rings[-1].share < 0:
            listed = ", ".join(f"{ring.name} {float(ring.share * 100):g}%" for ring in rings if ring.share >= 0)
            over = sum((ring.share for ring in rings if ring.share >= 0), Fraction(0))
            raise EdgeMLError(f"fleet: the ring percentages add up to {float(over * 100):g}%, over 100% ({listed}).",
                              hint="Lower them so that they add up to at most 100, and leave out the last ring's "
                                   "percent so that it takes the rest.")
    if total != 1:
        raise EdgeMLError(f"fleet: the ring percentages add up to {float(total * 100):g}%, not 100%.",
                          hint="Leave out the last ring's percent (it takes the rest), or make them add up to 100.")
    return rings


def device_hash(name: str, seed: str = "") -> int:
    """A stable 64-bit position for a device: SHA-256 of seed and name (never Python's hash())."""
    return int.from_bytes(hashlib.sha256(f"{seed}{name}".encode()).digest()[:8], "big")


def apportion(size: int, rings: list[Ring], pinned: dict[str, int] | None = None) -> list[int]:
    """How many of `size` devices each ring gets: the floor or ceiling of its share.

    Largest remainder (Hamilton); ties go to the earlier ring. Pinned devices count
    toward their ring first; a ring that pins filled beyond its share gets no more, and
    the rest is apportioned among the others by how far each is below its share.
    """
    pinned = pinned or {}
    counts = [pinned.get(ring.name, 0) for ring in rings]
    free = size - sum(counts)
    ideal = [ring.share * size for ring in rings]
    # Every ring up to the floor of its share first, when the free devices suffice.
    floors = [max(0, int(ideal[i]) - counts[i]) for i in range(len(rings))]
    if sum(floors) <= free:
        counts = [counts[i] + floors[i] for i in range(len(rings))]
        free -= sum(floors)
    # The rest one by one to the ring furthest below its share (at most len(rings) steps
    # without pins; more only when pins crowd some rings).
    for _unused in range(free):
        best = max(range(len(rings)), key=lambda i: (ideal[i] - counts[i], -i))
        counts[best] += 1
    return [counts[i] - pinned.get(rings[i].name, 0) for i in range(len(rings))]


def controlled_rounding(sizes: dict[str, int], rings: list[Ring]) -> dict[str, list[int]]:
    """Ring counts per site: each the floor or ceiling of its share of the site, and the
    fleet's total per ring the floor or ceiling of its share of the fleet too.

    A two-way controlled rounding (it always exists: the table is totally unimodular).
    Each site first gets the floors and hands its remaining devices to the rings with the
    largest fractions that the fleet totals still allow; augmenting paths (a site moves an
    extra device from one ring to another) then bring every fleet total within its bounds.
    """
    count = len(rings)
    ideal = {site: [ring.share * size for ring in rings] for site, size in sizes.items()}
    floors = {site: [int(x) for x in row] for site, row in ideal.items()}
    fleet = [sum(ideal[site][r] for site in sizes) for r in range(count)]
    base = [sum(floors[site][r] for site in sizes) for r in range(count)]
    low = [int(fleet[r]) - base[r] for r in range(count)]
    high = [-int(-fleet[r]) - base[r] for r in range(count)]
    extra: dict[str, set[int]] = {}
    totals = [0] * count
    for site in sorted(sizes, key=lambda site: (-sizes[site], site)):
        fractional = sorted((r for r in range(count) if ideal[site][r] != floors[site][r]),
                            key=lambda r: (totals[r] >= high[r], floors[site][r] - ideal[site][r], r))
        chosen = set(fractional[:sizes[site] - sum(floors[site])])
        for r in chosen:
            totals[r] += 1
        extra[site] = chosen

    def move(donors: set[int], targets: set[int]) -> bool:
        # Breadth-first over rings: ring a -> site that has a's extra and could take b's.
        previous: dict[int, tuple[int, str] | None] = dict.fromkeys(donors)
        queue = list(donors)
        for ring in queue:
            if ring in targets:
                step = ring
                while previous[step] is not None:
                    source, site = previous[step]
                    extra[site].discard(source)
                    extra[site].add(step)
                    step = source
                return True
            for site, chosen in extra.items():
                if ring not in chosen:
                    continue
                for other in range(count):
                    if other not in previous and other not in chosen and ideal[site][other] != floors[site][other]:
                        previous[other] = (ring, site)
                        queue.append(other)
        return False

    for _unused in range(sum(sizes.values()) + 1):
        totals = [sum(r in chosen for chosen in extra.values()) for r in range(count)]
        over = {r for r in range(count) if totals[r] > high[r]}
        under = {r for r in range(count) if totals[r] < low[r]}
        if over:
            donors, targets = over, {r for r in range(count) if totals[r] < high[r]}
        elif under:
            donors, targets = {r for r in range(count) if totals[r] > low[r]}, under
        else:
            break
        if not move(donors, targets):  # pragma: no cover - the rounding always exists
            break
    return {site: [floors[site][r] + (r in extra[site]) for r in range(count)] for site in sizes}


def assign_rings(
    devices: t.Iterable[tuple[str, str, str | None]], rings: list[Ring], seed: str = ""
) -> dict[str, str]:
    """Ring of every device, from (name, site, pinned ring or None) triples.

    Balanced within each site and across the fleet (see the module docstring); a pinned
    ring must be one of `rings`. Deterministic: the same devices give the same rings in
    any order.
    """
    names = {ring.name for ring in rings}
    by_site: dict[str, list[tuple[str, str | None]]] = {}
    for name, site, pin in devices:
        if pin is not None and pin not in names:
            raise EdgeMLError(f"fleet: device {name!r} is pinned to ring {pin!r}, which is not one of {sorted(names)}.",
                              hint="Fix the device's ring label, or add the ring to rings.")
        by_site.setdefault(site, []).append((name, pin))
    # Sites without pins are rounded together, so that the fleet's totals are balanced too;
    # a site with pins fills what its pins leave of its own share.
    unpinned = {site: len(members) for site, members in by_site.items() if all(pin is None for _unused, pin in members)}
    counts = controlled_rounding(unpinned, rings)
    result: dict[str, str] = {}
    for site, members in by_site.items():
        pinned: dict[str, int] = {}
        free = []
        for name, pin in members:
            if pin is None:
                free.append(name)
            else:
                result[name] = pin
                pinned[pin] = pinned.get(pin, 0) + 1
        free.sort(key=lambda name: (device_hash(name, seed), name))
        start = 0
        for ring, size in zip(rings, counts.get(site) or apportion(len(members), rings, pinned)):
            for name in free[start:start + size]:
                result[name] = ring.name
            start += size
    return result


def site_imbalance(sites: dict[str, str], assignment: dict[str, str], rings: list[Ring]) -> list[str]:
    """Rings of a site more than one host away from their share (only pins can cause it)."""
    sizes: dict[str, int] = {}
    counts: dict[tuple[str, str], int] = {}
    for name, ring in assignment.items():
        site = sites[name]
        sizes[site] = sizes.get(site, 0) + 1
        counts[site, ring] = counts.get((site, ring), 0) + 1
    problems = []
    for site, size in sorted(sizes.items()):
        for ring in rings:
            count = counts.get((site, ring.name), 0)
            if abs(count - ring.share * size) >= 1:
                problems.append(f"site {site!r}: ring {ring.name} has {count} of {size} devices, "
                                f"{float(ring.share * size):.2f} expected")
    return problems
