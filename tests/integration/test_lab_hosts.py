"""Every lab host is a real edge host: systemd, sshd, podman with quadlet, own storage."""

from __future__ import annotations

import pytest
import testinfra
from labtools import LAB, LAB_INVENTORY, podman

testinfra_hosts = [f"ansible://debian?ansible_inventory={LAB_INVENTORY}"]

PROBE_UNIT = "/etc/containers/systemd/edgeml-probe.container"
PROBE_IMAGE = "edgeml-lab/debian-base:trixie"


def test_systemd_booted_to_running(host):
    state = host.run("systemctl is-system-running --wait")
    assert state.stdout.strip() == "running", host.run("systemctl --failed --no-legend").stdout


def test_sshd_is_enabled_and_listening(host):
    sshd = host.service("ssh")
    assert sshd.is_running
    assert sshd.is_enabled
    assert host.socket("tcp://0.0.0.0:22").is_listening


def test_python_for_ansible(host):
    assert host.file("/usr/bin/python3").exists


def test_podman_has_quadlet(host):
    assert host.package("podman").is_installed
    major, minor = (int(part) for part in host.package("podman").version.split(".")[:2])
    assert (major, minor) >= (4, 4), "quadlet needs podman 4.4 or newer"
    assert host.file("/usr/lib/systemd/system-generators/podman-system-generator").exists


def test_container_storage_is_the_hosts_own_volume(host):
    storage = host.mount_point("/var/lib/containers")
    assert storage.exists
    assert storage.device != host.mount_point("/").device


def test_hosts_have_their_own_ssh_host_keys(lab_hosts):
    fingerprints = {
        testinfra.get_host(f"ansible://{name}?ansible_inventory={LAB_INVENTORY}").check_output(
            "ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub"
        )
        for name in lab_hosts
    }
    assert len(fingerprints) == len(lab_hosts)


@pytest.fixture(scope="module")
def probe_image_in_registry():
    """Push the lab's base image to the lab registry, as a deploy would push a server image."""
    podman("push", "--tls-verify=false", "localhost/debian-base:trixie", f"{LAB.registry}/{PROBE_IMAGE}")
    return f"{LAB.registry_on_lab_network}/{PROBE_IMAGE}"


def test_quadlet_unit_starts_a_container_pulled_from_the_lab_registry(host, probe_image_in_registry):
    unit = (
        f"[Container]\nImage={probe_image_in_registry}\nExec=sleep infinity\n[Service]\nTimeoutStartSec=120\n"
    )
    try:
        host.run_expect([0], f"printf '%s' '{unit}' > {PROBE_UNIT} && systemctl daemon-reload")
        started = host.run("systemctl start edgeml-probe.service")
        assert started.rc == 0, host.run("journalctl -u edgeml-probe.service --no-pager -n 30").stdout
        assert host.service("edgeml-probe").is_running
        running = host.check_output("podman ps --format '{{.Names}} {{.Image}}'")
        assert f"systemd-edgeml-probe {probe_image_in_registry}" in running
    finally:
        host.run(f"systemctl stop edgeml-probe.service; rm -f {PROBE_UNIT}; systemctl daemon-reload")
    assert not host.service("edgeml-probe").is_running
