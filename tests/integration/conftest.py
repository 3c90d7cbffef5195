"""Integration tests run against the local lab fleet (`make lab-up`)."""

from __future__ import annotations

import pytest
from e2e.fleetops import ALL_AT_ONCE, deploy, latest_report, outcomes
from labtools import lab_fleet, require_lab, serving_versions


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.lab)


# Like the e2e scenarios, on two pytest-xdist workers, each on its own lab (tests/labtools.py:
# LAB), a file at a time.
def pytest_sessionstart(session):
    require_lab()


@pytest.fixture(scope="session")
def lab_hosts() -> list[str]:
    return sorted(lab_fleet())


@pytest.fixture
def fleet_serving(model_bundles, server_image) -> dict[str, str]:
    """Every lab host's model URL, each host serving a version: when any serves nothing (a lab
    just made), 3.0.0 is deployed to all at once. The tests that read what the fleet serves
    must not rely on an earlier test's rollout, which may have run on the other worker's lab."""
    fleet = lab_fleet()
    if None in serving_versions(fleet).values():
        report = deploy("3.0.0", **ALL_AT_ONCE)
        assert report["returncode"] == 0, outcomes(latest_report())
    assert None not in serving_versions(fleet).values(), serving_versions(fleet)
    return fleet
