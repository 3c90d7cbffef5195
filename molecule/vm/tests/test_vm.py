"""edge_host and edgeml.fleet.model_deployment, verified inside a real VM (qemu, TCG).

converge deployed 3.0.0 over the OS image's baked-in 1.0.0 (slot blue) through the role and
its gates.
"""

from __future__ import annotations

import json

PORT = "8080"
MODEL = "digits"
VERSION = "3.0.0"
STATE = f"/var/lib/edgeml/state/{MODEL}.json"


def state(vm) -> dict:
    return json.loads(vm.file(STATE).content_string)


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


def test_model_deployment_took_over_the_baked_in_slot(vm):
    # The image's unit was slot blue; the deployment started green beside it and retired blue.
    serving = state(vm)["serving"]
    assert serving["version"] == VERSION
    assert serving["slot"] == "green"
    assert not vm.file(f"/etc/containers/systemd/edgeml-{MODEL}-blue.container").exists
    assert not vm.service(f"edgeml-{MODEL}-blue").is_running
    unit = vm.file(f"/etc/containers/systemd/edgeml-{MODEL}-green.container").content_string
    # Pinned by ID ("preloaded" delivery); the state records it as podman inspect does, sha256:ID.
    assert f"Image={serving['image_id'].removeprefix('sha256:')}\n" in unit


def test_model_server_unit_is_health_gated_and_active(vm):
    assert vm.service(f"edgeml-{MODEL}-green").is_running
    # Podman's health check, run now (the status below is the last check's, which runs every 2 s).
    assert vm.run(f"podman healthcheck run edgeml-{MODEL}-green").rc == 0
    health = vm.check_output("podman inspect edgeml-%s-green --format '{{.State.Health.Status}}'", MODEL)
    assert health == "healthy"


def test_deployment_passed_every_gate(vm):
    (deployed,) = [h for h in state(vm)["history"] if h["version"] == VERSION]
    assert deployed["outcome"] == "deployed"
    assert deployed["reason"] is None


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
    vectors = manifest["smoke_tests"]["vectors"]
    assert vectors
    for vector in vectors:  # every recorded answer, from the version that gave it
        body = json.dumps({"inputs": vector["inputs"]})
        url = f"http://127.0.0.1:{PORT}/v2/models/{MODEL}/infer"
        answer = json.loads(vm.check_output("curl -fsS -X POST --data-binary %s %s", body, url))
        assert answer["model_version"] == VERSION
        labels = {o["name"]: o["data"] for o in answer["outputs"]}
        recorded = {o["name"]: o["data"] for o in vector["outputs"]}
        assert labels["label"] == recorded["label"]
