"""The collection as its users get it: built into a tarball, installed with ansible-galaxy into
a clean collections path outside this checkout, and run by name (edgeml.fleet.provision,
deploy_model, rollback) from a project directory of its own, with its own inventory and
bundles, against a lab fleet (the Automation Platform layer's edgeml-aap lab: this test runs in
that layer's lane, beside the end-to-end scenarios that own the main lab).

Nothing of the checkout may be reached: the project has its own ansible.cfg, the collections
path holds only the installed tarball (the dependencies come from the ansible package), and
the inventory carries the lab's connection settings but none of the checkout's paths, so
bundles and reports resolve beside the inventory (docs/paths.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from e2e.fleetops import DEPLOY_SETTINGS, GATES, serving_versions
from labtools import BIN, ROOT, failed_tasks

GOOD_VERSIONS = ("1.0.0", "3.0.0")
# The lab inventory's settings that name paths in this checkout: the project must do without.
CHECKOUT_PATH_VARS = (
    "model_deployment_bundle_src", "rollout_report_dir", "rollout_pause_file", "edgeml_trusted_keys"
)
# This lane runs at a lower CPU priority beside the e2e scenarios: latency is not what is tested here.
INSTALLED_GATES = {**GATES, "latency": {**GATES["latency"], "p95_ms": 5000}}


def _user_inventory(lab_inventory: Path) -> dict:
    """The lab inventory as a user would write it: hosts, ports, SSH key, groups, rings and
    registry settings, without the checkout's paths and the lab's container names."""
    inventory = yaml.safe_load(lab_inventory.read_text())
    for name in CHECKOUT_PATH_VARS:
        inventory["all"]["vars"].pop(name, None)
    # The signer's public key is kept with the project, beside the inventory.
    inventory["all"]["vars"]["edgeml_trusted_keys"] = ["{{ inventory_dir }}/keys/digits-signing.pub"]
    for host in inventory["all"]["children"]["edge"]["children"]["debian"]["hosts"].values():
        host.pop("edgeml_lab_container", None)
    return inventory


@pytest.fixture(scope="module")
def project(tmp_path_factory, model_bundles, aap_lab) -> dict:
    """A user's project outside the checkout with the tarball installed into ./collections."""
    work = tmp_path_factory.mktemp("installed-collection")
    assert ROOT not in work.parents, work
    dist, project = work / "dist", work / "project"
    dist.mkdir()
    project.mkdir()
    collections = project / "collections"
    # What a user's ansible.cfg would hold for this fleet: the same SSH settings as the
    # checkout's, and the project-local collections path.
    config = project / "ansible.cfg"
    config.write_text(
        "[defaults]\n"
        "collections_path = ./collections\n"
        "host_key_checking = False\n"
        "interpreter_python = auto_silent\n"
        "retry_files_enabled = False\n"
        "forks = 16\n"
        "[ssh_connection]\n"
        "pipelining = True\n"
        "ssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile=/dev/null"
        " -o StrictHostKeyChecking=no\n"
    )
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "MOLECULE_", "PYTHONPATH"))
    }
    env.update(
        ANSIBLE_CONFIG=str(config),
        ANSIBLE_COLLECTIONS_PATH=str(collections),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )

    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", dist, ROOT],
        check=True, capture_output=True, cwd=project, env=env,
    )
    (tarball,) = dist.glob("edgeml-fleet-*.tar.gz")
    # --no-deps: the dependencies come from the ansible package (Galaxy is not reachable).
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", "./collections", tarball],
        check=True, capture_output=True, cwd=project, env=env,
    )

    (project / "hosts.yml").write_text(yaml.safe_dump(_user_inventory(aap_lab["inventory"]), sort_keys=False))
    shutil.copytree(model_bundles, project / "bundles")
    (project / "keys").mkdir()
    shutil.copy(model_bundles.parent / "keys" / "digits-signing.pub", project / "keys")
    return {"dir": project, "env": env, "collection": collections / "ansible_collections" / "edgeml" / "fleet"}


@pytest.fixture(scope="module")
def fleet(project) -> dict[str, str]:
    """Each host's model URL on 127.0.0.1, as the project's inventory gives it."""
    listing = json.loads(
        subprocess.run(
            [BIN / "ansible-inventory", "-i", "hosts.yml", "--list"],
            check=True, capture_output=True, text=True, cwd=project["dir"], env=project["env"],
        ).stdout
    )
    hostvars = listing["_meta"]["hostvars"]
    # The edge hosts (the inventory also holds the monitoring host).
    return {host: hostvars[host]["edgeml_model_url_from_controller"] for host in sorted(listing["debian"]["hosts"])}


def run_installed(project: dict, playbook: str, *args: str) -> dict:
    """ansible-playbook edgeml.fleet.PLAYBOOK from the project directory, with its inventory."""
    env = dict(project["env"], ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
    result = subprocess.run(
        [BIN / "ansible-playbook", f"edgeml.fleet.{playbook}", "-i", "hosts.yml", *args],
        capture_output=True, text=True, cwd=project["dir"], env=env, check=False,
    )
    try:
        report = json.loads(result.stdout[result.stdout.index("{") :])
    except ValueError:
        report = None
    if result.returncode != 0:
        failures = failed_tasks(report) if report else result.stdout[-4000:]
        raise AssertionError(
            f"edgeml.fleet.{playbook} failed ({result.returncode}):\n{failures}\n{result.stderr[-2000:]}"
        )
    return report


def settings(**extra) -> list[str]:
    """The e2e scenarios' deployment settings (plain-HTTP registry), with a wide latency budget."""
    return ["-e", json.dumps({**DEPLOY_SETTINGS, "model_deployment_gates": INSTALLED_GATES, **extra})]


def reports(directory: Path) -> list[Path]:
    return sorted(directory.glob("rollout-*.json"))


def test_the_collection_runs_from_the_clean_path(project):
    listing = subprocess.run(
        [BIN / "ansible-galaxy", "collection", "list", "edgeml.fleet", "--format", "json"],
        check=True, capture_output=True, text=True, cwd=project["dir"], env=project["env"],
    )
    found = {path: list(collections) for path, collections in json.loads(listing.stdout).items()}
    assert found == {str(project["collection"].parents[2] / "ansible_collections"): ["edgeml.fleet"]}
    # What the checkout has and users do not: no lab role, no example pipeline output.
    assert not (project["collection"] / "roles" / "lab" / "tasks").exists()
    assert not (project["collection"] / "examples").exists()


def test_provision_deploy_and_rollback_from_the_installed_collection(project, fleet):
    project_reports = reports(project["dir"] / "reports")
    run_installed(project, "provision")

    before = serving_versions(fleet)
    if len(set(before.values())) != 1 or next(iter(before.values())) not in GOOD_VERSIONS:
        # A fleet left mixed or on a bad version: start from a good one everywhere.
        run_installed(project, "deploy_model", *settings(model_version=GOOD_VERSIONS[0]))
        before = serving_versions(fleet)
    assert set(before.values()) <= set(GOOD_VERSIONS) and len(set(before.values())) == 1, before
    baseline = next(iter(before.values()))
    target = next(version for version in GOOD_VERSIONS if version != baseline)

    run_installed(project, "deploy_model", *settings(model_version=target))
    assert serving_versions(fleet) == dict.fromkeys(fleet, target)
    (report_file,) = reports(project["dir"] / "reports")[-1:]
    report = json.loads(report_file.read_text())
    assert {row["host"]: row["outcome"] for row in report["hosts"]} == dict.fromkeys(fleet, "deployed")

    run_installed(project, "rollback", *settings())
    assert serving_versions(fleet) == dict.fromkeys(fleet, baseline)
    rollback = json.loads(reports(project["dir"] / "reports")[-1].read_text())
    assert {row["host"]: row["new_version"] for row in rollback["hosts"]} == dict.fromkeys(fleet, baseline)

    # Each rollout's report went to the project, none to the checkout (whose reports dir the
    # e2e scenarios write to meanwhile: the names, not the count, tell which run wrote what).
    written = [path for path in reports(project["dir"] / "reports") if path not in project_reports]
    assert len(written) >= 2, written  # the deployment and the rollback, at least
    assert not [path.name for path in written if (ROOT / ".build" / "reports" / path.name).exists()]
