"""edge_host role on the RedHat family: a --check run against faked RHEL facts.

No RHEL host is available here. The role runs on localhost (connection local) in check
mode for a RHEL 9 host and a RHEL for Edge (rpm-ostree) host whose facts are faked and
whose paths all point into a temporary tree. Skipped by tag, because their backends do
not exist on this Debian control node: packages (dnf, rpm-ostree), firewall (firewalld)
and services (systemd). Check mode must then predict the changes and write nothing.
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
SKIP = "edge_host_packages,edge_host_firewall,edge_host_services"
RHEL_CHRONY = "pool 2.rhel.pool.ntp.org iburst\ndriftfile /var/lib/chrony/drift\nsourcedir /run/chrony-dhcp\n"


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("edge_host")
    hosts = {}
    for name, distribution, major, ostree in [
        ("rhel9", "RedHat", "9", False),
        ("rhel-edge", "RedHat", "9", True),
        ("fedora", "Fedora", "42", False),
    ]:
        root = tmp / name
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "chrony.conf").write_text(RHEL_CHRONY)
        if ostree:
            (root / "run").mkdir()
            (root / "run" / "ostree-booted").write_text("")
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "fake_root": str(root),
            "fake_distribution": distribution,
            "fake_major": major,
            "edge_host_health_models": ["digits"],
            "edge_host_ntp_servers": ["ntp1.example.internal"],
            "edge_host_registries": [{"prefix": "registry.example.internal:5000", "insecure": True}],
            "edge_host_registry_auths": [
                {"registry": "registry.example.internal:5000", "username": "fleet", "password": "check-mode-secret-42"},
            ],
            "edge_host_registry_client_certs": [
                {
                    "registry": "mtls.example.internal:5000",
                    "cert": "-----BEGIN CERTIFICATE-----\nY2xpZW50\n-----END CERTIFICATE-----",
                    "key": "-----BEGIN PRIVATE KEY-----\ncheck-mode-key-secret-43\n-----END PRIVATE KEY-----",
                },
            ],
            "edge_host_data_dir": str(root / "var/lib/edgeml"),
        }
    inventory = tmp / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    before = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory), str(HERE / "play.yml"), "--check", "--diff", "--skip-tags", SKIP],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )
    after = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))
    return result, before, after


def _tasks(output: dict) -> dict[str, dict]:
    tasks = {}
    for play in output["plays"]:
        for task in play["tasks"]:
            tasks[task["task"]["name"].rpartition(" : ")[2]] = task["hosts"]
    return tasks


@pytest.fixture(scope="module")
def run(check_run):
    result, _unused2, _unused1 = check_run
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return json.loads(result.stdout)


def test_check_mode_writes_nothing(check_run, run):
    _unused3, before, after = check_run
    assert before == after
    assert run["stats"]["rhel9"]["failures"] == 0


@pytest.mark.parametrize(
    ("host", "image_based", "backend"),
    [("rhel9", False, "timer"), ("rhel-edge", True, "greenboot"), ("fedora", False, "timer")],
)
def test_decisions(run, host, image_based, backend):
    msg = _tasks(run)["Report the decisions"][host]["msg"]
    assert msg == {
        "image_based": image_based,
        "health_backend": backend,
        "time_service": "chronyd",
        "firewall_backend": "firewalld",
    }


def test_greenboot_check_only_on_image_based_hosts(run):
    tasks = _tasks(run)
    install = tasks["Install the health check as a greenboot required check"]
    assert install["rhel-edge"]["changed"] is True
    assert install["rhel9"].get("skipped") is True
    # greenboot is not installed in the fake tree: the role says so.
    assert "greenboot is not installed" in tasks["Warn when greenboot is missing"]["rhel-edge"]["msg"]


def test_check_mode_predicts_the_files(run):
    tasks = _tasks(run)
    for name in [
        "Write the registries drop-in (mirrors, insecure and blocked registries)",
        "Write the time sync configuration",
        "Make chrony read its drop-in directory",
        "Write the journald limits",
        "Install the health check script",
        "Write the auth file of the private registries",
    ]:
        assert all(tasks[name][host]["changed"] for host in ("rhel9", "rhel-edge", "fedora")), name


def test_chrony_diff_adds_confdir(run):
    diff = _tasks(run)["Make chrony read its drop-in directory"]["rhel9"]["diff"]
    diff = diff[0] if isinstance(diff, list) else diff
    assert "confdir /etc/chrony.d" in diff["after"]


def test_no_secret_in_output(check_run, run):
    result, _unused5, _unused4 = check_run
    assert "check-mode-secret-42" not in result.stdout + result.stderr
    out = result.stdout + result.stderr
    where = out.find("check-mode-key-secret-43")
    assert where < 0, out[max(0, where - 1500) : where + 200]
    # The key's task ran (a change predicted on every host), so its silence is no_log's.
    keys = _tasks(run)["Install the keys of those client certificates"]
    assert set(keys) == {"rhel9", "rhel-edge", "fedora"} and all(keys[host]["changed"] for host in keys)
