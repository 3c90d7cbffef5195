"""The VM layer: build the debian OS image, then boot it once under qemu (TCG): the boot
test sees it serve, and the Molecule scenario applies edge_host inside that same VM
(the boot test is the scenario's create step: one boot under TCG instead of two).

Part of `make test` (in the background beside the container layers, see
scripts/run-test-suite.sh); runs alone with `pytest -m vm tests/vm` or `make vm-test`
(root, qemu-system-x86, debootstrap, podman);
`pytest -m "vm and not slow" tests/vm` leaves out the VM (only the image is built);
`make vm-boot-test` runs the boot test alone.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from labtools import BIN, ROOT, playbook_fact, run_playbook
from skipcheck import NO_SKIPS

VM_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")
MISSING = [
    *(["root (debootstrap and mkfs of a root file system need it)"] if os.geteuid() != 0 else []),
    *(tool for tool in VM_TOOLS if not shutil.which(tool)),
]
# `make vm-test` (and so `make test`) sets EDGEML_VM_REQUIRED: there a missing tool is a
# failure with what is missing. Elsewhere the module skips, and that skip fails the run too
# unless tests/skip-allowlist.yml allows it (tests/skipcheck.py): it does not.
REQUIRED = os.environ.get("EDGEML_VM_REQUIRED") == "1"

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(bool(MISSING) and not REQUIRED, reason=f"needs {', '.join(MISSING)}"),
]


@pytest.fixture(scope="module", autouse=True)
def vm_tools_present():
    assert not MISSING, f"the VM layer needs {', '.join(MISSING)}: run `make setup` as root"


OUT = ROOT / ".build" / "os_image" / "out"
MANIFEST = OUT / "edgeml-os-1.0.0.debian.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def debian_image(model_bundles) -> dict:
    """Build (or find up to date) the debian image; the build skips when inputs are unchanged."""
    started = time.monotonic()
    report = run_playbook("build_image.yml")
    result = playbook_fact(report, "os_image_result")
    result["playbook_seconds"] = round(time.monotonic() - started, 1)
    return result


def test_debian_image_is_built(debian_image):
    manifest = json.loads(MANIFEST.read_text())
    assert manifest["inputs_sha256"] == debian_image["inputs_sha256"]
    assert set(manifest["artifacts"]) == {"raw", "qcow2", "vmlinuz", "initrd.img"}
    for artifact in manifest["artifacts"].values():
        path = Path(artifact["path"])
        assert path.stat().st_size == artifact["size"]
    # Checksum the small ones here (the disks are large; their digests come from the role).
    for name in ("vmlinuz", "initrd.img"):
        assert _sha256(Path(manifest["artifacts"][name]["path"])) == manifest["artifacts"][name]["sha256"]
    qcow2 = subprocess.run(
        ["qemu-img", "info", "--output=json", manifest["artifacts"]["qcow2"]["path"]],
        check=True,
        capture_output=True,
        text=True,
    )
    assert json.loads(qcow2.stdout)["format"] == "qcow2"
    assert manifest["model"]["name"] == "digits" and manifest["model"]["version"] == "1.0.0"
    assert manifest["boot"]["cmdline"].startswith("root=/dev/vda")


def test_debian_image_second_build_changes_nothing(debian_image):
    report = run_playbook("build_image.yml")
    again = playbook_fact(report, "os_image_result")
    assert again["changed"] is False
    assert again["artifacts"] == debian_image["artifacts"]
    changed = [
        task["task"]["name"]
        for play in report["plays"]
        for task in play["tasks"]
        for result in task["hosts"].values()
        if result.get("changed") and "os_image" in task["task"].get("path", "")
    ]
    assert changed == [], changed


MOLECULE_VM_DIR = ROOT / ".vm" / "molecule"


@pytest.fixture(scope="module")
def molecule_vm(debian_image) -> dict:
    """`molecule test -s vm`: its create step is the boot test (playbooks/boot_test.yml,
    which leaves the VM running for converge); destroy checks the VM powered off by itself."""
    (MOLECULE_VM_DIR / "result.json").unlink(missing_ok=True)
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", ANSIBLE_FORCE_COLOR="0", NO_COLOR="1")
    started = time.monotonic()
    run = subprocess.run(
        [BIN / "molecule", "test", "-s", "vm"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    return {"run": run, "seconds": round(time.monotonic() - started)}


@pytest.mark.slow  # boots the VM (the boot test is Molecule's create step)
def test_boot_test_serves_the_model(molecule_vm):
    result_file = MOLECULE_VM_DIR / "result.json"
    run = molecule_vm["run"]
    assert result_file.is_file(), f"the boot test (Molecule's create) wrote no result:\n{run.stdout[-6000:]}"
    result = json.loads(result_file.read_text())
    assert result["unit_state"] == "active"
    assert result["infer_outputs"] == ["label", "probabilities"]
    assert result["accel"] == "tcg,thread=single"
    assert 0 < result["boot_to_ssh_seconds"] <= result["boot_to_ready_seconds"]


MOLECULE_VM_TESTS = ROOT / "molecule" / "vm" / "tests"
# The last line of a pytest run: "==== 7 passed, 1 warning in 12.34s (0:00:12) ====".
PYTEST_SUMMARY = re.compile(r"=+ (\d+ [a-z]+(?:, \d+ [a-z]+)*) in [\d.]+s\b[^\n]*?=+\s*$", re.MULTILINE)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def verify_tests() -> list[str]:
    """The test functions of the scenario's verify step (molecule/vm/tests/test_*.py)."""
    return sorted(
        node.name
        for path in MOLECULE_VM_TESTS.glob("test_*.py")
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    )


def verify_results(output: str) -> dict[str, int]:
    """The counts of the verify step's pytest summary line (testinfra, -v) in Molecule's output."""
    summaries = PYTEST_SUMMARY.findall(output)
    assert len(summaries) == 1, f"the verify step's pytest run should print one summary line: {summaries}"
    counts = {}
    for part in summaries[0].split(", "):
        number, word = part.split(" ", 1)
        counts[word] = int(number)
    return counts


@pytest.mark.slow  # about 8 min under TCG
def test_molecule_vm_scenario(molecule_vm):
    run = molecule_vm["run"]
    assert run.returncode == 0, (
        f"molecule test -s vm failed after {molecule_vm['seconds']} s:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    )
    output = ANSI.sub("", run.stdout + "\n" + run.stderr)
    assert "idempotence" in output
    # converge ran model_deployment (gates included).
    assert "TASK [edgeml.fleet.model_deployment : " in output
    # The verify step's own results, not only Molecule's exit status: a verify that found
    # no test file, collected nothing or skipped everything exits 0 too.
    tail = output[-6000:]
    counts = verify_results(output)
    assert counts.get("passed", 0) > 0, f"the verify step passed no test: {counts}\n{tail}"
    assert set(counts) <= {"passed", "warning", "warnings"}, f"the verify step did not only pass: {counts}\n{tail}"
    tests = verify_tests()
    assert tests, f"no test function in {MOLECULE_VM_TESTS}"
    not_passed = [name for name in tests if not re.search(rf"::{name}(\[[^\]\s]*\])? PASSED", output)]
    assert not not_passed, f"the verify step did not pass {not_passed}:\n{tail}"
    assert counts["passed"] >= len(tests), counts
    # The skip policy ran in the verify step too (the repository's pytest.ini loads it).
    assert NO_SKIPS in output, f"the verify step printed no skip summary:\n{tail}"
    assert not list(MOLECULE_VM_DIR.glob("*.qcow2")), "the throwaway disk is removed"


def test_bootc_containerfile_builds_on_the_stand_in_base(model_bundles):
    """The bootc backend's Containerfile, built with podman from the lab's Debian base, which
    stands in for a bootc base here (no bootc base image can be pulled, and without
    bootc-image-builder no disk image is made: the README's support table says so). A second
    run with the same context builds nothing."""
    first = playbook_fact(run_playbook("build_image.yml", "-e", "os_image_backend=bootc"), "os_image_result")
    assert first["backend"] == "bootc" and first["bootable"] is False
    assert first["disk_images"] == "skipped: no bootc-image-builder"
    image = f"{first['image']}:{first['tags'][-1]}"
    inspect = subprocess.run(["podman", "image", "inspect", image], check=True, capture_output=True, text=True)
    inspected = json.loads(inspect.stdout)[0]
    assert inspected["Id"].removeprefix("sha256:") == first["id"].removeprefix("sha256:")
    assert inspected["Labels"]["io.edgeml.build.context-sha256"]
    again = playbook_fact(run_playbook("build_image.yml", "-e", "os_image_backend=bootc"), "os_image_result")
    assert again["changed"] is False and again["id"] == first["id"]
