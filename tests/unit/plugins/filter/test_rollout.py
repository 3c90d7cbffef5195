"""Rollout filters: a host's ring and site, planning (ring order, any number of rings, batch
sizes, per-site budgets as counts or percentages, hosts left out), the failure threshold, a
failed host's record, the outcome names and the run's verdict."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.rollout import (
    DEFAULT_RINGS,
    FilterModule,
    Outcome,
    batch_exceeds,
    pause_file,
    pause_record,
    report_dir,
    rollout_failure,
    rollout_host,
    rollout_judge,
    rollout_outcomes,
    rollout_plan,
    rollout_row,
    rollout_summary,
)
from rollout_records import ROLLED_BACK_CANARY


def _host(name, ring, site, serial=1, max_fail=0):
    return {"name": name, "ring": ring, "site": site, "serial": serial, "max_fail_percentage": max_fail}


LAB = [
    _host("edge-1", "canary", "site_a"),
    _host("edge-2", "wave1", "site_b", "50%", 49),
    _host("edge-3", "wave1", "site_a", "50%", 49),
    _host("edge-4", "wave2", "site_b", "50%", 49),
]


def test_rings_come_in_the_given_order_whatever_the_inventory_order():
    plan = rollout_plan(list(reversed(LAB)), ["canary", "wave1", "wave2"])
    assert [ring["name"] for ring in plan["rings"]] == ["canary", "wave1", "wave2"]
    assert plan["rings"][0]["hosts"] == ["edge-1"]
    assert plan["unplaced"] == []


def test_percentage_serial_is_a_share_of_the_ring():
    plan = rollout_plan(LAB, ["canary", "wave1", "wave2"], site_max_unavailable=5)
    wave1 = plan["rings"][1]
    assert wave1["serial"] == [1, 1]
    assert wave1["batches"] == [["edge-2"], ["edge-3"]]
    assert wave1["max_fail_percentage"] == 49


def test_overrides_from_extra_vars_win():
    plan = rollout_plan(LAB, ["canary", "wave1", "wave2"], 5, {"wave1": {"serial": 2, "max_fail_percentage": 50}})
    assert plan["rings"][1]["batches"] == [["edge-2", "edge-3"]]
    assert plan["rings"][1]["max_fail_percentage"] == 50


def test_site_budget_splits_batches_so_every_site_keeps_serving():
    hosts = [_host(f"h{i}", "wave1", "north" if i < 4 else "south", serial=4) for i in range(6)]
    plan = rollout_plan(hosts, ["wave1"], site_max_unavailable=1)
    for batch in plan["rings"][0]["batches"]:
        sites = ["north" if int(name[1:]) < 4 else "south" for name in batch]
        assert all(sites.count(site) <= 1 for site in set(sites))
    assert sorted(plan["rings"][0]["hosts"]) == [f"h{i}" for i in range(6)]
    assert plan["rings"][0]["serial"] == [2, 2, 1, 1]


def test_site_budget_as_a_percentage_of_the_site():
    hosts = [_host(f"h{i}", "wave1", "north", serial=10) for i in range(8)]
    plan = rollout_plan(hosts, ["wave1"], site_max_unavailable="25%")
    assert plan["rings"][0]["serial"] == [2, 2, 2, 2]


def test_hosts_in_no_listed_ring_are_reported():
    plan = rollout_plan([*LAB, _host("edge-9", "lab_only", "site_a")], ["canary", "wave1", "wave2"])
    assert plan["unplaced"] == ["edge-9"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"site_max_unavailable": 0}, "at least 1"),
        ({"site_max_unavailable": "many"}, "percentage"),
        ({"overrides": {"wave1": {"serial": "x"}}}, "serial of ring wave1"),
        ({"overrides": {"wave1": {"max_fail_percentage": 150}}}, "within 0..100"),
        ({"overrides": {"wave1": {"max_fail_percentage": "lots"}}}, "must be a number"),
    ],
)
def test_bad_settings_say_which_setting(kwargs, message):
    with pytest.raises(AnsibleFilterError, match=message):
        rollout_plan(LAB, ["canary", "wave1", "wave2"], **kwargs)


@pytest.mark.parametrize(
    ("failed", "total", "threshold", "exceeds"),
    [
        (0, 1, 0, False),
        (1, 1, 0, True),
        (1, 2, 50, False),  # exactly the threshold: Ansible does not stop
        (1, 2, 49, True),
        (2, 4, 49, True),
        (1, 4, 49, False),
        (0, 0, 0, False),
    ],
)
def test_batch_fails_only_when_the_threshold_is_exceeded(failed, total, threshold, exceeds):
    assert batch_exceeds(failed, total, threshold) is exceeds


def test_summary_row_reads_what_the_rollout_recorded():
    row = rollout_row({"inventory_hostname": "edge-1", **ROLLED_BACK_CANARY})
    assert row["host"] == "edge-1" and row["ring"] == "canary"
    assert row["outcome"] == "rolled_back"
    # A rolled-back host names the version it was asked to take, not only before/after.
    assert (row["model"], row["attempted_version"], row["old_version"], row["new_version"]) == (
        "digits",
        "2.0.0",
        "1.0.0",
        "1.0.0",
    )
    assert row["gates_text"] == "readiness:ok (seconds_to_ready=1.5); smoke:FAIL (pass_ratio=0.0)"
    assert row["seconds"] == 14.2


def test_summary_row_of_a_host_that_never_started():
    row = rollout_row({"inventory_hostname": "edge-9"})
    assert row["outcome"] == "not started"
    assert row["ring"] == "-" and row["gates"] == []


# --- a host's ring and site, in one place -------------------------------------------


def test_ring_and_site_from_groups_with_the_default_rings():
    host = rollout_host(
        {
            "inventory_hostname": "edge-7",
            "group_names": ["debian", "edge", "site_north", "wave1"],
            "edgeml_ring_serial": "50%",
            "edgeml_ring_max_fail_percentage": 49,
        }
    )
    assert host == {
        "name": "edge-7",
        "rings": list(DEFAULT_RINGS),
        "ring": "wave1",
        "site": "site_north",
        "serial": "50%",
        "max_fail_percentage": 49,
    }


def test_host_variables_win_over_groups_and_the_first_listed_ring_wins():
    vars_ = {"inventory_hostname": "h", "group_names": ["r2", "r1", "site_a"], "edgeml_rings": ["r1", "r2"]}
    assert rollout_host(vars_)["ring"] == "r1"
    assert rollout_host({**vars_, "edgeml_ring": "r2", "edgeml_site": "harbour"})["ring"] == "r2"
    assert rollout_host({**vars_, "edgeml_site": "harbour"})["site"] == "harbour"
    assert rollout_host({"inventory_hostname": "h"}) | {"rings": None} == {
        "name": "h",
        "rings": None,
        "ring": "",
        "site": "all",
        "serial": 1,
        "max_fail_percentage": 0,
    }


@pytest.mark.parametrize("rings", ["canary", [], ["a", "b", "a"]])
def test_bad_ring_lists_are_refused(rings):
    with pytest.raises(AnsibleFilterError, match="edgeml_rings"):
        rollout_host({"inventory_hostname": "h", "edgeml_rings": rings})


# --- any number of rings -------------------------------------------------------------


def _eight_rings():
    rings = [f"ring{n}" for n in range(1, 9)]
    hosts = [
        {**_host(f"h{n:02}", rings[n % 8], "site_a" if n % 2 else "site_b", serial="50%", max_fail=n), "rings": rings}
        for n in range(32)  # four hosts a ring, two batches of two each
    ]
    return rings, hosts


def test_eight_rings_are_all_planned_in_order_with_their_own_thresholds():
    rings, hosts = _eight_rings()
    plan = rollout_plan(hosts, site_max_unavailable=5)  # the rings come from the hosts
    assert [ring["name"] for ring in plan["rings"]] == rings
    assert sorted(plan["order"]) == sorted(host["name"] for host in hosts)
    assert plan["unplaced"] == [] and plan["unreachable"] == []
    # Every batch belongs to one ring, and the flattened sizes are the batch play's serial.
    assert plan["batch_sizes"] == [len(batch["hosts"]) for batch in plan["batches"]]
    assert sum(plan["batch_sizes"]) == len(hosts)
    assert [batch["ring"] for batch in plan["batches"]] == [ring for ring in rings for _ in range(2)]
    assert [batch["first_in_ring"] for batch in plan["batches"]] == [True, False] * 8
    assert [batch["ring_index"] for batch in plan["batches"]] == [n // 2 for n in range(16)]
    for batch in plan["batches"]:
        assert all(plan["batch_of"][name] == batch["index"] for name in batch["hosts"])
        ring = next(ring for ring in plan["rings"] if ring["name"] == batch["ring"])
        assert batch["max_fail_percentage"] == ring["max_fail_percentage"]
    # The batch play takes hosts in this order, batch after batch.
    assert plan["order"] == [name for batch in plan["batches"] for name in batch["hosts"]]


@pytest.mark.parametrize("count", [1, 2, 5, 6, 12, 40])
def test_any_number_of_rings(count):
    rings = [f"r{n}" for n in range(count)]
    hosts = [_host(f"h{n}", rings[n % count], "site_a") for n in range(count * 2)]
    plan = rollout_plan(hosts, rings)
    assert [ring["name"] for ring in plan["rings"]] == rings
    assert len(plan["batches"]) == count * 2  # serial 1, site budget 1


def test_empty_rings_are_left_out_of_the_plan():
    plan = rollout_plan(LAB, ["canary", "empty", "wave1", "wave2", "also_empty"])
    assert [ring["name"] for ring in plan["rings"]] == ["canary", "wave1", "wave2"]
    assert plan["empty_rings"] == ["empty", "also_empty"]


def test_hosts_that_disagree_on_the_rings_stop_the_plan():
    hosts = [{**LAB[0], "rings": ["canary", "wave1"]}, {**LAB[1], "rings": ["wave1", "canary"]}]
    with pytest.raises(AnsibleFilterError, match="disagree on edgeml_rings"):
        rollout_plan(hosts)


def test_overrides_of_rings_that_do_not_exist_are_refused():
    with pytest.raises(AnsibleFilterError, match="wave9"):
        rollout_plan(LAB, ["canary", "wave1", "wave2"], overrides={"wave9": {"serial": 2}})


@pytest.mark.parametrize("name", ["edge[1]", "web:8", "!x", "wave1"])
def test_names_that_read_as_host_patterns_or_groups_stop_the_plan(name):
    with pytest.raises(AnsibleFilterError, match="host patterns or groups"):
        rollout_plan([*LAB, _host(name, "wave2", "site_a")], ["canary", "wave1", "wave2"], group_names=["wave1"])


# --- site budgets as a count or a percentage ----------------------------------------


@pytest.mark.parametrize(
    ("budget", "sizes"),
    [
        (1, [2, 2, 2, 2, 2, 2, 2, 2]),  # one per site: two sites of 8
        (2, [4, 4, 4, 4]),
        ("25%", [4, 4, 4, 4]),  # 25% of 8 = 2 per site
        ("50%", [8, 8]),
        ("10%", [2, 2, 2, 2, 2, 2, 2, 2]),  # less than one host rounds up to one
        ("100%", [10, 6]),
    ],
)
def test_site_budget_count_or_percentage_of_each_site(budget, sizes):
    hosts = [_host(f"h{n:02}", "wave1", "north" if n < 8 else "south", serial=10) for n in range(16)]
    plan = rollout_plan(hosts, ["wave1"], site_max_unavailable=budget)
    assert plan["batch_sizes"] == sizes


def test_site_percentage_is_of_each_site_not_of_the_fleet():
    hosts = [_host(f"n{n}", "wave1", "north", serial=100) for n in range(8)]
    hosts += [_host(f"s{n}", "wave1", "south", serial=100) for n in range(4)]
    first = rollout_plan(hosts, ["wave1"], site_max_unavailable="25%")["batches"][0]["hosts"]
    assert sum(name.startswith("n") for name in first) == 2
    assert sum(name.startswith("s") for name in first) == 1


@pytest.mark.parametrize("budget", ["0%", "150%", "-5%", "x%"])
def test_bad_site_percentages_are_refused(budget):
    with pytest.raises(AnsibleFilterError, match="edgeml_site_max_unavailable"):
        rollout_plan(LAB, ["canary", "wave1", "wave2"], site_max_unavailable=budget)


# --- hosts unreachable at the start ---------------------------------------------------


def test_unreachable_hosts_are_in_no_batch():
    hosts = [LAB[0], {**LAB[1], "reachable": False}, LAB[2], {**LAB[3], "reachable": False}]
    plan = rollout_plan(hosts, ["canary", "wave1", "wave2"], site_max_unavailable=5)
    assert plan["unreachable"] == ["edge-2", "edge-4"]
    assert plan["order"] == ["edge-1", "edge-3"]
    assert plan["batch_sizes"] == [1, 1]
    assert [ring["name"] for ring in plan["rings"]] == ["canary", "wave1"]
    assert plan["unplaced"] == []


# --- judging a batch, recording a failure ----------------------------------------------


def _batch(max_fail):
    return {"index": 2, "ring": "wave1", "max_fail_percentage": max_fail}


def test_judge_counts_every_outcome_but_deployed_and_unchanged():
    batch_vars = [
        {"inventory_hostname": "a", "rollout_outcome": "deployed"},
        {"inventory_hostname": "b", "rollout_outcome": "unchanged"},
        {"inventory_hostname": "c", "rollout_outcome": "timed out"},
        {"inventory_hostname": "d", "rollout_outcome": "rolled_back"},
    ]
    verdict = rollout_judge(batch_vars, _batch(49))
    assert verdict["failed"] == ["c: timed out", "d: rolled_back"]
    assert verdict["exceeds"]
    assert verdict["reason"].startswith("ring wave1 (batch 3): 2 of 4 hosts failed (c: timed out; d: rolled_back)")
    assert "49%" in verdict["reason"]
    assert not rollout_judge(batch_vars, _batch(50))["exceeds"]


def test_a_task_past_the_deadline_is_timed_out_with_the_reason():
    record = rollout_failure(
        {"failed": True, "msg": "Task failed: Timed out after 7 second(s).", "timedout": {"period": 7}},
        {"failed": True, "timedout": {"period": 10}},
        None,
        60,
    )
    assert record["outcome"] == Outcome.TIMED_OUT == "timed out"
    assert "rollout_batch_timeout=60" in record["reason"] and "Timed out after 7" in record["reason"]


def test_a_reachability_check_that_hangs_is_timed_out_too():
    record = rollout_failure({"failed": True, "msg": "boom"}, {"failed": True, "timedout": {"period": 10}}, None, 60)
    assert record["outcome"] == "timed out" and "reachability check" in record["reason"]


def test_failure_records_the_module_verdict_or_unreachable():
    deploy = {
        "outcome": "rolled_back",
        "model": {"previous_version": "1.0.0", "serving_version": "1.0.0"},
        "gates": [{"name": "smoke", "passed": False}],
        "rollback": {"reason": "smoke gate: 0 of 8", "seconds": 0.1},
    }
    record = rollout_failure({"msg": "x"}, {"ping": "pong"}, deploy, 900)
    assert record == {
        "outcome": "rolled_back",
        "old_version": "1.0.0",
        "new_version": "1.0.0",
        "gates": [{"name": "smoke", "passed": False}],
        "rollback_seconds": 0.1,
        "reason": "smoke gate: 0 of 8",
    }
    assert rollout_failure({"msg": "gone"}, {"unreachable": True}, None, 900)["outcome"] == "unreachable"
    assert rollout_failure({"msg": "task broke"}, {"ping": "pong"}, None, 900) | {"gates": []} == {
        "outcome": "failed",
        "old_version": None,
        "new_version": None,
        "gates": [],
        "rollback_seconds": None,
        "reason": "task broke",
    }


# --- outcome names and the run's verdict ----------------------------------------------


def test_outcome_names_are_one_set_shared_with_the_playbooks():
    names = rollout_outcomes()
    assert names["deployed"] == "deployed" and names["skipped"] == "skipped (rollout halted)"
    assert names["pending"] == "pending" and names["timed_out"] == "timed out"
    assert names["fleet_rolled_back"] == "rolled back (fleet)"
    assert names["batch_ok"] == ["deployed", "unchanged"]
    assert "rolled_back (requested)" in names["done"] and "pending" not in names["done"]
    assert set(FilterModule().filters()) >= {"rollout_host", "rollout_plan", "rollout_outcomes", "rollout_summary"}


def _rows(**outcome_by_host):
    return [{"host": host, "outcome": outcome} for host, outcome in outcome_by_host.items()]


def test_pending_hosts_pass_the_run_only_when_pending_is_asked_for():
    rows = _rows(a="deployed", b="pending", c="unchanged")
    ok = rollout_summary(rows, unreachable="pending")
    assert ok["completed"] and ok["pending"] == ["b"]
    assert "1 host(s) pending" in ok["status"] and "same command again" in ok["status"]
    assert "--limit b" in ok["status"]
    assert not rollout_summary(rows)["completed"]
    assert rollout_summary(rows)["failed"] == ["b: pending"]


def test_a_halted_run_or_a_failed_host_fails_the_run():
    halted = rollout_summary(_rows(a="rolled back (fleet)"), True, "ring canary: 1 of 1 hosts failed")
    assert not halted["completed"] and halted["status"].startswith("HALTED: ring canary")
    failed = rollout_summary(_rows(a="deployed", b="unreachable at start"))
    assert failed["failed"] == ["b: unreachable at start"] and failed["status"].startswith("did not complete")
    with pytest.raises(AnsibleFilterError, match="rollout_unreachable"):
        rollout_summary([], unreachable="skip")


def test_reports_go_to_the_setting_or_beside_the_inventory():
    assert report_dir({"rollout_report_dir": "/srv/reports", "inventory_dir": "/inv"}) == "/srv/reports"
    assert report_dir({"inventory_dir": "/inv"}) == "/inv/reports"
    with pytest.raises(AnsibleFilterError, match="set rollout_report_dir"):
        report_dir({"inventory_hostname": "edge-1"})


def test_a_paused_run_is_not_completed_and_says_how_to_resume():
    pause = {
        "reason": "EdgeMLInputDrift: digits 1.0.0 on edge-3: inputs drifted (PSI 0.41)",
        "paused_at": "2026-12-06T12:00:00",
    }
    paused = rollout_summary(_rows(a="deployed", b="paused", c="paused"), pause=pause)
    assert not paused["completed"] and paused["paused"] == ["b", "c"] and paused["failed"] == []
    assert paused["status"].startswith("PAUSED: EdgeMLInputDrift: digits 1.0.0 on edge-3")
    assert "2 host(s) not started: b, c" in paused["status"] and "-e rollout_resume=true" in paused["status"]
    # A host that failed before the pause is named too.
    mixed = rollout_summary(_rows(a="rolled_back", b="paused"), pause=pause)
    assert mixed["failed"] == ["a: rolled_back"] and "Failed: a: rolled_back" in mixed["status"]
    assert rollout_summary(_rows(a="deployed"), pause=None)["completed"]


def test_the_pause_file_is_the_setting_or_the_user_s_state_directory(monkeypatch, tmp_path):
    assert pause_file({"rollout_pause_file": "/srv/pause.json"}) == "/srv/pause.json"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    assert pause_file({"rollout_pause_file": "~/p.json"}) == f"{tmp_path}/p.json"
    # Not beside the inventory: ansible-rulebook runs playbooks on a temporary copy of it.
    assert pause_file({"inventory_dir": "/inv"}) == f"{tmp_path}/.local/state/edgeml-fleet/rollout-paused.json"
    monkeypatch.setenv("XDG_STATE_HOME", "/state")
    assert pause_file({}) == "/state/edgeml-fleet/rollout-paused.json"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"reason": "drift on edge-3", "paused_at": "t"}', "drift on edge-3"),
        ('{"paused_at": "t"}', "paused (no reason given)"),
        ("paused!", "the pause file is not the JSON object pause_rollouts.yml writes"),
        ("[1, 2]", "the pause file is not the JSON object pause_rollouts.yml writes"),
    ],
)
def test_any_pause_file_pauses_with_a_reason(content, reason):
    assert pause_record(content)["reason"] == reason


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_no_pause_file_is_no_pause(content):
    assert pause_record(content) is None
