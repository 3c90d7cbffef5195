"""Testinfra fixtures: every Molecule instance, reached with podman exec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra
import yaml


def _instances() -> list[str]:
    """The scenario's instances, from the inventory Molecule wrote; none is an error.

    An empty list would parametrize every test with nothing, which pytest reports as a
    skip: the verify step would then pass without checking a single host.
    """
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    if not inventory:
        problem = "MOLECULE_INVENTORY_FILE is not set"
    elif not Path(inventory).is_file():
        problem = f"MOLECULE_INVENTORY_FILE is {inventory}, which does not exist"
    else:
        data = yaml.safe_load(Path(inventory).read_text()) or {}
        names = sorted(data.get("all", {}).get("hosts", {}) or {})
        if names:
            return names
        problem = f"{inventory} lists no host under all.hosts"
    pytest.fail(
        f"no Molecule instance found: {problem}. These tests are the verify step of the Molecule "
        "scenario edge_host: Molecule passes them its instances in MOLECULE_INVENTORY_FILE, the "
        "inventory it writes when it creates them. Run `molecule test -s edge_host` (`make molecule`), "
        "or `molecule verify -s edge_host` after `molecule converge -s edge_host`.",
        pytrace=False,
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "edge" in metafunc.fixturenames:
        names = _instances()
        metafunc.parametrize("edge", names, indirect=True, ids=names, scope="module")


@pytest.fixture(scope="module")
def edge(request: pytest.FixtureRequest) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{request.param}")
