"""Fixtures shared by the lab test layers: the artifacts a deployment needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from labtools import LAB, ROOT, playbook_fact, run_playbook


@pytest.fixture(scope="session")
def model_bundles() -> Path:
    """The example digits bundles (playbooks/build_models.yml), built once per session."""
    run_playbook("build_models.yml")
    return ROOT / "examples" / "out" / "bundles"


@pytest.fixture(scope="session")
def server_image(tmp_path_factory) -> dict:
    """The model server image, built by its role, pushed to the lab's registry and archived."""
    archive = tmp_path_factory.mktemp("image") / "edgeml-model-server.oci.tar"
    settings = {
        "model_server_image_push_registry": LAB.registry,
        "model_server_image_push_tls_verify": False,
        "model_server_image_archive": str(archive),
    }
    report = run_playbook("build_server_image.yml", "-e", json.dumps(settings))
    built = playbook_fact(report, "model_server_image_result")
    built["archive"] = archive
    built["registry_ref"] = f"{LAB.registry_on_lab_network}/edgeml-model-server:" + built["image"].rsplit(":", 1)[1]
    return built
