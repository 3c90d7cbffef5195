"""Fault paths of a deployment on the lab fleet, each fault made for real on a host, each
ending with the version the host serves and the reason recorded where it survives.

- a read-only state directory (a bind mount remounted read-only inside the canary): the
  deployment is refused there before anything changes, and the rollout halts;
- the server process killed (SIGKILL) while its new version takes its first real traffic:
  the live window sees it, the previous version comes back (systemd restarts the container
  onto the restored pointer file) and the state file says why;
- the registry stopped during a rollback: a rollback runs the image recorded in the host's
  history, which is on the host, and needs no registry.

(An old slot that stops answering while a deployment fails, and a state file that cannot be
written after the switch, are made for real in tests/unit/plugins/module_utils/
test__deploy_service.py on real server processes: SIGSTOP, and writes that fail.)
"""

from __future__ import annotations

import json
import time

import pytest
import requests
from fleetops import (
    GATES,
    MODES,
    assert_every_answer_right,
    bring_fleet_for,
    deploy,
    host_state,
    latest_report,
    outcomes,
    popen_deploy,
    serving_versions,
    wait_until_serving,
)
from labtools import LAB, LAB_INVENTORY, podman, run_playbook

STATE_DIR = "/var/lib/edgeml/state"
HOST = "edge-4"  # wave2: the last ring, so a rollout limited to it is a plain one-host rollout


def in_host(host: str, *command: str) -> str:
    return podman("exec", LAB.container(host), *command)


def test_a_read_only_state_directory_refuses_the_deployment_before_anything_changes(fleet, fleet_on, load):
    """The canary's state directory read-only: refused there, the rollout halts, nobody changes."""
    fleet_on("1.0.0")
    in_host("edge-1", "mount", "--bind", "-o", "ro", STATE_DIR, STATE_DIR)
    try:
        with load() as traffic:  # 3.0.0 never gets to answer
            report = deploy("3.0.0")
    finally:
        in_host("edge-1", "umount", STATE_DIR)
    assert report["returncode"] != 0
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    summary = latest_report()
    assert summary["halted"] and outcomes(summary)["edge-1"] == "refused", outcomes(summary)
    row = next(row for row in summary["hosts"] if row["host"] == "edge-1")
    assert f"Cannot write the state file {STATE_DIR}/digits.json" in json.dumps(row)
    assert host_state("edge-1")["serving"]["version"] == "1.0.0"
    assert_every_answer_right(traffic)


def kill_new_version(mode: str, host: str) -> None:
    """SIGKILL the server process that serves the new version: the only one in place; the
    new slot's (named in the state file's in_progress) in blue/green."""
    if mode == "in place":
        in_host(host, "pkill", "-KILL", "-f", "python -m edgeml_server")
        return
    slot = host_state(host)["in_progress"]["slot"]
    pid = in_host(host, "podman", "inspect", "--format", "{{.State.Pid}}", f"edgeml-digits-{slot}").strip()
    in_host(host, "kill", "-KILL", pid)


@pytest.mark.parametrize("mode", MODES)
def test_a_server_killed_in_the_live_window_is_switched_back_and_the_reason_recorded(
    fleet, fleet_on, next_image, load, mode
):
    image = bring_fleet_for(mode, fleet_on, next_image, "1.0.0")
    gates = {**GATES, "live": {"seconds": 30}}
    with load(rolling_out="3.0.0") as traffic:
        rollout = popen_deploy("3.0.0", model_deployment_gates=gates, **image)
        try:
            # The canary takes 3.0.0 first: once it serves it publicly, its live window runs.
            wait_until_serving(fleet, "edge-1", "3.0.0", timeout=240)
            traffic.pause("edge-1")  # its server is killed on purpose: refused connections are expected
            kill_new_version(mode, "edge-1")
            output, _unused = rollout.communicate(timeout=600)
        finally:
            if rollout.poll() is None:
                rollout.kill()
        wait_until_serving(fleet, "edge-1", "1.0.0", timeout=120)
        traffic.resume("edge-1")
        time.sleep(1)
    assert rollout.returncode != 0, output[-3000:]
    summary = latest_report()
    assert outcomes(summary)["edge-1"] == "rolled_back", (outcomes(summary), summary["hosts"][0].get("reason"))
    state = host_state("edge-1")
    assert state["serving"]["version"] == "1.0.0"
    assert state["last_failure"]["gate"] == "live" and state["last_failure"]["version"] == "3.0.0"
    reason = state["last_failure"]["reason"]
    assert "stopped answering" in reason or "restarted" in reason or "failed" in reason, reason
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    assert_every_answer_right(traffic)


def _registry_answers() -> bool:
    try:
        return requests.get(f"http://{LAB.registry}/v2/", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_a_rollback_needs_no_registry(fleet, fleet_on, load):
    fleet_on("1.0.0")
    fleet_on("3.0.0")
    settings = {"model_deployment_registry_tls_verify": False, "model_deployment_gates": GATES}
    podman("stop", "--time", "2", LAB.container("registry"))
    try:
        assert not _registry_answers()
        with load(rolling_out="1.0.0") as traffic:
            report = run_playbook(
                "rollback.yml",
                "-i",
                str(LAB_INVENTORY),
                "-e",
                json.dumps({**settings, "rollback_to": "1.0.0", "rollback_hosts": HOST}),
                check=False,
            )
    finally:
        podman("start", LAB.container("registry"))
        deadline = time.monotonic() + 60
        while not _registry_answers() and time.monotonic() < deadline:
            time.sleep(0.5)
    assert report["returncode"] == 0, report
    assert serving_versions(fleet) == {**dict.fromkeys(fleet, "3.0.0"), HOST: "1.0.0"}
    assert host_state(HOST)["history"][0]["reason"] == "rollback to 1.0.0"
    assert_every_answer_right(traffic)
