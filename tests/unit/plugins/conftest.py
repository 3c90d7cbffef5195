"""Fixtures the plugin unit tests share."""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_registry import PodmanClient
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.modules import model_bundle
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models
from ansible_collections.edgeml.fleet.tests.unit.plugins.bundle_models import write_key


@pytest.fixture
def keys(tmp_path):
    """Three signing keys: release and next (both trusted while keys rotate), stranger."""
    directory = tmp_path / "keys"
    directory.mkdir()
    return {name: write_key(directory, name) for name in ("release", "next", "stranger")}


@pytest.fixture
def digits_bundle(tmp_path, capsys) -> Path:
    """A digits 1.0.0 bundle as model_bundle writes it (model, manifest with smoke vectors), unsigned."""
    src = models.write(tmp_path / "digits.onnx", models.digits_model())
    inputs, expected = models.digits_samples(3)
    args = dict(src=src, dest=str(tmp_path / "bundles"), name="digits", version="1.0.0")
    result = models.run_module(model_bundle.main, dict(args, sample_inputs=inputs, expected_outputs=expected), capsys)
    assert not result.get("failed"), result
    return Path(result["bundle_path"])


class Podman(PodmanClient):
    """The real podman, through the modules' client, outside a module run."""

    def __init__(self) -> None:
        super().__init__(None)

    def run(self, *args: str, check: bool = True) -> tuple[int, str, str]:
        done = subprocess.run(["podman", *args], capture_output=True, text=True, check=False)
        if check and done.returncode != 0:
            raise EdgeMLError(f"podman {' '.join(args)}: {done.stderr}", "")
        return done.returncode, done.stdout, done.stderr


# Tests that use podman's storage take turns across xdist workers: the same bundle makes the
# same image ID in every test, so one test's rmi removed the image another was saving, and
# podman's build cache pointed at layers being removed ("layer not known").
PODMAN_LOCK = "/tmp/edgeml-unit-podman.lock"


@pytest.fixture
def podman():
    """(the real podman's client, a list of images to remove afterwards), podman's storage
    this test's alone until it ends."""
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed: run `make setup`")
    with open(PODMAN_LOCK, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = Podman()
        images: list[str] = []
        yield client, images
        for image in images:
            client.run("rmi", "--force", image, check=False)
