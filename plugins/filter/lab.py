# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE)
"""Filters the lab role uses to lay out its fleet and find the Debian mirror."""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError


def _split_ring_sizes(host_count: int, rings: list[dict]) -> list[int]:
    fixed = sum(int(ring.get("hosts", 0)) for ring in rings if "hosts" in ring)
    shared = [ring for ring in rings if "hosts" not in ring]
    if fixed > host_count:
        raise AnsibleFilterError(
            f"the rings ask for {fixed} hosts of fixed size but the lab has only {host_count}: "
            "raise lab_host_count or lower a ring's 'hosts'"
        )
    remaining = host_count - fixed
    base, extra = divmod(remaining, len(shared)) if shared else (0, 0)
    sizes = []
    for ring in rings:
        if "hosts" in ring:
            sizes.append(int(ring["hosts"]))
        else:
            sizes.append(base + (1 if extra > 0 else 0))
            extra -= 1
    if not shared and remaining:
        raise AnsibleFilterError(f"{remaining} hosts are in no ring: give one ring no 'hosts' so it takes the rest")
    return sizes


def lab_fleet_layout(
    host_count: int,
    rings: list[dict],
    sites: list[str],
    *,
    prefix: str,
    ssh_port_base: int,
    model_port_base: int,
) -> list[dict]:
    """Place hosts edge-1..edge-N in rings (in order) and sites (round robin)."""
    host_count = int(host_count)
    if host_count < 1:
        raise AnsibleFilterError("lab_host_count must be at least 1")
    if not rings or any("name" not in ring for ring in rings):
        raise AnsibleFilterError("lab_rings must be a non-empty list of dicts with a 'name'")
    if not sites:
        raise AnsibleFilterError("lab_sites must name at least one site")
    sizes = _split_ring_sizes(host_count, rings)
    ring_of_host = [name for ring, size in zip(rings, sizes) for name in [ring["name"]] * size]
    hosts = []
    for index, ring_name in enumerate(ring_of_host, start=1):
        name = f"edge-{index}"
        hosts.append(
            {
                "name": name,
                "container": f"{prefix}-{name}",
                "volume": f"{prefix}-{name}-storage",
                "ssh_port": int(ssh_port_base) + index,
                "model_port": int(model_port_base) + index,
                "site": sites[(index - 1) % len(sites)],
                "ring": ring_name,
            }
        )
    return hosts


_ONE_LINE = re.compile(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", re.MULTILINE)
_DEB822_STANZA = re.compile(r"(?:^|\n\s*\n)(.*?)(?=\n\s*\n|\Z)", re.DOTALL)


def apt_mirror(sources_text: str) -> str:
    """Return the first Debian archive URI (not security) found in apt sources text.

    Reads both the one-line format (sources.list) and deb822 (*.sources) stanzas.
    """
    candidates = []
    for stanza in _DEB822_STANZA.findall(sources_text or ""):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line:
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("uris"):
            candidates.extend((uri, fields.get("suites", "")) for uri in fields["uris"].split())
    candidates.extend(_ONE_LINE.findall(sources_text or ""))
    for uri, suites in candidates:
        if "security" not in uri and "security" not in suites:
            return uri.rstrip("/")
    raise AnsibleFilterError(
        "no Debian archive mirror found in the apt sources: set lab_debian_mirror to the mirror URL to use"
    )


class FilterModule:
    """Lab layout filters."""

    def filters(self):
        return {"lab_fleet_layout": lab_fleet_layout, "apt_mirror": apt_mirror}
