"""Testinfra fixtures: every Molecule instance, reached with podman exec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra
import yaml


def _instances() -> list[str]:
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory or not Path(inventory).exists():
        return []
    data = yaml.safe_load(Path(inventory).read_text()) or {}
    return sorted(data.get("all", {}).get("hosts", {}) or {})


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edge" in metafunc.fixturenames:
        names = _instances()
        metafunc.parametrize("edge", names, indirect=True, ids=names, scope="module")


@pytest.fixture(scope="module")
def edge(request: pytest.FixtureRequest) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{request.param}")
