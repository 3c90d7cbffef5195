"""Helpers for the lab integration tests: paths, playbook runs, podman on the control node."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Lab:
    """A lab fleet (role edgeml.fleet.lab) that a test process runs on: four edge hosts, a
    registry and a monitoring host, under names that start with `name`."""

    name: str
    # Where lab_up.yml keeps the lab's key and inventory, and the rollouts their reports;
    # None: the main lab's defaults (`make lab-up`: inventories/lab/hosts.yml, .build/reports).
    directory: Path | None
    registry_port: int
    # A second registry's port, for scenarios that need one per site (test_bundle_delivery.py).
    spare_registry_port: int
    ssh_port_base: int = 2220
    model_port_base: int = 18080
    prometheus_port: int = 19090
    alertmanager_port: int = 19093

    @property
    def inventory(self) -> Path:
        return self.directory / "hosts.yml" if self.directory else ROOT / "inventories" / "lab" / "hosts.yml"

    @property
    def report_dir(self) -> Path:
        return self.directory / "reports" if self.directory else ROOT / ".build" / "reports"

    @property
    def registry(self) -> str:
        """The lab registry as the control node reaches it."""
        return f"127.0.0.1:{self.registry_port}"

    @property
    def registry_on_lab_network(self) -> str:
        """The lab registry as the hosts reach it (the name the inventory's edgeml_registry gives)."""
        return f"{self.name}-registry:5000"

    def container(self, host: str) -> str:
        """The container that is the lab host `host` (edge-1, registry, monitor)."""
        return f"{self.name}-{host}"

    def settings(self) -> dict:
        """lab_up.yml's (and lab_down.yml's) extra variables for this lab."""
        if self.directory is None:
            return {}
        return {
            "lab_name": self.name,
            "lab_dir": str(self.directory / "lab"),
            "lab_inventory_path": str(self.inventory),
            "lab_report_dir": str(self.report_dir),
            "lab_registry_port": self.registry_port,
            "lab_ssh_port_base": self.ssh_port_base,
            "lab_model_port_base": self.model_port_base,
            "lab_monitor": True,
            "lab_prometheus_port": self.prometheus_port,
            "lab_alertmanager_port": self.alertmanager_port,
            "lab_remove_base_image": False,
        }


MAIN_LAB = Lab(name="edgeml-lab", directory=None, registry_port=5000, spare_registry_port=5098)
# `make integration` and `make e2e` run on two pytest-xdist workers at once, each on a lab of
# its own (EDGEML_TEST_LABS=2): worker gw1 brings this one up and runs on it. Ports that no other lab
# of the suite uses (main 2220-/18081-/5000/5098/19090/19093, test_lab_play's 2321-/5099, the
# Automation Platform layer's 2361-/18361-/5003, the VM's 2290-2292/18092, bench's 2500-/5096-5097).
SECOND_LAB = Lab(
    name="edgeml-e2e2",
    directory=ROOT / ".build" / "e2e-lab-2",
    registry_port=5004,
    spare_registry_port=5094,
    ssh_port_base=2420,
    model_port_base=18420,
    prometheus_port=19290,
    alertmanager_port=19293,
)
ON_SECOND_LAB = os.environ.get("EDGEML_TEST_LABS") == "2" and os.environ.get("PYTEST_XDIST_WORKER") == "gw1"
LAB = SECOND_LAB if ON_SECOND_LAB else MAIN_LAB
LAB_INVENTORY = LAB.inventory
# The model the lab fleets serve.
MODEL = "digits"

# testinfra and the playbooks below call ansible-* from this virtualenv.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
if LAB is not MAIN_LAB:
    # A playbook run without -i goes to ansible.cfg's inventory, the main lab's: not from here.
    os.environ["ANSIBLE_INVENTORY"] = str(LAB_INVENTORY)
if "CONTAINERS_CONF" not in os.environ:
    os.environ["CONTAINERS_CONF"] = subprocess.run(
        [ROOT / "roles" / "lab" / "files" / "podman-conf-probe.sh"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


# Labs come up and go down one at a time on a machine (the Makefile takes the same lock):
# lab_up clears what podman and netavark keep of dead containers, and a container another
# lab is starting at that moment would look dead to it.
LAB_LOCK = Path("/tmp/edgeml-lab.lock")
# The artifacts every lab test process uses (bundles, server images) are built under this
# lock: with two e2e workers, the second finds them made and up to date.
ARTIFACT_LOCK = Path("/tmp/edgeml-test-artifacts.lock")
PLAYBOOK_LOCKS = {
    "lab_up.yml": LAB_LOCK,
    "lab_down.yml": LAB_LOCK,
    "build_models.yml": ARTIFACT_LOCK,
    "build_server_image.yml": ARTIFACT_LOCK,
}


@contextlib.contextmanager
def locked(path: Path | None):
    """Hold an exclusive lock on PATH (None: no lock) for the block."""
    if path is None:
        yield
        return
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_playbook(playbook: str, *args: str, check: bool = True) -> dict:
    """Run a playbook from this checkout with the JSON callback and return its report."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    with locked(PLAYBOOK_LOCKS.get(playbook)):
        result = subprocess.run(
            [BIN / "ansible-playbook", ROOT / "playbooks" / playbook, *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            check=False,
        )
    try:
        report = json.loads(result.stdout[result.stdout.index("{") :])
    except ValueError:
        report = None
    if check and result.returncode != 0:
        # The report's tail is cleanup tasks: name the tasks that failed, with their output.
        failures = failed_tasks(report) if report else result.stdout[-4000:]
        raise AssertionError(f"{playbook} failed ({result.returncode}):\n{failures}\n{result.stderr[-2000:]}")
    if report is None:
        raise AssertionError(f"{playbook} printed no JSON report:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")
    report["returncode"] = result.returncode
    return report


def failed_tasks(report: dict) -> str:
    """Each failed or unreachable task result of a JSON report: task, host, message and output tails."""
    lines = []
    for play in report["plays"]:
        for task in play["tasks"]:
            for host, result in task["hosts"].items():
                if not (result.get("failed") or result.get("unreachable")):
                    continue
                items = [r for r in result.get("results", []) if r.get("failed")] or [result]
                for item in items:
                    lines.append(f"TASK {task['task']['name']} on {host}: {item.get('msg', '')}")
                    for stream in ("stderr", "stdout"):
                        if item.get(stream):
                            lines.append(f"  {stream}: {item[stream][-1500:]}")
    return "\n".join(lines) or "(no failed task in the report)"


def require_lab() -> None:
    """At a lab test session's start: the second lab is brought up by the worker that uses it
    (idempotent); the main lab must be up already (`make lab-up`)."""
    if LAB.directory is not None:
        run_playbook("lab_up.yml", "-e", json.dumps(LAB.settings()))
    if not LAB_INVENTORY.is_file():
        pytest.exit(f"no lab inventory at {LAB_INVENTORY}: bring the lab up first (make lab-up)", returncode=1)


def podman(*args: str) -> str:
    """Run podman on the control node, with the lab's containers.conf where needed."""
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


def playbook_fact(report: dict, name: str):
    """The last value a play set for a fact, from the JSON callback's report."""
    for play in reversed(report["plays"]):
        for task in reversed(play["tasks"]):
            for result in task["hosts"].values():
                if name in result.get("ansible_facts", {}):
                    return result["ansible_facts"][name]
    raise AssertionError(f"no task set {name}")


def lab_fleet() -> dict[str, str]:
    """Each edge host of LAB and its model URL as the controller reaches it."""
    listing = json.loads(
        subprocess.run(
            [BIN / "ansible-inventory", "-i", LAB_INVENTORY, "--list"], check=True, capture_output=True, text=True
        ).stdout
    )
    hostvars = listing["_meta"]["hostvars"]
    return {host: hostvars[host]["edgeml_model_url_from_controller"] for host in sorted(listing["debian"]["hosts"])}


def serving_versions(fleet: dict[str, str]) -> dict[str, str | None]:
    """What each host serves right now, asked over HTTP (None: nothing answers)."""
    versions = {}
    for host, url in fleet.items():
        try:
            versions[host] = requests.get(f"{url}/v2/models/{MODEL}/status", timeout=3).json()["serving_version"]
        except (requests.RequestException, ValueError, KeyError):
            versions[host] = None
    return versions
