"""Integration tests run against the local lab fleet (`make lab-up`)."""

from __future__ import annotations

import json
import subprocess

import pytest
from labtools import BIN, LAB_INVENTORY


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.lab)


def pytest_sessionstart(session):
    if not LAB_INVENTORY.is_file():
        pytest.exit(
            f"no lab inventory at {LAB_INVENTORY}: bring the lab up first (make lab-up)", returncode=1
        )


@pytest.fixture(scope="session")
def lab_hosts() -> list[str]:
    listing = subprocess.run(
        [BIN / "ansible-inventory", "-i", LAB_INVENTORY, "--list"],
        check=True,
        capture_output=True,
        text=True,
    )
    inventory = json.loads(listing.stdout)
    return sorted(inventory["debian"]["hosts"])
