"""Integration tests run against the local lab fleet (`make lab-up`)."""

from __future__ import annotations

import json
import subprocess

import pytest
from labtools import BIN, LAB_INVENTORY, require_lab


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.lab)


# Like the e2e scenarios, on two pytest-xdist workers, each on its own lab (tests/labtools.py:
# LAB), a file at a time.
def pytest_sessionstart(session):
    require_lab()


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
