"""Rollout scenarios on the lab fleet (4 Debian 13 hosts: canary edge-1, wave1 edge-2 and
edge-3, wave2 edge-4), each asserting the version every host ends on and that known-answer
traffic to every host meanwhile (fleetops.LoadGenerator) got only right answers, from the
versions the scenario allows, without a failed request (assert_every_answer_right).

Versions (examples/README.md): 1.0.0 and 3.0.0 good, 2.0.0 answers wrongly, 4.0.0 too
slow, 5.0.0 corrupt on the controller. The scenarios are ordered so that each starts from
the version the previous one left, sparing a rollout to reset the fleet.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from pathlib import Path

import pytest
import requests
from fleetops import (
    ALL_AT_ONCE,
    GATES,
    MODES,
    assert_every_answer_right,
    bring_fleet_for,
    deploy,
    deploy_args,
    host_state,
    latest_report,
    outcomes,
    path_exists_on,
    popen_deploy,
    rollout_with_a_host_stopped,
    serving_versions,
    wait_until_serving,
)
from labtools import LAB, LAB_INVENTORY, MODEL, run_playbook

ALL_HOSTS = ["edge-1", "edge-2", "edge-3", "edge-4"]


def everyone(version):
    return dict.fromkeys(ALL_HOSTS, version)


def assert_took_mode(mode, host):
    """The host's newest history entry (the failed deployment) ran in MODE's slot."""
    state = host_state(host)
    same_slot = state["history"][0]["slot"] == state["serving"]["slot"]
    assert same_slot == (mode == "in place"), state["history"][0]


@pytest.mark.parametrize("mode", MODES)
def test_wrong_outputs_are_stopped_at_the_canary_by_the_smoke_gate(fleet, fleet_on, next_image, load, mode):
    image = bring_fleet_for(mode, fleet_on, next_image, "1.0.0")
    with load() as traffic:  # 2.0.0 is judged before public traffic reaches it: never allowed to answer
        report = deploy("2.0.0", **image)
    assert report["returncode"] != 0
    assert serving_versions(fleet) == everyone("1.0.0")
    summary = latest_report()
    assert summary["halted"]
    assert outcomes(summary)["edge-1"] == "rolled_back"
    assert {outcomes(summary)[host] for host in ALL_HOSTS[1:]} == {"skipped (rollout halted)"}
    canary = next(row for row in summary["hosts"] if row["host"] == "edge-1")
    assert [gate["name"] for gate in canary["gates"] if not gate["passed"]] == ["smoke"]
    # The reason survives on the host, for whoever looks later.
    assert host_state("edge-1")["last_failure"]["gate"] == "smoke"
    assert_took_mode(mode, "edge-1")
    assert_every_answer_right(traffic)


def test_too_slow_version_is_stopped_by_the_latency_gate(fleet, fleet_on, next_image, load):
    """In place only: the latency gate judges a staged version the same way in both modes, and
    the wrong-output scenario above already takes each mode's way back. (In a new slot, 4.0.0's
    start-up self-test alone took minutes on a busy CI machine: 3 min of suite for nothing new.)"""
    mode = "in place"
    image = bring_fleet_for(mode, fleet_on, next_image, "1.0.0")
    with load() as traffic:  # 4.0.0 (over a second an answer) never answers a public request
        report = deploy("4.0.0", **image)
    assert report["returncode"] != 0
    assert serving_versions(fleet) == everyone("1.0.0")
    canary = next(row for row in latest_report()["hosts"] if row["host"] == "edge-1")
    failed = [gate for gate in canary["gates"] if not gate["passed"]]
    assert [gate["name"] for gate in failed] == ["latency"]
    assert_took_mode(mode, "edge-1")
    assert_every_answer_right(traffic)


def test_corrupt_bundle_is_refused_before_anything_changes(fleet, fleet_on, model_bundles, load):
    fleet_on("1.0.0")
    corrupt_root = model_bundles.parent / "corrupt-bundles"
    with load() as traffic:  # 5.0.0 is never allowed to answer
        report = deploy("5.0.0", model_deployment_bundle_src=str(corrupt_root))
    assert report["returncode"] != 0
    assert serving_versions(fleet) == everyone("1.0.0")
    assert outcomes(latest_report())["edge-1"] == "refused"
    assert not path_exists_on("edge-1", "/var/lib/edgeml/bundles/digits/5.0.0")
    assert report["stats"]["edge-1"]["changed"] == 0
    assert_every_answer_right(traffic)


def test_server_crashing_at_start_leaves_the_old_slot_serving(fleet, fleet_on, crashing_image, load):
    fleet_on("1.0.0")
    with load() as traffic:
        report = deploy("1.0.0", **crashing_image)
    assert report["returncode"] != 0
    assert serving_versions(fleet) == everyone("1.0.0")
    canary = next(row for row in latest_report()["hosts"] if row["host"] == "edge-1")
    assert [gate["name"] for gate in canary["gates"] if not gate["passed"]] == ["readiness"]
    assert_every_answer_right(traffic)


def _printed_summary(report: dict) -> str:
    """The rollout summary the run printed on the console (the report play's debug task)."""
    return next(
        task["hosts"]["localhost"]["msg"]
        for play in report["plays"]
        for task in play["tasks"]
        if task["task"]["name"] == "Print the rollout summary"
    )


def test_check_run_predicts_the_rollout_and_changes_nothing(fleet, fleet_on, next_image, load, lab_vars):
    """`--check --diff` of a new model on a new server image, with the fleet's rollouts paused
    and -e rollout_resume=true: the run goes through every ring and predicts each host's
    switch (the bundle's copy and the image's pull only predicted), changes nothing on any
    host, writes no report and leaves the pause in place."""
    fleet_on("1.0.0")
    pause_file = Path(lab_vars["edge-1"]["rollout_pause_file"])
    bundle = f"/var/lib/edgeml/bundles/{MODEL}/3.0.0"
    states = {host: host_state(host) for host in ALL_HOSTS}
    bundles = {host: path_exists_on(host, bundle) for host in ALL_HOSTS}
    reports = sorted(LAB.report_dir.glob("rollout-*"))
    inventory = ["-i", str(LAB_INVENTORY)]
    run_playbook("pause_rollouts.yml", *inventory, "-e", json.dumps({"rollout_pause_reason": "held for a check run"}))
    try:
        with load() as traffic:
            args = deploy_args("3.0.0", rollout_resume=True, **next_image)
            report = run_playbook("deploy_model.yml", *args, "--check", "--diff", check=False)
        summary = _printed_summary(report)
        assert report["returncode"] == 0, summary
        assert summary.startswith("CHECK MODE"), summary
        for host in ALL_HOSTS:
            assert re.search(rf"^{host}\s+\S+\s+1\.0\.0\s+3\.0\.0\s+deployed\b", summary, re.MULTILINE), summary
        assert "\ncompleted\n" in summary and summary.endswith("report: not written (check mode)")
        assert json.loads(pause_file.read_text())["reason"] == "held for a check run"
        assert serving_versions(fleet) == everyone("1.0.0")
        assert {host: host_state(host) for host in ALL_HOSTS} == states
        assert {host: path_exists_on(host, bundle) for host in ALL_HOSTS} == bundles
        assert sorted(LAB.report_dir.glob("rollout-*")) == reports
        assert_every_answer_right(traffic)
    finally:
        run_playbook("pause_rollouts.yml", *inventory, "-e", "rollout_resume=true")
    assert not pause_file.exists()


def test_good_version_reaches_every_ring_without_a_failed_request(fleet, fleet_on, load):
    fleet_on("1.0.0")
    with load(rolling_out="3.0.0") as traffic:
        report = deploy("3.0.0")
    assert report["returncode"] == 0
    assert serving_versions(fleet) == everyone("3.0.0")
    assert all(host.sent > 50 for host in traffic.per_host.values()), traffic.summary()
    summary = latest_report()
    assert not summary["halted"]
    assert set(outcomes(summary).values()) == {"deployed"}
    assert {row["old_version"] for row in summary["hosts"]} == {"1.0.0"}
    assert all(gate["passed"] for row in summary["hosts"] for gate in row["gates"])
    assert {gate["name"] for gate in summary["hosts"][0]["gates"]} >= {"readiness", "smoke", "latency", "error_rate"}
    html = sorted(LAB.report_dir.glob("rollout-*.html"))[-1].read_text()
    assert "edge-4" in html and "Completed" in html
    assert_every_answer_right(traffic)
    # The example bundles carry a reference profile: the server in the image verified it and
    # measures the drift of each host's traffic against it.
    for host, url in fleet.items():
        metrics = requests.get(f"{url}/metrics", timeout=3).text
        assert f'edgeml_drift_window_rows{{model="{MODEL}",version="3.0.0"}}' in metrics, host


def test_same_version_again_changes_nothing(fleet, fleet_on, load):
    fleet_on("3.0.0")
    with load() as traffic:
        report = deploy("3.0.0")
    assert report["returncode"] == 0
    assert all(report["stats"][host]["changed"] == 0 for host in ALL_HOSTS), report["stats"]
    assert set(outcomes(latest_report()).values()) == {"unchanged"}
    assert_every_answer_right(traffic)


def test_new_server_image_switches_slots_without_a_failed_request(fleet, fleet_on, next_image, load):
    fleet_on("3.0.0")
    slot_before = host_state("edge-1")["serving"]["slot"]
    with load() as traffic:
        report = deploy("3.0.0", **next_image)
    assert report["returncode"] == 0
    assert serving_versions(fleet) == everyone("3.0.0")
    assert host_state("edge-1")["serving"]["slot"] != slot_before
    assert_every_answer_right(traffic)


def test_the_server_image_from_its_oci_archive_serves_as_from_the_registry(fleet, fleet_on, server_image, load):
    """A site without a registry gets the server image as an OCI archive: copied to each host
    (only after it is known to trust a bundle signer), loaded, pinned by its ID."""
    fleet_on("1.0.0")
    archive = Path(server_image["archive"])
    on_host = f"/var/lib/edgeml/images/{hashlib.sha256(archive.read_bytes()).hexdigest()}.oci.tar"
    settings = {"model_deployment_image_delivery": "archive", "model_deployment_image_archive": str(archive)}
    with load(rolling_out="3.0.0") as traffic:
        report = deploy("3.0.0", **ALL_AT_ONCE, **settings)
    assert report["returncode"] == 0, outcomes(latest_report())
    assert serving_versions(fleet) == everyone("3.0.0")
    assert all(path_exists_on(host, on_host) for host in ALL_HOSTS), on_host
    serving = host_state("edge-1")["serving"]
    assert re.fullmatch(r"[0-9a-f]{64}", serving["image"]), serving  # the loaded image, by its ID
    assert_every_answer_right(traffic)


def test_manual_rollback_of_one_host_and_of_the_fleet(fleet, fleet_on, load):
    fleet_on("3.0.0")
    settings = {"model_deployment_registry_tls_verify": False, "model_deployment_gates": GATES}
    with load(rolling_out="1.0.0") as traffic:
        one = run_playbook(
            "rollback.yml",
            "-i",
            str(LAB_INVENTORY),
            "-e",
            json.dumps({**settings, "rollback_to": "1.0.0", "rollback_hosts": "edge-2"}),
            check=False,
        )
        assert one["returncode"] == 0
        assert serving_versions(fleet) == {**everyone("3.0.0"), "edge-2": "1.0.0"}

        # "previous": the newest successful deployment other than what serves now.
        expected = {}
        for host in ALL_HOSTS:
            state = host_state(host)
            serving = (state["serving"]["version"], state["serving"]["image_id"])
            expected[host] = next(
                entry["version"]
                for entry in state["history"]
                if entry["outcome"] == "deployed" and (entry["version"], entry["image_id"]) != serving
            )
        traffic.allow(*serving_versions(fleet).values(), *expected.values())
        everything = run_playbook("rollback.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps(settings), check=False)
    assert everything["returncode"] == 0
    assert serving_versions(fleet) == expected
    assert expected["edge-2"] == "3.0.0"
    assert_every_answer_right(traffic)


def test_host_stopped_mid_wave_over_the_threshold_rolls_back_the_rollout(fleet, fleet_on, load):
    fleet_on("1.0.0")
    with load(rolling_out="3.0.0") as traffic:
        rollout = rollout_with_a_host_stopped(
            fleet,
            "edge-3",
            "3.0.0",
            traffic,
            rollout_ring_overrides={"wave1": {"serial": 2, "max_fail_percentage": 49}},
        )
    assert rollout.returncode != 0
    summary = latest_report()
    assert summary["halted"] and "ring wave1" in summary["halt_reason"]
    assert outcomes(summary)["edge-1"] == "rolled back (fleet)"
    assert outcomes(summary)["edge-4"] == "skipped (rollout halted)"
    # One consistent version across the fleet.
    assert serving_versions(fleet) == everyone("1.0.0")
    assert_every_answer_right(traffic)  # edge-3 too, while it was up


def test_host_stopped_mid_wave_within_the_threshold(fleet, fleet_on, load):
    """wave1 (edge-2, edge-3) in one batch that tolerates half of it failing."""
    fleet_on("1.0.0")
    with load(rolling_out="3.0.0") as traffic:
        rollout = rollout_with_a_host_stopped(
            fleet,
            "edge-3",
            "3.0.0",
            traffic,
            rollout_ring_overrides={"wave1": {"serial": 2, "max_fail_percentage": 50}},
        )
        assert rollout.returncode != 0  # a host did not get the version: the run says so
        summary = latest_report()
        assert not summary["halted"]
        assert outcomes(summary)["edge-3"] == "unreachable"
        assert serving_versions(fleet) == {**everyone("3.0.0"), "edge-3": "1.0.0"}
        # Converge: run again once the host is back.
        assert deploy("3.0.0")["returncode"] == 0
    assert serving_versions(fleet) == everyone("3.0.0")
    assert_every_answer_right(traffic)


def test_controller_killed_mid_rollout_then_rerun_converges(fleet, fleet_on, load):
    fleet_on("3.0.0")
    with load(rolling_out="1.0.0") as traffic:
        rollout = popen_deploy("1.0.0", rollout_pause_seconds=15)
        wait_until_serving(fleet, "edge-1", "1.0.0")
        os.killpg(rollout.pid, signal.SIGKILL)
        rollout.wait(timeout=30)
        # No host is left serving nothing.
        assert None not in serving_versions(fleet).values()
        report = deploy("1.0.0")
    assert report["returncode"] == 0
    assert serving_versions(fleet) == everyone("1.0.0")
    assert_every_answer_right(traffic)
