"""edge_host and a model deployment, verified inside a real VM (qemu, TCG)."""

from __future__ import annotations

import json

PORT = "8080"
MODEL = "digits"
VERSION = "3.0.0"


def test_really_a_vm(vm):
    # A VM, not a container: its own kernel, booted by systemd as PID 1.
    assert vm.check_output("systemd-detect-virt --vm") in {"qemu", "kvm"}
    assert vm.check_output("systemctl is-system-running --wait || true") in {"running", "degraded"}


def test_firewall_is_edge_hosts(vm):
    ruleset = vm.check_output("nft list table inet edgeml")
    assert "edgeml-rules-" in ruleset  # edge_host's table replaced the image's
    assert f"tcp dport {PORT} accept" in ruleset
    assert "policy drop" in ruleset


def test_service_user_and_dirs(vm):
    assert vm.user("edgeml").shell == "/usr/sbin/nologin"
    assert vm.file("/var/lib/edgeml/state").mode == 0o750


def test_time_sync_runs_in_a_vm(vm):
    # In containers systemd skips timesyncd; in a VM it must run.
    assert vm.service("systemd-timesyncd").is_running
    assert "NTP=127.0.0.1" in vm.file("/etc/systemd/timesyncd.conf.d/50-edgeml.conf").content_string


def test_health_check_passes_against_the_real_server(vm):
    result = vm.run("/usr/local/libexec/edgeml/edgeml-health-check")
    assert result.rc == 0, result.stdout
    assert vm.service("edgeml-health-check.timer").is_running


def test_model_server_unit_is_health_gated_and_active(vm):
    assert vm.service(f"edgeml-{MODEL}").is_running
    # Podman's health check, run now (the status below is the last check's, which runs every 10 s).
    assert vm.run(f"podman healthcheck run edgeml-{MODEL}").rc == 0
    health = vm.check_output("podman inspect edgeml-%s --format '{{.State.Health.Status}}'", MODEL)
    assert health == "healthy"


def test_deployed_version_serves(vm):
    assert vm.file(f"/var/lib/edgeml/bundles/{MODEL}/current").content_string.strip() == VERSION
    code = vm.check_output(
        "curl -s -o /dev/null -w '%%{http_code}' http://127.0.0.1:%s/v2/models/%s/versions/%s/ready",
        PORT,
        MODEL,
        VERSION,
    )
    assert code == "200"
    manifest = json.loads(vm.file(f"/var/lib/edgeml/bundles/{MODEL}/{VERSION}/model.json").content_string)
    vector = manifest["smoke_tests"]["vectors"][0]
    body = json.dumps({"inputs": vector["inputs"]})
    answer = json.loads(
        vm.check_output("curl -fsS -X POST --data-binary %s http://127.0.0.1:%s/v2/models/%s/infer", body, PORT, MODEL)
    )
    labels = {o["name"]: o["data"] for o in answer["outputs"]}
    recorded = {o["name"]: o["data"] for o in vector["outputs"]}
    assert labels["label"] == recorded["label"]
