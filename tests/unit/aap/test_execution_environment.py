# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The execution environment definitions, checked with ansible-builder itself (no build):

- `ansible-builder create` turns execution-environment.yml into a build context whose base
  image is one build argument (EE_BASE_IMAGE) and whose collections are
  extensions/ee/requirements.yml;
- `ansible-builder introspect` on the collection as it installs from its tarball finds the
  Python and system packages of meta/execution-environment.yml, and nothing else of ours;
- those files agree with what the collection declares elsewhere (galaxy.yml's dependencies,
  model_bundle's documented requirements, the versions the suite itself runs).

The lab's build of the image (`make ee`) and jobs run inside it are tests/aap.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
DEFINITION = REPO / "execution-environment.yml"
GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())


def _requirement_lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in _requirement_lines(path):
        if line.startswith("-r"):
            pins.update(_pins(path.parent / line.split()[1]))
        elif "==" in line:
            name, version = line.split("==")
            pins[name.split("[")[0].lower()] = version
    return pins


def _builder(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    # Our ansible.cfg points collections at the checkout: ansible-builder must not see it.
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
    return subprocess.run(
        [BIN / "ansible-builder", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def build_context(tmp_path_factory) -> Path:
    context = tmp_path_factory.mktemp("ee-context")
    _builder("create", "--file", str(DEFINITION), "--context", str(context))
    return context


def test_the_base_image_is_one_build_argument(build_context):
    definition = yaml.safe_load(DEFINITION.read_text())
    containerfile = (build_context / "Containerfile").read_text()
    default = definition["images"]["base_image"]["name"]
    assert f'ARG EE_BASE_IMAGE="{default}"' in containerfile
    # Every stage starts from it, so --build-arg EE_BASE_IMAGE=... swaps all of them.
    assert re.findall(r"^FROM (\S+)", containerfile, re.M)[0] == "$EE_BASE_IMAGE"
    assert "FROM base AS final" in containerfile
    assert definition["options"]["package_manager_path"] in containerfile


def test_the_context_installs_the_collections_of_the_requirements_file(build_context):
    copied = yaml.safe_load((build_context / "_build" / "requirements.yml").read_text())
    assert copied == yaml.safe_load((REPO / "extensions" / "ee" / "requirements.yml").read_text())
    assert "ansible-galaxy collection install" in (build_context / "Containerfile").read_text()


def test_the_requirements_name_the_collection_and_its_dependencies_with_galaxy_ranges():
    wanted = yaml.safe_load((REPO / "extensions" / "ee" / "requirements.yml").read_text())["collections"]
    ranges = {item["name"]: item.get("version") for item in wanted}
    assert ranges.pop(f"{GALAXY['namespace']}.{GALAXY['name']}") == f">={GALAXY['version']}"
    assert ranges == GALAXY["dependencies"]


@pytest.fixture(scope="module")
def installed_collection(tmp_path_factory) -> Path:
    """The collection as `ansible-galaxy collection install` puts it from its tarball."""
    work = tmp_path_factory.mktemp("ee-introspect")
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
    subprocess.run(
        [BIN / "ansible-galaxy", "collection", "build", "--output-path", str(work), str(REPO)],
        env=env,
        check=True,
        capture_output=True,
    )
    tarball = next(work.glob("edgeml-fleet-*.tar.gz"))
    subprocess.run(
        [
            BIN / "ansible-galaxy",
            "collection",
            "install",
            "--offline",
            "--no-deps",
            "-p",
            str(work / "collections"),
            str(tarball),
        ],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
    )
    return work / "collections"


def test_introspection_finds_the_collections_python_and_system_packages(installed_collection):
    found = yaml.safe_load(_builder("introspect", str(installed_collection)).stdout)
    ours = " # from collection edgeml.fleet"
    python = [re.sub(r"\s+#.*", "", line) for line in found["python"] if line.endswith(ours.strip())]
    system = [re.sub(r"\s+#.*", "", line) for line in found["system"] if line.endswith(ours.strip())]
    assert python == _requirement_lines(REPO / "meta" / "ee-requirements.txt")
    assert system == _requirement_lines(REPO / "meta" / "ee-bindep.txt")
    assert "ssh" in " ".join(system)


def test_model_bundles_documented_requirements_are_in_the_ee():
    """The controller-side module that needs Python packages: its doc, its EE file."""
    doc = (REPO / "plugins" / "modules" / "model_bundle.py").read_text()
    documented = yaml.safe_load(doc.split('DOCUMENTATION = r"""')[1].split('"""')[0])["requirements"]
    in_ee = set(_pins(REPO / "meta" / "ee-requirements.txt"))
    assert documented and {name.split()[0].lower() for name in documented} <= in_ee


def test_every_third_party_import_of_the_plugins_is_in_the_ee():
    """Controller-side code (modules run on localhost, filters, lookups, inventory) imports
    these; PyYAML comes with ansible-core."""
    imported = set()
    for path in (REPO / "plugins").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__", "ansible", "ansible_collections", "yaml"}
    assert third_party, "no third-party import found: the scan is broken"
    assert {name.replace("_", "-") for name in third_party} <= set(_pins(REPO / "meta" / "ee-requirements.txt"))


def test_the_ee_pins_are_the_versions_the_suite_runs():
    suite = _pins(REPO / "requirements.txt")
    for name, version in _pins(REPO / "meta" / "ee-requirements.txt").items():
        assert suite.get(name) == version, f"{name}: the EE pins {version}, the suite runs {suite.get(name)}"
