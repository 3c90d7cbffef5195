"""Verify edgeml.fleet.edge_host on Debian 12 and 13 systemd containers."""

from __future__ import annotations

import json
import time

import pytest

PORT = 8080
MODEL = "digits"
SCRIPT = "/usr/local/libexec/edgeml/edgeml-health-check"

# A tiny Open Inference Protocol stand-in: 200 on the ready paths, 404 elsewhere.
STUB = f"""
import http.server

READY = {{"/v2/health/ready", "/v2/models/{MODEL}/ready"}}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path in READY else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", {PORT}), Handler).serve_forever()
"""


@pytest.mark.parametrize("package", ["podman", "nftables", "systemd-timesyncd", "curl"])
def test_packages(edge, package):
    assert edge.package(package).is_installed


@pytest.mark.parametrize(
    ("path", "user", "group", "mode"),
    [
        ("/etc/containers/registries.conf.d/50-edgeml.conf", "root", "root", 0o644),
        ("/etc/containers/certs.d/registry.example.internal:5000/ca.crt", "root", "root", 0o644),
        ("/etc/containers/certs.d/mtls.example.internal:5000/client.cert", "root", "root", 0o644),
        ("/etc/containers/certs.d/mtls.example.internal:5000/client.key", "root", "root", 0o600),
        ("/etc/containers/auth.json", "root", "root", 0o600),
        ("/etc/nftables.d/50-edgeml.nft", "root", "root", 0o644),
        ("/etc/systemd/journald.conf.d/50-edgeml.conf", "root", "root", 0o644),
        ("/etc/systemd/timesyncd.conf.d/50-edgeml.conf", "root", "root", 0o644),
        (SCRIPT, "root", "root", 0o755),
        ("/etc/systemd/system/edgeml-health-check.service", "root", "root", 0o644),
        ("/etc/systemd/system/edgeml-health-check.timer", "root", "root", 0o644),
    ],
)
def test_files(edge, path, user, group, mode):
    f = edge.file(path)
    assert f.is_file
    assert (f.user, f.group, f.mode) == (user, group, mode)


@pytest.mark.parametrize(
    ("path", "owner", "mode"),
    [
        ("/var/lib/edgeml", "root", 0o755),
        ("/var/lib/edgeml/bundles", "edgeml", 0o755),
        ("/var/lib/edgeml/state", "edgeml", 0o750),
    ],
)
def test_directories(edge, path, owner, mode):
    d = edge.file(path)
    assert d.is_directory
    assert (d.user, d.group, d.mode) == (owner, "edgeml", mode)


def test_service_user(edge):
    user = edge.user("edgeml")
    assert user.exists
    assert user.group == "edgeml"
    assert user.shell == "/usr/sbin/nologin"
    assert user.uid < 1000


def test_registries_parse(edge):
    # podman itself parses the drop-in. A throwaway vfs store: Debian 12's podman cannot
    # use overlay storage inside a container, and the test must not touch the host's.
    out = edge.check_output(
        "d=$(mktemp -d) && podman --root $d/root --runroot $d/run --storage-driver vfs "
        "info --format %s 2>/dev/null; rc=$?; rm -rf $d; exit $rc",
        "{{json .Registries}}",
    )
    registries = json.loads(out)
    assert registries["edgeml-lab-registry:5000"]["Insecure"] is True
    mirror = registries["registry.example.internal:5000"]["Mirrors"][0]
    assert mirror["Location"] == "mirror.site-a.example.internal:5000"
    assert mirror["Insecure"] is True


def test_auth_file(edge):
    auth = json.loads(edge.file("/etc/containers/auth.json").content_string)
    assert set(auth["auths"]) == {"registry.example.internal:5000"}


def test_nftables_loaded(edge):
    ruleset = edge.check_output("nft list table inet edgeml")
    assert f"tcp dport {PORT} accept" in ruleset
    assert "policy drop" in ruleset
    assert "tcp dport 22 accept" in ruleset
    assert 'include "/etc/nftables.d/*.nft"' in edge.file("/etc/nftables.conf").content_string
    assert edge.service("nftables").is_enabled
    # The file on disk is what the kernel has, and it is valid.
    assert edge.run("nft -c -f /etc/nftables.d/50-edgeml.nft").rc == 0


def test_journald_limits(edge):
    conf = edge.file("/etc/systemd/journald.conf.d/50-edgeml.conf").content_string
    assert "SystemMaxUse=256M" in conf


def test_time_sync_configured(edge):
    # systemd skips timesyncd in containers (ConditionVirtualization=!container):
    # enabled and configured is what can be checked here.
    assert edge.service("systemd-timesyncd").is_enabled
    conf = edge.file("/etc/systemd/timesyncd.conf.d/50-edgeml.conf").content_string
    assert "NTP=ntp1.example.internal ntp2.example.internal" in conf


def test_health_timer(edge):
    timer = edge.service("edgeml-health-check.timer")
    assert timer.is_enabled
    assert timer.is_running


def test_no_greenboot_on_debian(edge):
    assert not edge.file("/etc/greenboot/check/required.d/50_edgeml_model_server_ready.sh").exists


def test_health_check_fails_when_nothing_serves(edge):
    result = edge.run(f"EDGEML_HEALTH_RETRIES=2 EDGEML_HEALTH_RETRY_DELAY=1 {SCRIPT}")
    assert result.rc == 1, result.stdout
    assert "NOT READY" in result.stdout
    assert "/v2/health/ready=000" in result.stdout


def test_health_check_passes_against_ready_server(edge):
    edge.check_output("printf '%%s' %s > /tmp/oip-stub.py", STUB)
    edge.check_output("systemd-run --unit edgeml-oip-stub --collect python3 /tmp/oip-stub.py")
    try:
        for _unused1 in range(50):
            if edge.run(f"curl -fsS http://127.0.0.1:{PORT}/v2/health/ready").rc == 0:
                break
            time.sleep(0.1)
        result = edge.run(SCRIPT)
        assert result.rc == 0, result.stdout
        assert "ready:" in result.stdout
        # Through the timer's own service, reported in the journal under its identifier.
        edge.check_output("systemctl start edgeml-health-check.service")
        journal = edge.check_output("journalctl -t edgeml-health-check --no-pager -n 5 -o cat")
        assert "ready:" in journal
    finally:
        edge.run("systemctl stop edgeml-oip-stub")


def test_health_check_fails_when_a_model_is_not_ready(edge):
    # The server is ready but the model is not: the per-model probe must catch it.
    stub = STUB.replace(f'"/v2/models/{MODEL}/ready"', '"/v2/models/other/ready"')
    edge.check_output("printf '%%s' %s > /tmp/oip-stub2.py", stub)
    edge.check_output("systemd-run --unit edgeml-oip-stub2 --collect python3 /tmp/oip-stub2.py")
    try:
        for _unused2 in range(50):
            if edge.run(f"curl -fsS http://127.0.0.1:{PORT}/v2/health/ready").rc == 0:
                break
            time.sleep(0.1)
        result = edge.run(f"EDGEML_HEALTH_RETRIES=1 {SCRIPT}")
        assert result.rc == 1, result.stdout
        assert f"/v2/models/{MODEL}/ready=404" in result.stdout
    finally:
        edge.run("systemctl stop edgeml-oip-stub2")
