"""The example production inventory parses and has every group the playbooks need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
INVENTORY = ROOT / "inventories" / "example"
ANSIBLE_INVENTORY = Path(sys.executable).with_name("ansible-inventory")


@pytest.fixture(scope="module")
def inventory():
    listing = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", INVENTORY, "--list", "--export"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    return json.loads(listing.stdout)


def _hosts(inventory, group):
    """Every host of a group, through its children."""
    entry = inventory.get(group, {})
    hosts = set(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts |= _hosts(inventory, child)
    return hosts


def test_graph_parses():
    graph = subprocess.run(
        [ANSIBLE_INVENTORY, "-i", INVENTORY, "--graph"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    assert "@edge:" in graph.stdout
    assert "[WARNING]" not in graph.stderr


@pytest.mark.parametrize(
    "group",
    ["edge", "canary", "wave1", "wave2", "rhel_edge", "rhel_microshift", "debian",
     "podman_serving", "microshift_serving"],
)
def test_groups_the_playbooks_need_have_hosts(inventory, group):
    assert _hosts(inventory, group), f"group {group} is missing or empty"


def test_every_edge_host_is_in_exactly_one_ring_and_one_site(inventory):
    rings = inventory["all"]["vars"]["edgeml_rings"]
    sites = [group for group in inventory if group.startswith("site_")]
    assert len(sites) >= 2
    for host in _hosts(inventory, "edge"):
        assert sum(host in _hosts(inventory, ring) for ring in rings) == 1, host
        assert sum(host in _hosts(inventory, site) for site in sites) == 1, host


def test_every_edge_host_has_one_serving_target(inventory):
    podman, microshift = _hosts(inventory, "podman_serving"), _hosts(inventory, "microshift_serving")
    assert not podman & microshift
    assert podman | microshift == _hosts(inventory, "edge")


def test_rings_and_per_group_versions_resolve_per_host():
    def host_vars(host):
        out = subprocess.run(
            [ANSIBLE_INVENTORY, "-i", INVENTORY, "--host", host],
            check=True, capture_output=True, text=True, cwd=ROOT,
        )
        return json.loads(out.stdout)

    canary, wave2 = host_vars("kiosk-ber-01"), host_vars("camera-osl-02")
    assert canary["edgeml_rings"] == ["canary", "wave1", "wave2"]
    assert canary["edgeml_ring_max_fail_percentage"] == 0
    assert canary["edgeml_model_version"] != wave2["edgeml_model_version"]
    assert canary["edgeml_serving_target"] == "podman"
    assert host_vars("gateway-lyo-01")["edgeml_serving_target"] == "kubernetes"
