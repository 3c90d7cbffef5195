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

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from labtools import BIN, ROOT, playbook_fact, run_playbook

VM_TOOLS = ("qemu-system-x86_64", "qemu-img", "debootstrap", "mkfs.ext4")
MISSING = [
    *(["root (debootstrap and mkfs of a root file system need it)"] if os.geteuid() != 0 else []),
    *(tool for tool in VM_TOOLS if not shutil.which(tool)),
]
# `make vm-test` (and so `make test`) sets EDGEML_VM_REQUIRED: there a missing tool is a
# failure, not a quiet skip that would let the suite pass without its VM layer.
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


@pytest.mark.slow  # about 8 min under TCG
def test_molecule_vm_scenario(molecule_vm):
    run = molecule_vm["run"]
    assert run.returncode == 0, (
        f"molecule test -s vm failed after {molecule_vm['seconds']} s:\n{run.stdout[-6000:]}\n{run.stderr[-3000:]}"
    )
    assert "idempotence" in run.stdout + run.stderr
    assert not list(MOLECULE_VM_DIR.glob("*.qcow2")), "the throwaway disk is removed"
