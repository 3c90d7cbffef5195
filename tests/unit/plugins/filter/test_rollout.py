"""Rollout planning: ring order, batch sizes, per-site budgets, the failure threshold."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.rollout import batch_exceeds, rollout_plan, rollout_row


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
    row = rollout_row(
        {
            "inventory_hostname": "edge-1",
            "rollout_describe": {"ring": "canary", "site": "site_a"},
            "rollout_old_version": "1.0.0",
            "rollout_new_version": "1.0.0",
            "rollout_outcome": "rolled_back",
            "rollout_reason": "smoke gate: 0 of 8 vectors right",
            "rollout_gates": [
                {"name": "readiness", "passed": True, "measured": {"seconds_to_ready": 1.5}},
                {"name": "smoke", "passed": False, "measured": {"pass_ratio": 0.0}},
            ],
        }
    )
    assert row["host"] == "edge-1" and row["ring"] == "canary"
    assert row["outcome"] == "rolled_back"
    assert row["gates_text"] == "readiness:ok (seconds_to_ready=1.5); smoke:FAIL (pass_ratio=0.0)"


def test_summary_row_of_a_host_that_never_started():
    row = rollout_row({"inventory_hostname": "edge-9"})
    assert row["outcome"] == "not started"
    assert row["ring"] == "-" and row["gates"] == []
