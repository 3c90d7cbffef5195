"""Testinfra fixture: the Molecule VM, reached over SSH on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra
import yaml


def _instances() -> list[dict]:
    """The VM(s) create.yml wrote to Molecule's instance config; none is an error.

    An empty list would parametrize every test with nothing, which pytest reports as a
    skip: the verify step would then pass without checking the VM.
    """
    config = os.environ.get("MOLECULE_INSTANCE_CONFIG")
    if not config:
        problem = "MOLECULE_INSTANCE_CONFIG is not set"
    elif not Path(config).is_file():
        problem = f"MOLECULE_INSTANCE_CONFIG is {config}, which does not exist"
    else:
        instances = yaml.safe_load(Path(config).read_text()) or []
        if instances:
            return instances
        problem = f"{config} lists no instance"
    pytest.fail(
        f"no Molecule instance found: {problem}. These tests are the verify step of the Molecule "
        "scenario vm: Molecule passes them the VM in MOLECULE_INSTANCE_CONFIG, the instance config "
        "its create step (molecule/vm/create.yml) writes once the VM booted. Run `molecule test -s vm` "
        "(`make vm-molecule`), or `molecule verify -s vm` after `molecule converge -s vm`.",
        pytrace=False,
    )


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
