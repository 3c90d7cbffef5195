"""Automation Platform's jobs run through ansible-runner in the lab execution environment.

The fleet is a lab of its own (edgeml-aap: three hosts, one per ring, and a registry), so
that this layer can run beside the end-to-end scenarios, which own the main lab. Its
session brings that lab up, pushes the model server image and builds the execution
environment (playbooks/build_ee.yml) into its registry.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from aapjobs import SHARED_BUNDLES, JobRunner, controller_config, job_inventory
from labtools import ROOT, podman, run_playbook

AAP_DIR = ROOT / ".build" / "aap"
LAB = "edgeml-aap"
# Ports no other lab of the suite uses (main 2221-/18081-/5000, test_lab_play's
# 2321-/18181-/5099, the VM 2290-2292/18092), since they run at the same time.
REGISTRY_PORT = 5003
SSH_PORT_BASE = 2360
MODEL_PORT_BASE = 18360
HOSTS = 3
# What the deploy jobs run (model_deployment_image's default).
SERVER_IMAGE = "localhost/edgeml-model-server:0.1.0"


def pytest_collection_modifyitems(items):
    for item in items:
        item.add_marker(pytest.mark.lab)


def _lab_settings() -> dict:
    return {
        "lab_name": LAB,
        "lab_host_count": HOSTS,
        "lab_ssh_port_base": SSH_PORT_BASE,
        "lab_model_port_base": MODEL_PORT_BASE,
        "lab_registry_port": REGISTRY_PORT,
        "lab_dir": str(AAP_DIR / "lab"),
        "lab_inventory_path": str(AAP_DIR / "lab-hosts.yml"),
        "lab_remove_base_image": False,
        # Its own host image (the default): a lab's image bakes in its registry's name.
    }


@pytest.fixture(scope="session")
def aap_lab() -> dict:
    """The edgeml-aap lab up, the server image and the EE in its registry."""
    run_playbook("lab_up.yml", "-e", json.dumps(_lab_settings()))
    # The suite's artifact lane built the server image already (make shared-artifacts);
    # building it here too, at the same time as the integration tests, would race them.
    if subprocess.run(["podman", "image", "exists", SERVER_IMAGE], check=False).returncode != 0:
        run_playbook("build_server_image.yml")
    podman("push", "--tls-verify=false", SERVER_IMAGE, f"127.0.0.1:{REGISTRY_PORT}/{SERVER_IMAGE.split('/', 1)[1]}")
    report = run_playbook("build_ee.yml", "-e", json.dumps({"build_ee_push_registry": f"127.0.0.1:{REGISTRY_PORT}"}))
    return {
        "inventory": AAP_DIR / "lab-hosts.yml",
        "ssh_key": AAP_DIR / "lab" / "ssh" / "id_ed25519",
        "build_ee": report,
    }


@pytest.fixture(scope="session")
def lab_inventory(aap_lab) -> dict:
    return yaml.safe_load(aap_lab["inventory"].read_text())


@pytest.fixture(scope="session")
def fleet(lab_inventory) -> dict[str, str]:
    """Each host's model URL as the control node reaches it."""
    hosts = lab_inventory["all"]["children"]["edge"]["children"]["debian"]["hosts"]
    return {name: settings["edgeml_model_url_from_controller"] for name, settings in sorted(hosts.items())}


@pytest.fixture(scope="session")
def lab_containers(lab_inventory) -> dict[str, str]:
    """Each host's container on the control node."""
    hosts = lab_inventory["all"]["children"]["edge"]["children"]["debian"]["hosts"]
    return {name: settings["edgeml_lab_container"] for name, settings in hosts.items()}


@pytest.fixture(scope="session")
def canary(lab_inventory) -> str:
    (host,) = lab_inventory["all"]["children"]["canary"]["hosts"]
    return host


@pytest.fixture(scope="session")
def aap_inventory(aap_lab, tmp_path_factory) -> Path:
    # This layer runs beside others on 2 cores (make test): what its gates must catch is a
    # wrong answer (smoke), never a slow one, so the latency budget is out of the way.
    destination = tmp_path_factory.mktemp("aap-inventory") / "hosts.yml"
    return job_inventory(aap_lab["inventory"], destination, latency_budget_ms=5000)


@pytest.fixture(scope="session")
def shared_bundles(model_bundles) -> Path:
    """The jobs' shared bundle storage, holding 1.0.0 (the version the fleet starts on)."""
    shared = AAP_DIR / "bundles"
    shutil.rmtree(shared, ignore_errors=True)
    shutil.copytree(model_bundles / "digits" / "1.0.0", shared / "digits" / "1.0.0")
    return shared


@pytest.fixture(scope="session")
def runner(aap_lab, aap_inventory, shared_bundles, tmp_path_factory) -> JobRunner:
    """Job templates run in the lab EE, with the example models in their project."""
    out = ROOT / "examples" / "out"
    return JobRunner(
        work_dir=tmp_path_factory.mktemp("aap-jobs"),
        inventory=aap_inventory,
        ssh_key=aap_lab["ssh_key"],
        bundles_dir=shared_bundles,
        project_files={path.name: path for path in [*out.glob("digits-*.onnx"), out / "digits-samples.json"]},
    )


@pytest.fixture(scope="session")
def config() -> dict:
    return controller_config()


@pytest.fixture(scope="session")
def bundle_answers() -> dict:
    """The bundle questions of the workflow's survey, for a version of the example models."""
    return lambda version: {
        "bundle_model_name": "digits",
        "bundle_model_version": version,
        "bundle_model_src": f"/runner/project/digits-{version}.onnx",
        "bundle_model_samples_file": "/runner/project/digits-samples.json",
        "bundle_model_dest": SHARED_BUNDLES,
    }
