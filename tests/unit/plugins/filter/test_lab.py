"""The lab's layout and mirror filters."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.lab import apt_mirror, lab_fleet_layout

PORTS = {"prefix": "lab", "ssh_port_base": 2220, "model_port_base": 18080}
RINGS = [
    {"name": "canary", "hosts": 1},
    {"name": "wave1"},
    {"name": "wave2"},
]


@pytest.mark.parametrize(
    ("count", "rings"),
    [
        (1, ["canary"]),
        (2, ["canary", "wave1"]),
        (4, ["canary", "wave1", "wave1", "wave2"]),
        (7, ["canary", "wave1", "wave1", "wave1", "wave2", "wave2", "wave2"]),
        (16, ["canary"] + ["wave1"] * 8 + ["wave2"] * 7),
    ],
)
def test_hosts_fill_rings_in_order(count, rings):
    layout = lab_fleet_layout(count, RINGS, ["site_a", "site_b"], **PORTS)
    assert [host["ring"] for host in layout] == rings


def test_hosts_are_named_numbered_and_spread_over_sites():
    layout = lab_fleet_layout(
        3, RINGS, ["north", "south"], prefix="edgeml-lab", ssh_port_base=3000, model_port_base=9000
    )
    assert layout[0] == {
        "name": "edge-1",
        "container": "edgeml-lab-edge-1",
        "volume": "edgeml-lab-edge-1-storage",
        "ssh_port": 3001,
        "model_port": 9001,
        "site": "north",
        "ring": "canary",
    }
    assert [host["site"] for host in layout] == ["north", "south", "north"]
    assert len({host["ssh_port"] for host in layout} | {host["model_port"] for host in layout}) == 6


@pytest.mark.parametrize(
    ("count", "rings", "sites", "message"),
    [
        (0, RINGS, ["a"], "at least 1"),
        (1, [{"name": "canary", "hosts": 2}, {"name": "wave1"}], ["a"], "raise lab_host_count"),
        (3, [{"name": "canary", "hosts": 1}], ["a"], "in no ring"),
        (3, [], ["a"], "non-empty list"),
        (3, [{"hosts": 1}], ["a"], "non-empty list"),
        (3, RINGS, [], "at least one site"),
    ],
)
def test_bad_layouts_say_what_to_change(count, rings, sites, message):
    with pytest.raises(AnsibleFilterError, match=message):
        lab_fleet_layout(count, rings, sites, **PORTS)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian/
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize(
    ("text", "mirror"),
    [
        (DEB822, "http://mirror.example/debian"),
        ("deb http://ftp.example/debian bookworm main\n", "http://ftp.example/debian"),
        (
            "deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian trixie main\n",
            "http://a.example/debian",
        ),
        (
            "deb http://security.example/debian-security bookworm-security main\n"
            "deb http://b.example/debian bookworm main\n",
            "http://b.example/debian",
        ),
        (
            "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n" + DEB822,
            "http://mirror.example/debian",
        ),
    ],
)
def test_apt_mirror_reads_both_source_formats(text, mirror):
    assert apt_mirror(text) == mirror


@pytest.mark.parametrize("text", ["", "# deb http://x.example/debian bookworm main\n", "deb-src http://x/ a b\n"])
def test_apt_mirror_without_a_mirror_says_how_to_set_one(text):
    with pytest.raises(AnsibleFilterError, match="lab_debian_mirror"):
        apt_mirror(text)
