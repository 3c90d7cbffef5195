"""lab: which podman containers and netavark forwards roles/lab/files/podman-dead-state.py
takes for dead.

The rules are the ``iptables -t nat -S`` lines netavark 1.4 wrote on this machine for a
lab whose processes were all killed, then for a new registry on the same host port.
The integration test test_lab_play.py kills a lab's processes for real and brings it back.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[4] / "roles" / "lab" / "files" / "podman-dead-state.py"
spec = importlib.util.spec_from_file_location("podman_dead_state", SCRIPT)
dead_state = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dead_state)

DN = "NETAVARK-DN-73E04E9CAAA06"
OLD_ID = "683f7f28225b57a96d50084bf82d455c84a6076b4c2a619d5ededbf0f6e80c5c"
COMMENT = '-m comment --comment "dnat name: edgeml-lab id: '
NEW_ID = "13310ec9690d25089329705e75c21696f91a2a372c2e594a8bd01c2463ff9c8f"
OLD_REGISTRY = f"-A {DN} -d 127.0.0.1/32 -p tcp -m tcp --dport 5000 -j DNAT --to-destination 10.89.0.47:5000"
OLD_SSH = [
    f"-A {DN} -s 10.89.0.0/24 -d 127.0.0.1/32 -p tcp -m tcp --dport 2221 -j NETAVARK-HOSTPORT-SETMARK",
    f"-A {DN} -s 127.0.0.1/32 -d 127.0.0.1/32 -p tcp -m tcp --dport 2221 -j NETAVARK-HOSTPORT-SETMARK",
    f"-A {DN} -d 127.0.0.1/32 -p tcp -m tcp --dport 2221 -j DNAT --to-destination 10.89.0.48:22",
    f'-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 2221 {COMMENT}{OLD_ID}" -j {DN}',
]
NEW_REGISTRY = [
    f"-A {DN} -s 10.89.1.0/24 -d 127.0.0.1/32 -p tcp -m tcp --dport 5000 -j NETAVARK-HOSTPORT-SETMARK",
    f"-A {DN} -s 127.0.0.1/32 -d 127.0.0.1/32 -p tcp -m tcp --dport 5000 -j NETAVARK-HOSTPORT-SETMARK",
    f"-A {DN} -d 127.0.0.1/32 -p tcp -m tcp --dport 5000 -j DNAT --to-destination 10.89.1.2:5000",
    f'-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 5000 {COMMENT}{NEW_ID}" -j {DN}',
]
OTHER = [
    "-P PREROUTING ACCEPT",
    f"-N {DN}",
    "-A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT",
    "-A POSTROUTING -s 10.89.0.0/24 -j NETAVARK-73E04E9CAAA06",
    "-A NETAVARK-73E04E9CAAA06 ! -d 224.0.0.0/4 -j MASQUERADE",
]
RULES = [*OTHER, OLD_REGISTRY, *OLD_SSH, *NEW_REGISTRY]


def test_forwards_to_dead_addresses_go_and_the_living_forward_on_the_same_port_stays():
    orphaned = dead_state.orphan_forwards(RULES, live_addresses={"10.89.1.2"})
    # The old registry forward shadowed the new one on port 5000 (it comes first).
    assert orphaned == [OLD_REGISTRY, *OLD_SSH]


def test_nothing_is_orphaned_while_its_container_lives():
    assert dead_state.orphan_forwards(RULES, live_addresses={"10.89.0.47", "10.89.0.48", "10.89.1.2"}) == []


def test_with_no_container_alive_every_forward_goes_and_nothing_else():
    orphaned = dead_state.orphan_forwards(RULES, live_addresses=set())
    assert orphaned == [OLD_REGISTRY, *OLD_SSH, *NEW_REGISTRY]
    assert not set(orphaned) & set(OTHER)


def test_ipv6_destinations_are_read():
    rule = f"-A {DN} -d ::1/128 -p tcp -m tcp --dport 2221 -j DNAT --to-destination [fd00::5]:22"
    assert dead_state.orphan_forwards([rule], live_addresses={"fd00::5"}) == []
    assert dead_state.orphan_forwards([rule], live_addresses=set()) == [rule]


def test_a_container_is_dead_when_its_conmon_is_gone_or_a_zombie(tmp_path):
    for pid, state in ((4242, "S"), (4343, "Z")):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (conmon) {state} 1 {pid} {pid} 0 -1 4194560 151 0 0\n")
    assert not dead_state.is_dead({"State": {"ConmonPid": 4242}}, proc=tmp_path)
    assert dead_state.is_dead({"State": {"ConmonPid": 4343}}, proc=tmp_path), "a zombie conmon is dead"
    assert dead_state.is_dead({"State": {"ConmonPid": 4444}}, proc=tmp_path), "no such process"
    assert dead_state.is_dead({"State": {"ConmonPid": 0}}, proc=tmp_path)


def test_addresses_of_every_network():
    container = {
        "NetworkSettings": {
            "Networks": {
                "edgeml-lab": {"IPAddress": "10.89.1.2", "GlobalIPv6Address": ""},
                "podman": {"IPAddress": "10.88.0.3", "GlobalIPv6Address": "fd00::3"},
            }
        }
    }
    assert dead_state.addresses(container) == {"10.89.1.2", "10.88.0.3", "fd00::3"}
    assert dead_state.addresses({"NetworkSettings": {"Networks": None}}) == set()
