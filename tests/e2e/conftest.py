"""End-to-end rollout scenarios on the lab fleet: real hosts, real podman, real HTTP."""

from __future__ import annotations

import pytest
from fleetops import (
    ALL_AT_ONCE,
    LoadGenerator,
    deploy,
    known_inputs,
    lab_hostvars,
    latest_report,
    outcomes,
    serving_versions,
)
from labtools import ARTIFACT_LOCK, LAB, lab_fleet, locked, podman, require_lab


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.lab)


# `make e2e` runs the scenarios on two pytest-xdist workers, each on its own lab
# (tests/labtools.py: LAB), a file at a time (--dist loadfile): a file's scenarios build on
# each other's fleet state (and its registries), as they do when run alone.
def pytest_sessionstart(session):
    require_lab()


@pytest.fixture(scope="session")
def fleet() -> dict[str, str]:
    """Each lab host's model URL as the controller reaches it."""
    return lab_fleet()


@pytest.fixture(scope="session")
def lab_vars() -> dict[str, dict]:
    """Every lab host's variables, as the inventory gives them to the playbooks."""
    return lab_hostvars()


@pytest.fixture
def fleet_on(fleet, model_bundles, server_image):
    """Bring the whole fleet to a version (only when it is not there already), all at once."""

    def bring(version: str, image_settings: dict | None = None) -> None:
        if set(serving_versions(fleet).values()) != {version} or image_settings:
            report = deploy(version, **ALL_AT_ONCE, **(image_settings or {}))
            assert report["returncode"] == 0, outcomes(latest_report())
        assert set(serving_versions(fleet).values()) == {version}

    return bring


@pytest.fixture
def load(fleet, model_bundles):
    """Known-answer traffic to every host meanwhile: `with load(rolling_out="3.0.0") as traffic:`."""
    inputs = known_inputs(model_bundles)
    return lambda **kwargs: LoadGenerator(fleet, inputs, **kwargs)


def _image_variant(server_image: dict, tag: str, containerfile_tail: str, tmp_path_factory) -> dict:
    """A variant of the model server image, built FROM it and pushed to the lab's registry."""
    context = tmp_path_factory.mktemp(f"image-{tag}")
    (context / "Containerfile").write_text(f"FROM {server_image['image']}\n{containerfile_tail}\n")
    name = f"localhost/edgeml-model-server:{tag}"
    with locked(ARTIFACT_LOCK):  # the other e2e worker builds the same name
        podman("build", "--format", "docker", "-t", name, str(context))
        podman("push", "--tls-verify=false", name, f"{LAB.registry}/edgeml-model-server:{tag}")
    return {"model_deployment_image": name}


@pytest.fixture(scope="session")
def crashing_image(server_image, tmp_path_factory) -> dict:
    """A server image whose process dies at start (a broken release)."""
    return _image_variant(server_image, "crash", 'ENTRYPOINT ["/bin/false"]', tmp_path_factory)


@pytest.fixture(scope="session")
def next_image(server_image, tmp_path_factory) -> dict:
    """A working server image with another digest (a new server release)."""
    return _image_variant(server_image, "next", 'LABEL io.edgeml.test.release="next"', tmp_path_factory)
