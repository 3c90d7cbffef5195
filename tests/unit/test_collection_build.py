"""The collection builds into a tarball that installs and documents itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the collection and install the tarball into an empty collections path."""
    work = tmp_path_factory.mktemp("collection")
    target = work / "collections"
    # An empty config and a neutral cwd: nothing from this checkout's ansible.cfg (whose
    # collections path already holds edgeml.fleet) may leak into the check.
    config = work / "ansible.cfg"
    config.write_text("[defaults]\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(target), ANSIBLE_CONFIG=str(config),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", work, ROOT],
        check=True, capture_output=True, cwd=work, env=env,
    )
    (tarball,) = work.glob("edgeml-fleet-*.tar.gz")
    # --no-deps: the dependencies come from the ansible package (Galaxy is not reachable).
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "install", "--no-deps", "-p", target, tarball],
        check=True, capture_output=True, cwd=work, env=env,
    )
    return {"tarball": tarball, "path": target / "ansible_collections" / "edgeml" / "fleet", "env": env}


def _listing(installed) -> list[str]:
    return subprocess.run(["tar", "-tzf", installed["tarball"]], check=True, capture_output=True,
                          text=True).stdout.split()


def test_tarball_ships_no_local_state(installed):
    listing = _listing(installed)
    for unwanted in (".venv/", ".lab/", ".collections/", ".build/", ".vm/", "inventories/lab/", "examples/"):
        assert not [name for name in listing if name.startswith(unwanted)], unwanted
    for cache in ("__pycache__", ".ruff_cache", ".pytest_cache", ".mypy_cache"):
        assert not [name for name in listing if cache in name.split("/")], cache
    assert not [name for name in listing if name.endswith(".pyc")]
    assert "galaxy.yml" not in listing  # replaced by MANIFEST.json
    assert "MANIFEST.json" in listing


def test_tarball_ships_no_repository_tooling(installed):
    """Tests (but ansible-test's sanity ignore list), Molecule, scripts, benchmarks, CI, the
    Makefile and the checkout's configuration stay in the repository."""
    listing = _listing(installed)
    for unwanted in ("molecule/", "scripts/", "bench/", ".ci/", "server/tests/", "playbooks/group_vars/"):
        assert not [name for name in listing if name.startswith(unwanted)], unwanted
    for unwanted in ("Makefile", "ansible.cfg", "pytest.ini", "ruff.toml", "requirements.txt"):
        assert unwanted not in listing, unwanted
    assert [name for name in listing if name.startswith("tests/") and not name.endswith("/")] == [
        "tests/sanity/ignore-2.19.txt"
    ]


def test_tarball_ships_the_lab_as_test_support_only(installed):
    """The lab fleet, the VM test harness and the example pipeline are this checkout's test
    support; only the podman probe the image-building roles call ships from roles/lab."""
    listing = _listing(installed)
    assert sorted(name for name in listing if name.startswith("roles/lab/") and not name.endswith("/")) == [
        "roles/lab/files/containers.conf",
        "roles/lab/files/podman-conf-probe.sh",
    ]
    playbooks = sorted(name.removeprefix("playbooks/") for name in listing
                       if name.startswith("playbooks/") and name.endswith(".yml"))
    assert playbooks == ["_rollout_report.yml", "_rollout_ring.yml", "_rollout_stage.yml", "aap_configure.yml",
                         "build_server_image.yml", "bundle_model.yml", "deploy_model.yml", "export_release.yml",
                         "fleet_status.yml", "fleet_survey.yml", "import_release.yml", "monitoring.yml",
                         "os_update.yml", "pause_rollouts.yml", "provision.yml", "rollback.yml",
                         "tasks/check_limit.yml", "trust_signers.yml", "vars/job_arguments.yml"]
    # Automation Platform: the definitions and the project template ship (docs/aap.md).
    assert "extensions/aap/controller_config.yml" in listing
    # Event-Driven Ansible: the rulebooks for ansible-rulebook and for an EDA controller.
    for rulebook in ("edgeml-fleet.yml", "vars.yml", "edgeml-fleet-aap.yml", "edgeml-fleet-aap.vars.yml"):
        assert f"extensions/eda/rulebooks/{rulebook}" in listing, rulebook
    assert "extensions/aap/project/deploy_model.yml" in listing
    # The execution environment: its definition and what introspection reads; not the lab's build.
    for shipped in ("execution-environment.yml", "extensions/ee/requirements.yml", "meta/execution-environment.yml",
                    "meta/ee-requirements.txt", "meta/ee-bindep.txt"):
        assert shipped in listing, shipped
    assert not [name for name in listing if name.startswith("playbooks/templates/ee")]
    assert "plugins/filter/lab.py" not in listing


def test_installed_collection_has_its_roles(installed):
    for role in ("edge_host", "model_deployment", "model_server_image", "os_image", "os_update", "microshift",
                 "microshift_deployment", "monitoring"):
        assert (installed["path"] / "roles" / role / "meta" / "argument_specs.yml").is_file(), role
    assert not (installed["path"] / "roles" / "lab" / "meta").exists()


def test_ansible_doc_shows_a_collection_role(installed):
    doc = subprocess.run(
        [BIN / "ansible-doc", "-t", "role", "edgeml.fleet.model_deployment"],
        check=True, capture_output=True, text=True, env=installed["env"], cwd=installed["path"].parents[2],
    )
    assert "model_deployment_bundle_src" in doc.stdout
    assert "ENTRY POINT: *main*" in doc.stdout


def test_ansible_doc_lists_the_collection_roles(installed):
    listing = subprocess.run(
        [BIN / "ansible-doc", "-t", "role", "-l", "edgeml.fleet"],
        check=True, capture_output=True, text=True, env=installed["env"], cwd=installed["path"].parents[2],
    )
    assert "edgeml.fleet.model_deployment" in listing.stdout
    assert "edgeml.fleet.lab" not in listing.stdout
