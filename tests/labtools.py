"""Helpers for the lab integration tests: paths, playbook runs, podman on the control node."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
LAB_INVENTORY = ROOT / "inventories" / "lab" / "hosts.yml"
BIN = Path(sys.executable).parent
# The model the lab fleets serve.
MODEL = "digits"

# testinfra and the playbooks below call ansible-* from this virtualenv.
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
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
LAB_PLAYBOOKS = ("lab_up.yml", "lab_down.yml")


def run_playbook(playbook: str, *args: str, check: bool = True) -> dict:
    """Run a playbook from this checkout with the JSON callback and return its report."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_NOCOLOR="1")
    with LAB_LOCK.open("a") as lock:
        if playbook in LAB_PLAYBOOKS:
            fcntl.flock(lock, fcntl.LOCK_EX)
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


def serving_versions(fleet: dict[str, str]) -> dict[str, str | None]:
    """What each host serves right now, asked over HTTP (None: nothing answers)."""
    versions = {}
    for host, url in fleet.items():
        try:
            versions[host] = requests.get(f"{url}/v2/models/{MODEL}/status", timeout=3).json()["serving_version"]
        except (requests.RequestException, ValueError, KeyError):
            versions[host] = None
    return versions
