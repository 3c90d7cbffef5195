"""microshift role: config.yaml, firewalld rules and repositories rendered, and a --check run.

There is no RHEL host, subscription or MicroShift here. The role's `render` entry point
renders /etc/microshift/config.yaml and the firewalld/repository settings through Ansible
itself for hosts whose RHEL 9 facts are faked (connection local); the `main` entry point
runs only in --check mode, with every path redirected to a temporary directory and the
tasks whose backends are absent here (subscription-manager, dnf, firewalld, systemd)
skipped by tag. Nothing is installed, started or written on this machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
RHEL9 = {"fake_distribution": "RedHat", "fake_major": "9", "fake_architecture": "x86_64"}
PULL_SECRET = json.dumps({"auths": {"registry.redhat.io": {"auth": "c2VjcmV0LXRva2Vu"}}})

SCENARIOS = {
    "default": {**RHEL9, "ansible_host": "192.0.2.21"},
    "custom": {
        **RHEL9,
        "fake_architecture": "aarch64",
        "ansible_host": "gw-osl-01.example.internal",
        "microshift_version": "4.19",
        "microshift_base_domain": "edge.example.internal",
        "microshift_hostname_override": "gw-osl-01",
        "microshift_node_ip": "203.0.113.21",
        "microshift_subject_alt_names": ["203.0.113.21", "gw-osl-01.example.internal"],
        "microshift_cluster_network": ["10.128.0.0/14"],
        "microshift_ingress_enabled": False,
        "microshift_storage_driver": "none",
        "microshift_log_level": "Debug",
        "microshift_firewall_node_ports": [30080, 30081],
        "microshift_firewall_mdns": True,
        "microshift_firewall_extra_ports": ["9100/tcp"],
        "microshift_config_extra": {"etcd": {"memoryLimitMB": 512}, "debugging": {"logLevel": "Trace"}},
    },
}


def run_playbook(inventory: dict, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inv), str(HERE / "play.yml"), *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False,
    )


def _host(extra: dict) -> dict:
    return {**extra, "ansible_connection": "local", "ansible_python_interpreter": sys.executable}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("microshift")
    hosts = {name: _host({**vals, "entry": "render", "microshift_render_dir": str(tmp / name)})
             for name, vals in SCENARIOS.items()}
    result = run_playbook({"all": {"hosts": hosts}}, tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    return {
        name: {
            "config_text": (tmp / name / "config.yaml").read_text(),
            "config": yaml.safe_load((tmp / name / "config.yaml").read_text()),
            **yaml.safe_load((tmp / name / "host-settings.yml").read_text()),
        }
        for name in SCENARIOS
    }


def test_default_config(rendered):
    assert rendered["default"]["config"] == {
        "apiServer": {"subjectAltNames": ["192.0.2.21"]},
        "debugging": {"logLevel": "Normal"},
        "ingress": {"status": "Managed"},
        "network": {"clusterNetwork": ["10.42.0.0/16"], "serviceNetwork": ["10.43.0.0/16"],
                    "serviceNodePortRange": "30000-32767"},
        "storage": {"driver": "lvms"},
    }
    assert rendered["default"]["config_text"].startswith("# Ansible managed")


def test_custom_config(rendered):
    config = rendered["custom"]["config"]
    assert config["apiServer"]["subjectAltNames"] == ["gw-osl-01.example.internal", "203.0.113.21"]
    assert config["dns"] == {"baseDomain": "edge.example.internal"}
    assert config["node"] == {"hostnameOverride": "gw-osl-01", "nodeIP": "203.0.113.21"}
    assert config["network"]["clusterNetwork"] == ["10.128.0.0/14"]
    assert config["ingress"] == {"status": "Removed"}
    assert config["storage"] == {"driver": "none"}
    # microshift_config_extra is merged over the role's settings
    assert config["etcd"] == {"memoryLimitMB": 512}
    assert config["debugging"] == {"logLevel": "Trace"}


def test_default_firewall(rendered):
    assert rendered["default"]["firewall"] == [
        {"zone": "trusted", "source": "10.42.0.0/16"},
        {"zone": "trusted", "source": "169.254.169.1"},
        {"zone": "public", "port": "6443/tcp"},
        {"zone": "public", "port": "80/tcp"},
        {"zone": "public", "port": "443/tcp"},
        {"zone": "public", "port": "30080/tcp"},
    ]


def test_custom_firewall(rendered):
    rules = rendered["custom"]["firewall"]
    # the trusted pod network follows the cluster network
    assert {"zone": "trusted", "source": "10.128.0.0/14"} in rules
    assert {"zone": "trusted", "source": "10.42.0.0/16"} not in rules
    assert {"zone": "trusted", "source": "169.254.169.1"} in rules
    ports = [r["port"] for r in rules if "port" in r]
    # no router: no 80/443
    assert ports == ["6443/tcp", "5353/udp", "30080/tcp", "30081/tcp", "9100/tcp"]


def test_repositories(rendered):
    assert rendered["default"]["repositories"] == [
        "rhocp-4.18-for-rhel-9-x86_64-rpms", "fast-datapath-for-rhel-9-x86_64-rpms"]
    assert rendered["custom"]["repositories"] == [
        "rhocp-4.19-for-rhel-9-aarch64-rpms", "fast-datapath-for-rhel-9-aarch64-rpms"]


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("microshift_check")
    common = {
        "entry": "main",
        "microshift_pull_secret": PULL_SECRET,
        "microshift_pull_secret_path": str(tmp / "etc/crio/openshift-pull-secret"),
        "microshift_config_path": str(tmp / "etc/microshift/config.yaml"),
        "microshift_kubeconfig_dest": str(tmp / "kube/kubeconfig"),
        # no systemd here: keep the restart handler (which runs on flush, whatever the
        # tags) from asking systemctl
        "microshift_service_state": "stopped",
    }
    hosts = {
        "rhel9": _host({**RHEL9, **common, "ansible_host": "192.0.2.21"}),
        "debian12": _host({**common, "fake_distribution": "Debian", "fake_major": "12",
                           "fake_architecture": "x86_64"}),
        "nosecret": _host({**RHEL9, **common, "microshift_pull_secret": ""}),
    }
    result = run_playbook(
        {"all": {"hosts": hosts}}, tmp, "--check", "--diff",
        "--skip-tags", "microshift_repositories,microshift_packages,microshift_firewall,microshift_service",
    )
    return result, tmp


def test_check_mode_run_on_faked_rhel(check_run):
    result, tmp = check_run
    out = result.stdout
    assert "rhel9                      : ok=" in out
    recap = next(line for line in out.splitlines() if line.startswith("rhel9 "))
    assert "failed=0" in recap
    # the config would be written (diff shown) ...
    assert "TASK [edgeml.fleet.microshift : Write config.yaml]" in out
    assert "subjectAltNames" in out
    # ... but nothing was written: check mode
    assert not (tmp / "etc").exists()
    assert not (tmp / "kube").exists()
    # waiting for the kubeconfig and the node is skipped in check mode, not faked
    assert "TASK [edgeml.fleet.microshift : Wait for the MicroShift node to be Ready]" in out


def test_pull_secret_is_never_printed(check_run):
    result, _unused1 = check_run
    assert "c2VjcmV0LXRva2Vu" not in result.stdout + result.stderr
    assert "registry.redhat.io" not in result.stdout + result.stderr


def test_non_rhel_host_is_refused_with_a_clear_message(check_run):
    result, _unused2 = check_run
    recap = next(line for line in result.stdout.splitlines() if line.startswith("debian12 "))
    assert "failed=1" in recap
    assert "this host reports Debian 12 on x86_64" in result.stdout


def test_missing_pull_secret_is_refused(check_run):
    result, _unused3 = check_run
    recap = next(line for line in result.stdout.splitlines() if line.startswith("nosecret "))
    assert "failed=1" in recap
    assert "the role ships no pull secret" in result.stdout
