"""The lab playbooks: idempotent, and lab_down removes what the lab made and nothing else."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from labtools import BIN, podman, run_playbook

TEST_LAB = "edgeml-labtest"
TEST_LAB_REGISTRY_PORT = 5099


def _lab_resources(label_value: str) -> dict[str, list[str]]:
    labelled = f"label=io.edgeml.lab={label_value}"
    return {
        "containers": podman("ps", "-a", "--filter", labelled, "--format", "{{.Names}}").split(),
        "volumes": podman("volume", "ls", "--filter", labelled, "--format", "{{.Name}}").split(),
        "networks": [n for n in podman("network", "ls", "--format", "{{.Name}}").split() if n == label_value],
        "images": [
            image
            for image in podman("images", "--format", "{{.Repository}}:{{.Tag}}@{{.ID}}").split()
            if image.startswith(f"localhost/{label_value}-")
        ],
    }


def _missing(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, list[str]]:
    """What of ``before`` is missing from ``after`` (other suite lanes may add their own meanwhile)."""
    return {kind: sorted(set(before[kind]) - set(after[kind])) for kind in before}


@dataclass
class SecondLab:
    inventory: Path
    extra: list[str]
    main_lab_before: dict[str, list[str]]


@pytest.fixture(scope="module")
def second_lab(tmp_path_factory):
    """A one-host lab beside the main one, on its own ports, names and inventory."""
    tmp_path = tmp_path_factory.mktemp("second-lab")
    settings = {
        "lab_name": TEST_LAB,
        "lab_host_count": 1,
        "lab_ssh_port_base": 2320,
        "lab_model_port_base": 18180,
        "lab_registry_port": TEST_LAB_REGISTRY_PORT,
        "lab_dir": f"{tmp_path}/lab",
        "lab_inventory_path": f"{tmp_path}/hosts.yml",
        "lab_remove_base_image": False,
    }
    extra = ["-e", json.dumps(settings)]
    main_lab_before = _lab_resources("edgeml-lab")
    run_playbook("lab_up.yml", *extra)
    yield SecondLab(tmp_path / "hosts.yml", extra, main_lab_before)
    run_playbook("lab_down.yml", *extra, check=False)


def _assert_edge_1_answers(inventory: Path) -> None:
    ping = subprocess.run(
        [BIN / "ansible", "-i", inventory, "all", "-m", "ping", "-o"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ping.returncode == 0 and "edge-1 | SUCCESS" in ping.stdout, ping.stdout + ping.stderr


def _registry_status(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=10) as answer:
        return answer.status


def test_lab_up_makes_a_reachable_lab(second_lab):
    made = _lab_resources(TEST_LAB)
    assert sorted(made["containers"]) == [f"{TEST_LAB}-edge-1", f"{TEST_LAB}-registry"]
    assert sorted(made["volumes"]) == sorted([f"{TEST_LAB}-registry-data", f"{TEST_LAB}-edge-1-storage"])
    assert made["networks"] == [TEST_LAB]
    _assert_edge_1_answers(second_lab.inventory)


def test_lab_up_again_changes_nothing(second_lab):
    """On this test's own lab: the main lab belongs to the e2e scenarios running meanwhile
    (one of them stops a host on purpose, which lab_up would start again)."""
    report = run_playbook("lab_up.yml", *second_lab.extra)
    assert report["stats"]["localhost"]["changed"] == 0
    assert report["stats"]["localhost"]["failures"] == 0


def test_lab_up_brings_back_a_lab_whose_processes_were_killed(second_lab):
    """What ending a sandbox does: every process killed, podman's and netavark's state kept.

    Podman then still lists the containers as running and their port forwards stay; before
    roles/lab/files/podman-dead-state.py, lab_up found the registry "started" and waited
    for it in vain. Only this lab's processes are killed: the main lab keeps running.
    """
    names = [f"{TEST_LAB}-registry", f"{TEST_LAB}-edge-1"]
    states = [c["State"] for c in json.loads(podman("inspect", "--type", "container", *names))]
    # aardvark-dns too: it answers the lab network's names, and a sandbox's end kills it.
    aardvark = subprocess.run(["pgrep", "-x", "aardvark-dns"], capture_output=True, text=True, check=False)
    for pid in [s[key] for s in states for key in ("ConmonPid", "Pid")] + [int(p) for p in aardvark.stdout.split()]:
        os.kill(pid, signal.SIGKILL)
    dead = json.loads(podman("inspect", "--type", "container", *names))
    assert all(c["State"]["Running"] for c in dead), "podman noticed the kill: this test no longer shows anything"

    report = run_playbook("lab_up.yml", *second_lab.extra)

    assert report["stats"]["localhost"]["changed"] > 0
    assert _registry_status(TEST_LAB_REGISTRY_PORT) == 200
    # The hosts find the registry by name, as they do to pull images.
    address = podman("exec", f"{TEST_LAB}-edge-1", "getent", "hosts", f"{TEST_LAB}-registry").split()[0]
    registry = json.loads(podman("inspect", "--type", "container", f"{TEST_LAB}-registry"))[0]
    assert address == registry["NetworkSettings"]["Networks"][TEST_LAB]["IPAddress"]
    _assert_edge_1_answers(second_lab.inventory)
    assert json.loads(podman("inspect", "--format", "json", "edgeml-lab-edge-1"))[0]["State"]["Running"]


def test_lab_down_removes_exactly_what_its_lab_made(second_lab):
    run_playbook("lab_down.yml", *second_lab.extra)
    assert _lab_resources(TEST_LAB) == {"containers": [], "volumes": [], "networks": [], "images": []}
    assert not second_lab.inventory.exists()
    # Nothing of the main lab was removed or replaced, and the shared base image stays.
    missing = _missing(second_lab.main_lab_before, _lab_resources("edgeml-lab"))
    assert missing == {"containers": [], "volumes": [], "networks": [], "images": []}, missing
    assert "localhost/debian-base" in podman("images", "--format", "{{.Repository}}").split()
    assert json.loads(podman("inspect", "--format", "json", "edgeml-lab-edge-1"))[0]["State"]["Running"]
