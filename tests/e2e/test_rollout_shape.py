"""Fleet shapes and offline hosts on the lab fleet (issue 11): eight rings from an inventory
layered over the lab's, a host stopped under rollout_unreachable: pending and then resumed,
and a host that hangs mid-deployment (its container frozen) ended by the batch deadline."""

from __future__ import annotations

import json
import subprocess
import time

import requests
from fleetops import (
    DEPLOY_SETTINGS,
    MODEL,
    assert_every_answer_right,
    deploy,
    host_state,
    latest_report,
    outcomes,
    popen_deploy,
    serving_versions,
    start_host,
    stop_host,
)
from labtools import LAB, LAB_INVENTORY, podman, run_playbook

ALL_HOSTS = ["edge-1", "edge-2", "edge-3", "edge-4"]
STATE_DIR = "/var/lib/edgeml/state"
EIGHT_RINGS = [f"ring{n}" for n in range(1, 9)]
# The lab's hosts in rings 2, 4, 6 and 8 (the old playbook ran five rings: the last two
# would never have started); rings 1, 3, 5 and 7 are empty.
EIGHT_RING_HOSTS = {"edge-1": "ring2", "edge-2": "ring4", "edge-3": "ring6", "edge-4": "ring8"}


def test_eight_rings_run_in_order_and_a_failure_in_the_last_rolls_back_every_ring(fleet, fleet_on, load, tmp_path):
    """An inventory layered over the lab's puts the hosts in 8 rings; the last ring's host
    refuses the version (read-only state directory): every earlier ring is rolled back."""
    fleet_on("1.0.0")
    layered = tmp_path / "eight-rings.yml"
    layered.write_text(
        json.dumps(
            {
                "all": {
                    "vars": {"edgeml_rings": EIGHT_RINGS},
                    "hosts": {host: {"edgeml_ring": ring} for host, ring in EIGHT_RING_HOSTS.items()},
                }
            }
        )
    )
    settings = {**DEPLOY_SETTINGS, "model_version": "3.0.0"}
    podman("exec", LAB.container("edge-4"), "mount", "--bind", "-o", "ro", STATE_DIR, STATE_DIR)
    try:
        with load(rolling_out="3.0.0") as traffic:
            report = run_playbook(
                "deploy_model.yml",
                "-i",
                str(LAB_INVENTORY),
                "-i",
                str(layered),
                "-e",
                json.dumps(settings),
                check=False,
            )
    finally:
        podman("exec", LAB.container("edge-4"), "umount", STATE_DIR)
    assert report["returncode"] != 0
    summary = latest_report()
    assert [batch["ring"] for batch in summary["batches"]] == ["ring2", "ring4", "ring6", "ring8"]
    assert [batch["hosts"] for batch in summary["batches"]] == [["edge-1"], ["edge-2"], ["edge-3"], ["edge-4"]]
    assert summary["empty_rings"] == ["ring1", "ring3", "ring5", "ring7"]
    assert summary["halted"] and "ring ring8" in summary["halt_reason"]
    assert outcomes(summary) == {**dict.fromkeys(ALL_HOSTS[:3], "rolled back (fleet)"), "edge-4": "refused"}
    assert {row["ring"] for row in summary["hosts"]} == set(EIGHT_RING_HOSTS.values())
    assert serving_versions(fleet) == dict.fromkeys(ALL_HOSTS, "1.0.0")
    assert_every_answer_right(traffic)


def test_pending_host_then_the_same_command_updates_only_it(fleet, fleet_on, load):
    fleet_on("1.0.0")
    with load(rolling_out="3.0.0") as traffic:
        traffic.pause("edge-3")
        stop_host("edge-3")
        try:
            first = deploy("3.0.0", rollout_unreachable="pending", rollout_reachability_timeout=15)
            summary = latest_report()
        finally:
            start_host("edge-3", fleet)
        traffic.resume("edge-3")
        assert first["returncode"] == 0, summary["status"]
        assert outcomes(summary) == {
            "edge-1": "deployed",
            "edge-2": "deployed",
            "edge-3": "pending",
            "edge-4": "deployed",
        }
        assert summary["pending"] == ["edge-3"] and "same command again" in summary["status"]
        assert all("edge-3" not in batch["hosts"] for batch in summary["batches"])
        assert serving_versions(fleet) == {**dict.fromkeys(ALL_HOSTS, "3.0.0"), "edge-3": "1.0.0"}

        second = deploy("3.0.0", rollout_unreachable="pending", rollout_reachability_timeout=15)
    assert second["returncode"] == 0
    assert outcomes(latest_report()) == {**dict.fromkeys(ALL_HOSTS, "unchanged"), "edge-3": "deployed"}
    assert serving_versions(fleet) == dict.fromkeys(ALL_HOSTS, "3.0.0")
    assert_every_answer_right(traffic)


def _deployment_running(url: str, container: str) -> bool:
    """Whether a deployment is still under way on the lab host: its server holds a candidate
    or a standby version, or an Ansible module still runs there (pipelined: no AnsiballZ file,
    `python3 && sleep 0` on its command line)."""
    status = _status(url)
    if not status or status.get("candidate_version") or status.get("standby_version"):
        return True
    module = subprocess.run(
        ["podman", "exec", container, "pgrep", "-f", "python3 && sleep 0"], capture_output=True, check=False
    )
    return module.returncode == 0


def _status(url: str) -> dict:
    try:
        return requests.get(f"{url}/v2/models/{MODEL}/status", timeout=2).json()
    except (requests.RequestException, ValueError):
        return {}


def test_a_host_that_hangs_mid_deployment_ends_at_the_batch_deadline(fleet, fleet_on, load):
    """edge-2 (wave1's first batch) is frozen while its new version is staged: the batch's
    deadline ends it as `timed out`, the rollout halts, and the canary is rolled back. Once
    thawed, edge-2's own deployment finds its deadline passed and restores 1.0.0 instead of
    switching: the fleet ends on one version (a CI run saw edge-2 promote 3.0.0 90 s after
    the rollout had given up on it)."""
    fleet_on("1.0.0")
    timeout = 60
    frozen = False
    with load(rolling_out="3.0.0") as traffic:
        rollout = popen_deploy("3.0.0", rollout_batch_timeout=timeout, rollout_reachability_timeout=10)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and rollout.poll() is None:
                status = _status(fleet["edge-2"])
                if "3.0.0" in (status.get("candidate_version"), status.get("serving_version")):
                    break
                time.sleep(0.1)
            traffic.pause("edge-2")
            podman("pause", LAB.container("edge-2"))
            frozen, frozen_at = True, time.monotonic()
            rollout.wait(timeout=timeout + 240)
            ended_after = time.monotonic() - frozen_at
        finally:
            if frozen:
                podman("unpause", LAB.container("edge-2"))
            if rollout.poll() is None:
                rollout.kill()
        # The frozen deployment ends on its own once the host runs again: wait for it.
        settle = time.monotonic() + 300
        while time.monotonic() < settle and _deployment_running(fleet["edge-2"], LAB.container("edge-2")):
            time.sleep(1)
        assert not _deployment_running(fleet["edge-2"], LAB.container("edge-2")), "the thawed deployment did not end"
        traffic.allow("1.0.0", "3.0.0")
        traffic.resume("edge-2")
    assert rollout.returncode != 0
    assert ended_after < timeout + 120, ended_after  # the deadline, the bounded checks and the rollback
    summary = latest_report()
    row = next(row for row in summary["hosts"] if row["host"] == "edge-2")
    assert row["outcome"] == "timed out" and "rollout_batch_timeout=60" in row["reason"], row
    assert summary["halted"] and "ring wave1" in summary["halt_reason"]
    assert outcomes(summary)["edge-1"] == "rolled back (fleet)"
    assert {outcomes(summary)[host] for host in ("edge-3", "edge-4")} == {"skipped (rollout halted)"}
    versions = serving_versions(fleet)
    assert {versions[host] for host in ("edge-1", "edge-3", "edge-4")} == {"1.0.0"}
    assert versions["edge-2"] == "1.0.0"
    failure = host_state("edge-2")["last_failure"]
    assert failure["version"] == "3.0.0", failure
    assert_every_answer_right(traffic)
