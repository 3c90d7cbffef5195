"""edge_host role: its RHEL-family files rendered with Ansible's templar, and the health
check script (the one greenboot runs) executed with bash against a real HTTP server.

No RHEL host exists here: the role's templates are rendered with the role's own
defaults and vars (vars/main.yml + vars/RedHat.yml) and RHEL 9 facts, the way the role
renders them, and the rendered check script runs for real against a stub of the Open
Inference Protocol's readiness endpoints on 127.0.0.1.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = Path(__file__).resolve().parents[4] / "roles" / "edge_host"
RHEL9_FACTS = {
    "os_family": "RedHat",
    "distribution": "RedHat",
    "distribution_major_version": "9",
    "virtualization_role": "host",
    "virtualization_type": "kvm",
}

pytestmark = pytest.mark.skipif(not shutil.which("curl"), reason="the check script needs curl")


def render(template: str, os_family: str = "RedHat", **overrides: object) -> str:
    """Render roles/edge_host/templates/TEMPLATE as the role does on a host of OS_FAMILY."""
    loader = DataLoader()
    variables: dict[str, object] = {}
    for path in ("defaults/main.yml", "vars/main.yml", f"vars/{os_family}.yml"):
        variables.update(loader.load_from_file(str(ROLE / path), trusted_as_template=True))
    variables.update(
        ansible_facts=dict(RHEL9_FACTS, os_family=os_family),
        ansible_managed="Ansible managed",
        inventory_hostname="kiosk-ber-01",
        __edge_host_nft_digest="0" * 64,
    )
    variables.update(overrides)
    templar = Templar(loader=loader, variables=variables)
    return templar.template(trust_as_template((ROLE / "templates" / template).read_text()))


# --- RHEL files ---------------------------------------------------------------------------


def test_redhat_vars_pick_chrony_and_firewalld():
    loader = DataLoader()
    rh = loader.load_from_file(str(ROLE / "vars/RedHat.yml"))
    assert rh["__edge_host_time_service"] == "chronyd"
    assert rh["__edge_host_firewall_backend"] == "firewalld"
    assert {"podman", "firewalld", "python3-firewall", "chrony", "curl"} <= set(rh["__edge_host_os_packages"])
    assert rh["__edge_host_time_dropin"].startswith("/etc/chrony.d/")


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        (["ntp1.example.internal", "10.0.0.1"], ["server ntp1.example.internal iburst", "server 10.0.0.1 iburst"]),
        ([], []),
    ],
)
def test_chrony_dropin(servers, expected):
    text = render("chrony.conf.j2", edge_host_ntp_servers=servers)
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == expected


def test_registries_dropin_is_valid_toml():
    text = render(
        "registries.conf.j2",
        edge_host_registries=[
            {
                "prefix": "registry.example.internal:5000",
                "mirrors": [
                    {"location": "mirror.ber.internal:5000", "insecure": True},
                    {"location": "mirror.lyo.internal"},
                ],
            },
            {"prefix": "quay.io/edgeml", "location": "registry.example.internal:5000/quay", "insecure": True},
            {"prefix": "docker.io", "blocked": True},
        ],
    )
    data = tomllib.loads(text)
    first, second, third = data["registry"]
    assert first == {
        "prefix": "registry.example.internal:5000",
        "location": "registry.example.internal:5000",
        "insecure": False,
        "blocked": False,
        "mirror": [
            {"location": "mirror.ber.internal:5000", "insecure": True},
            {"location": "mirror.lyo.internal", "insecure": False},
        ],
    }
    assert second["location"] == "registry.example.internal:5000/quay"
    assert second["insecure"] is True
    assert third["blocked"] is True


def test_auth_file_holds_base64_credentials():
    text = render(
        "auth.json.j2",
        edge_host_registry_auths=[
            {"registry": "registry.example.internal:5000", "username": "fleet", "password": 'p"a:ss\\'},
            {"registry": "quay.io", "username": "robot", "password": "token"},
        ],
    )
    auths = json.loads(text)["auths"]
    assert base64.b64decode(auths["registry.example.internal:5000"]["auth"]).decode() == 'fleet:p"a:ss\\'
    assert base64.b64decode(auths["quay.io"]["auth"]).decode() == "robot:token"


def test_journald_dropin():
    text = render("journald.conf.j2", edge_host_journald_system_max_use="1G")
    assert "[Journal]" in text
    assert "SystemMaxUse=1G" in text
    assert "MaxRetentionSec=4week" in text


def test_health_units():
    service = render("edgeml-health-check.service.j2")
    timer = render("edgeml-health-check.timer.j2", edge_host_health_interval="2min")
    assert "ExecStart=/usr/local/libexec/edgeml/edgeml-health-check" in service
    assert "SyslogIdentifier=edgeml-health-check" in service
    assert "Type=oneshot" in service
    assert "OnUnitActiveSec=2min" in timer
    assert "WantedBy=timers.target" in timer


def test_nftables_table_sources_split_by_family():
    text = render(
        "nftables-edgeml.nft.j2",
        os_family="Debian",
        edge_host_serving_port=9000,
        edge_host_firewall_serving_sources=["192.0.2.0/24", "2001:db8::/32"],
    )
    assert "ip saddr { 192.0.2.0/24 } tcp dport 9000 accept" in text
    assert "ip6 saddr { 2001:db8::/32 } tcp dport 9000 accept" in text
    rules = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert "flush ruleset" not in rules
    assert rules.index("add table inet edgeml") < rules.index("delete table inet edgeml")


# --- the health check script, run for real ---------------------------------------------------


class Stub:
    """A real HTTP server on 127.0.0.1 answering the readiness paths as told."""

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.delay = 0.0
        self.requests: list[str] = []
        self.ready_after = 0  # become ready after this many requests
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.requests.append(self.path)
                time.sleep(stub.delay)
                late = stub.ready_after and len(stub.requests) > stub.ready_after
                code = 200 if self.path in stub.ready or late else 503
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    server = Stub()
    yield server
    server.close()


@pytest.fixture
def script(tmp_path: Path):
    """The greenboot check as the role renders it on RHEL, with models digits and mnist."""

    def make(port: int, models: list[str] | None = None) -> Path:
        path = tmp_path / "50_edgeml_model_server_ready.sh"
        path.write_text(
            render(
                "edgeml-health-check.sh.j2",
                edge_host_serving_port=port,
                edge_host_health_models=["digits", "mnist"] if models is None else models,
                edge_host_health_retries=3,
                edge_host_health_retry_delay=1,
                edge_host_health_timeout=2,
            )
        )
        path.chmod(0o755)
        return path

    return make


def run(script: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )


def free_port() -> int:
    with http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler) as server:
        return server.server_address[1]


def test_script_passes_bash_syntax_check(script):
    assert subprocess.run(["bash", "-n", str(script(8080))], check=False).returncode == 0


def test_ready_server_and_models_pass(stub, script):
    stub.ready = {"/v2/health/ready", "/v2/models/digits/ready", "/v2/models/mnist/ready"}
    result = run(script(stub.port))
    assert result.returncode == 0, result.stdout
    assert "ready:" in result.stdout
    assert stub.requests == ["/v2/health/ready", "/v2/models/digits/ready", "/v2/models/mnist/ready"]


def test_server_ready_but_a_model_not_fails(stub, script):
    stub.ready = {"/v2/health/ready", "/v2/models/digits/ready"}
    result = run(script(stub.port), EDGEML_HEALTH_RETRIES="2")
    assert result.returncode == 1
    assert "NOT READY after 2 attempt(s)" in result.stdout
    assert "/v2/models/mnist/ready=503" in result.stdout
    assert "/v2/models/digits/ready" not in result.stdout.splitlines()[-1]


def test_not_ready_server_fails_after_every_retry(stub, script):
    start = time.monotonic()
    result = run(script(stub.port))
    assert result.returncode == 1
    assert result.stdout.count("retrying in 1s") == 2
    assert stub.requests.count("/v2/health/ready") == 3
    assert time.monotonic() - start >= 2


def test_nothing_listening_fails(script):
    result = run(script(free_port()), EDGEML_HEALTH_RETRIES="1")
    assert result.returncode == 1
    assert "/v2/health/ready=000" in result.stdout


def test_server_that_becomes_ready_during_retries_passes(stub, script):
    stub.ready_after = 3  # the first attempt's three probes fail, the second passes
    result = run(script(stub.port))
    assert result.returncode == 0, result.stdout
    assert "attempt 1/3: not ready" in result.stdout


def test_hanging_server_times_out(stub, script):
    stub.ready = {"/v2/health/ready", "/v2/models/digits/ready", "/v2/models/mnist/ready"}
    stub.delay = 5
    start = time.monotonic()
    result = run(script(stub.port), EDGEML_HEALTH_RETRIES="1", EDGEML_HEALTH_TIMEOUT="1")
    assert result.returncode == 1
    assert time.monotonic() - start < 4.5
    assert "=000" in result.stdout


def test_no_models_checks_the_server_only(stub, script):
    stub.ready = {"/v2/health/ready"}
    result = run(script(stub.port, models=[]))
    assert result.returncode == 0, result.stdout
    assert stub.requests == ["/v2/health/ready"]


@pytest.mark.parametrize("setting", ["EDGEML_HEALTH_RETRIES", "EDGEML_HEALTH_PORT", "EDGEML_HEALTH_TIMEOUT"])
def test_bad_settings_are_usage_errors(script, setting):
    result = run(script(8080), **{setting: "3; rm -rf /"})
    assert result.returncode == 2
    assert "bad setting" in result.stdout


def test_journal_priority_prefix_under_the_timer(stub, script):
    result = run(script(stub.port), EDGEML_HEALTH_RETRIES="1", EDGEML_HEALTH_PRIORITY_PREFIX="1")
    assert result.returncode == 1
    assert result.stdout.startswith("<3>edgeml-health-check: NOT READY")


def test_model_names_are_quoted(stub, script, tmp_path):
    name = "a$(touch${IFS}pwned)"
    stub.ready = {"/v2/health/ready", f"/v2/models/{name}/ready"}
    result = subprocess.run(
        ["bash", str(script(stub.port, models=[name]))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout
    assert f"/v2/models/{name}/ready" in stub.requests
    assert not (tmp_path / "pwned").exists()
