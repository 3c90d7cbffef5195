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


def test_tarball_ships_no_local_state(installed):
    listing = subprocess.run(["tar", "-tzf", installed["tarball"]], check=True, capture_output=True,
                             text=True).stdout.split()
    for unwanted in (".venv/", ".lab/", ".collections/", ".build/", "inventories/lab/hosts.yml"):
        assert not [name for name in listing if name.startswith(unwanted)], unwanted
    assert "galaxy.yml" not in listing  # replaced by MANIFEST.json
    assert "MANIFEST.json" in listing


def test_installed_collection_has_its_roles(installed):
    assert (installed["path"] / "roles" / "lab" / "meta" / "argument_specs.yml").is_file()


def test_ansible_doc_shows_the_lab_role(installed):
    doc = subprocess.run(
        [BIN / "ansible-doc", "-t", "role", "edgeml.fleet.lab"],
        check=True, capture_output=True, text=True, env=installed["env"], cwd=installed["path"].parents[2],
    )
    assert "lab_host_count" in doc.stdout
    assert "ENTRY POINT: *main* - Bring a local lab fleet" in doc.stdout


def test_ansible_doc_lists_the_collection_roles(installed):
    listing = subprocess.run(
        [BIN / "ansible-doc", "-t", "role", "-l", "edgeml.fleet"],
        check=True, capture_output=True, text=True, env=installed["env"], cwd=installed["path"].parents[2],
    )
    assert "edgeml.fleet.lab" in listing.stdout
