"""The model server image, built by its role, serves a bundle on a lab edge host under quadlet."""

from __future__ import annotations

import json
import math
import subprocess
import time

import pytest
import requests
import testinfra
from labtools import BIN, LAB, LAB_INVENTORY, podman

HOST = "edge-4"
BUNDLE_ROOT = "/var/lib/edgeml-itest/bundles"
UNIT = "/etc/containers/systemd/edgeml-itest.container"


def _ansible(module: str, arguments: str) -> None:
    command = [BIN / "ansible", "-i", LAB_INVENTORY, HOST, "-m", module, "-a", arguments]
    subprocess.run(command, check=True, capture_output=True)


def _copy_bundle(bundles, version: str) -> None:
    _ansible("ansible.builtin.copy", f"src={bundles}/digits/{version}/ dest={BUNDLE_ROOT}/digits/{version}/")
    _ansible("ansible.builtin.copy", f"content='{version}\n' dest={BUNDLE_ROOT}/digits/current")


def _host_facts() -> dict:
    listing = subprocess.run(
        [BIN / "ansible-inventory", "-i", LAB_INVENTORY, "--host", HOST],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(listing.stdout)


@pytest.fixture(scope="module")
def served(model_bundles, server_image):
    """digits 1.0.0 served from the registry-pulled image by a quadlet unit on the host."""
    host = testinfra.get_host(f"ansible://{HOST}?ansible_inventory={LAB_INVENTORY}")
    # The lab's serving port may be held by a model deployment (an earlier test's): its
    # slot is stopped for this test and started again after it.
    listed = host.run("systemctl list-units --state=active --plain --no-legend 'edgeml-digits-*.service'").stdout
    deployed = [line.split()[0] for line in listed.splitlines() if line.strip()]
    if deployed:
        host.run_expect([0], "systemctl stop " + " ".join(deployed))
    _copy_bundle(model_bundles, "1.0.0")
    unit = "\n".join(
        [
            "[Container]",
            "ContainerName=edgeml-itest",
            f"Image={server_image['registry_ref']}",
            f"Volume={BUNDLE_ROOT}:/models:ro",
            "Environment=EDGEML_MODEL=digits",
            "PublishPort=8080:8080",
            "Pull=newer",
            "ReadOnly=true",
            "Notify=healthy",
            "[Service]",
            "TimeoutStartSec=300",
            "",
        ]
    )
    _ansible("ansible.builtin.copy", f"content='{unit}' dest={UNIT}")
    host.run_expect([0], "systemctl daemon-reload")
    started = host.run("systemctl start edgeml-itest.service")
    assert started.rc == 0, host.run("journalctl -u edgeml-itest.service --no-pager -n 40").stdout
    yield host, _host_facts()["edgeml_model_url_from_controller"]
    host.run(f"systemctl stop edgeml-itest.service; rm -f {UNIT}; systemctl daemon-reload")
    host.run("rm -rf /var/lib/edgeml-itest")
    if deployed:
        host.run_expect([0], "systemctl start " + " ".join(deployed))


def test_ready_after_self_test(served):
    _host, url = served
    assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    assert requests.get(f"{url}/v2/models/digits/ready", timeout=5).status_code == 200
    metadata = requests.get(f"{url}/v2/models/digits", timeout=5).json()
    assert metadata["name"] == "digits"
    assert "1.0.0" in metadata["versions"]


def test_infer_answers_what_the_bundle_recorded(served, model_bundles):
    _host, url = served
    manifest = json.loads((model_bundles / "digits" / "1.0.0" / "model.json").read_text())
    tolerance = manifest["smoke_tests"]["tolerance"]
    for vector in manifest["smoke_tests"]["vectors"]:
        answer = requests.post(f"{url}/v2/models/digits/infer", json={"inputs": vector["inputs"]}, timeout=5)
        assert answer.status_code == 200, answer.text
        outputs = {output["name"]: output for output in answer.json()["outputs"]}
        for recorded in vector["outputs"]:
            got = outputs[recorded["name"]]
            assert got["shape"] == recorded["shape"]
            for actual, expected in zip(got["data"], recorded["data"]):
                assert math.isclose(actual, expected, rel_tol=tolerance["rtol"], abs_tol=tolerance["atol"])


def test_runs_as_non_root_on_a_read_only_root(served):
    host, _url = served
    inspected = json.loads(host.check_output("podman inspect edgeml-itest"))[0]
    assert inspected["Config"]["User"] not in ("", "0", "root")
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert host.check_output("podman exec edgeml-itest id -u") != "0"
    assert host.run("podman exec edgeml-itest touch /opt/edgeml-server/x").rc != 0


def test_image_carries_oci_labels_and_a_healthcheck(server_image):
    labels = server_image["labels"]
    assert labels["org.opencontainers.image.version"]
    assert labels["org.opencontainers.image.source"]
    inspected = json.loads(podman("image", "inspect", server_image["image"]))[0]
    assert "/v2/health/ready" in " ".join(inspected["Healthcheck"]["Test"])


def test_air_gapped_archive_loads_on_a_host_as_the_same_image(server_image):
    """The OCI archive is copied to a host (as to an air-gapped one) and loaded there."""
    podman("cp", str(server_image["archive"]), f"{LAB.container('edge-3')}:/tmp/edgeml-model-server.oci.tar")
    host = testinfra.get_host(f"ansible://edge-3?ansible_inventory={LAB_INVENTORY}")
    try:
        loaded = host.check_output("podman load -q -i /tmp/edgeml-model-server.oci.tar").split()[-1]
        labels = json.loads(
            host.check_output(f"podman image inspect --format '{{{{json .Labels}}}}' {loaded}")
        )
        # Same build: the label that records the build context's digest travels with it.
        context = "io.edgeml.build.context-sha256"
        assert labels[context] == server_image["labels"][context]
        python = "--entrypoint /opt/edgeml-server/venv/bin/python"
        assert host.run(f"podman run --rm {python} {loaded} -c 'import onnxruntime'").rc == 0
    finally:
        host.run("rm -f /tmp/edgeml-model-server.oci.tar")


def test_swap_version_in_place_without_restart(served, model_bundles):
    """A new version appears next to the old one; SIGHUP makes the server switch to it."""
    host, url = served
    _copy_bundle(model_bundles, "3.0.0")
    started_at = host.check_output("podman inspect --format '{{.State.StartedAt}}' edgeml-itest")
    host.run_expect([0], "podman kill --signal HUP edgeml-itest")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "3.0.0" in requests.get(f"{url}/v2/models/digits", timeout=5).json().get("versions", []):
            break
        time.sleep(0.5)
    answer = requests.post(
        f"{url}/v2/models/digits/infer",
        json={"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]},
        timeout=5,
    )
    assert answer.json()["model_version"] == "3.0.0"
    assert host.check_output("podman inspect --format '{{.State.StartedAt}}' edgeml-itest") == started_at
