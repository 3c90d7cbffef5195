"""Testinfra fixture: the Molecule VM, reached over SSH on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra
import yaml


def _instances() -> list[dict]:
    config = os.environ.get("MOLECULE_INSTANCE_CONFIG")
    if not config or not Path(config).exists():
        return []
    return yaml.safe_load(Path(config).read_text()) or []


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "vm" in metafunc.fixturenames:
        instances = _instances()
        metafunc.parametrize("vm", instances, indirect=True, ids=[i["instance"] for i in instances], scope="module")


@pytest.fixture(scope="module")
def vm(request: pytest.FixtureRequest) -> testinfra.host.Host:
    i = request.param
    return testinfra.get_host(
        f"ssh://{i['user']}@{i['address']}:{i['port']}",
        ssh_identity_file=i["identity_file"],
        ssh_extra_args="-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
        controlpersist=120,
    )
