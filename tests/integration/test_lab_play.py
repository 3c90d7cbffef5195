"""The lab playbooks: idempotent, and lab_down removes what the lab made and nothing else."""

from __future__ import annotations

import json
import subprocess

import pytest
from labtools import BIN, podman, run_playbook

TEST_LAB = "edgeml-labtest"


def test_lab_up_again_changes_nothing():
    report = run_playbook("lab_up.yml")
    assert report["stats"]["localhost"]["changed"] == 0
    assert report["stats"]["localhost"]["failures"] == 0


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


@pytest.fixture
def second_lab(tmp_path):
    """A one-host lab beside the main one, on its own ports, names and inventory."""
    settings = {
        "lab_name": TEST_LAB,
        "lab_host_count": 1,
        "lab_ssh_port_base": 2320,
        "lab_model_port_base": 18180,
        "lab_registry_port": 5099,
        "lab_dir": f"{tmp_path}/lab",
        "lab_inventory_path": f"{tmp_path}/hosts.yml",
        "lab_remove_base_image": False,
    }
    extra = ["-e", json.dumps(settings)]
    yield tmp_path / "hosts.yml", extra
    run_playbook("lab_down.yml", *extra, check=False)


def test_lab_down_removes_exactly_what_its_lab_made(second_lab):
    inventory, extra = second_lab
    main_lab_before = _lab_resources("edgeml-lab")

    run_playbook("lab_up.yml", *extra)
    made = _lab_resources(TEST_LAB)
    assert sorted(made["containers"]) == [f"{TEST_LAB}-edge-1", f"{TEST_LAB}-registry"]
    assert sorted(made["volumes"]) == sorted([f"{TEST_LAB}-registry-data", f"{TEST_LAB}-edge-1-storage"])
    assert made["networks"] == [TEST_LAB]
    ping = subprocess.run(
        [BIN / "ansible", "-i", inventory, "all", "-m", "ping", "-o"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ping.returncode == 0 and "edge-1 | SUCCESS" in ping.stdout, ping.stdout + ping.stderr

    run_playbook("lab_down.yml", *extra)
    assert _lab_resources(TEST_LAB) == {"containers": [], "volumes": [], "networks": [], "images": []}
    assert not inventory.exists()
    # Nothing of the main lab was removed or replaced, and the shared base image stays.
    missing = _missing(main_lab_before, _lab_resources("edgeml-lab"))
    assert missing == {"containers": [], "volumes": [], "networks": [], "images": []}, missing
    assert "localhost/debian-base" in podman("images", "--format", "{{.Repository}}").split()
    assert json.loads(podman("inspect", "--format", "json", "edgeml-lab-edge-1"))[0]["State"]["Running"]
