"""Job templates run as Automation Platform runs them: ansible-runner with process isolation
in the lab execution environment (podman), against the edgeml-aap lab.

AWX itself cannot run here (README, support table); aapjobs.py says what it does around
a job and how that is done here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import ansible_runner
import requests
from aapjobs import EE_IMAGE, launch
from labtools import BIN, playbook_fact, podman, serving_versions


def _stats(events: list[dict]) -> dict:
    return next(e for e in reversed(events) if e["event"] == "playbook_on_stats")["event_data"]


def _ran_in_the_ee(private_data_dir) -> bool:
    """ansible-runner records the command it ran: podman run ... EE_IMAGE ansible-playbook."""
    command = json.loads(next(private_data_dir.glob("artifacts/*/command")).read_text())["command"]
    return command[0].endswith("podman") and EE_IMAGE in command and "ansible-playbook" in " ".join(command)


def test_the_ee_is_built_from_the_definition_and_pushed(aap_lab):
    built = playbook_fact(aap_lab["build_ee"], "build_ee_result")
    assert built["image"] == EE_IMAGE
    assert {name.rsplit("-", 1)[0] for name in built["collections"]} == {
        "edgeml-fleet",
        "containers-podman",
        "ansible-posix",
        "community-general",
        "kubernetes-core",
    }
    listing = podman("run", "--rm", EE_IMAGE, "ansible-galaxy", "collection", "list", "--format", "json")
    installed = json.loads(listing[listing.index("{") :])["/usr/share/ansible/collections/ansible_collections"]
    assert set(installed) >= {"edgeml.fleet", "containers.podman", "ansible.posix", "community.general"}
    # The collection's Python packages came with it (meta/execution-environment.yml).
    podman("run", "--rm", EE_IMAGE, "python3", "-c", "import onnxruntime, onnx, numpy")
    repository, tag = built["pushed"].split("/", 1)[1].split(":")
    manifest = requests.head(
        f"http://{built['pushed'].split('/')[0]}/v2/{repository}/manifests/{tag}",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
        },
        timeout=10,
    )
    assert manifest.status_code == 200 and manifest.headers["Docker-Content-Digest"].startswith("sha256:")


def test_provision_job_prepares_every_host(runner, config, fleet):
    job = launch(config, runner, "edgeml - provision edge hosts", {})
    assert job.status == "successful", job.stdout[-3000:]
    stats = _stats(job.events)
    assert set(stats["ok"]) >= set(fleet) and not stats["failures"] and not stats["dark"]
    assert _ran_in_the_ee(runner.work_dir / f"job-{runner.runs}")


def test_deploy_job_puts_every_host_on_the_version(runner, config, fleet):
    job = launch(config, runner, "edgeml - deploy a model", {"model_version": "1.0.0"})
    assert job.status == "successful", job.stdout[-3000:]
    assert _ran_in_the_ee(runner.work_dir / f"job-{runner.runs}")
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    # Per host, in the job's events: every host was deployed (or already served it).
    stats = _stats(job.events)
    assert set(fleet) <= set(stats["ok"]) and not stats["failures"] and not stats["dark"]
    rollout = job.artifacts["edgeml_rollout"]
    assert rollout["completed"] is True
    assert set(rollout["outcomes"]) == set(fleet)
    assert set(rollout["outcomes"].values()) <= {"deployed", "unchanged"}
    # The survey's defaults reached the playbook as AWX passes them.
    assert job.extra_vars["rollout_hosts"] == "edge" and job.extra_vars["rollout_unreachable"] == "fail"


def test_a_job_through_transmit_worker_process(runner, config, fleet, tmp_path):
    """What receptor carries between a controller and an execution node: the job as a
    stream (transmit), run by `ansible-runner worker` in its own process on the "node",
    its events streamed back and processed into a private data directory (process)."""
    template = next(t for t in config["controller_templates"] if t["name"] == "edgeml - fleet status")
    private = runner.private_data_dir()
    job_stream, result_stream = tmp_path / "job.stream", tmp_path / "result.stream"
    with job_stream.open("wb") as output:
        ansible_runner.run(
            private_data_dir=str(private),
            playbook=template["playbook"],
            inventory=str(private / "inventory" / "hosts.yml"),
            streamer="transmit",
            cancel_callback=lambda: False,  # keep SIGTERM ours (aapjobs.JobRunner.run)
            _output=output,
            **runner.container_options(),
        )
    with job_stream.open("rb") as stream, result_stream.open("wb") as results:
        subprocess.run(
            [BIN / "ansible-runner", "worker", "--private-data-dir", str(tmp_path / "node")],
            stdin=stream,
            stdout=results,
            check=False,  # its exit status is the job's: the processed stream below says how it went
        )
    with result_stream.open("rb") as results:
        processed = ansible_runner.run(
            private_data_dir=str(tmp_path / "controller"),
            streamer="process",
            _input=results,
            quiet=True,
            cancel_callback=lambda: False,
        )
    artifacts = Path(processed.artifact_dir)
    assert processed.status == "successful", (artifacts / "stdout").read_text()[-3000:]
    events = sorted(
        (json.loads(path.read_text()) for path in (artifacts / "job_events").glob("*.json")),
        key=lambda event: event["counter"],
    )
    summaries = {
        e["event_data"]["host"]: e["event_data"]["res"]["ansible_facts"]["fleet_status"]
        for e in events
        if e["event"] == "runner_on_ok" and e["event_data"].get("task") == "Summarise the host"
    }
    assert {host: s["serving_version"] for host, s in summaries.items()} == serving_versions(fleet)
    assert _stats(events)["artifact_data"]["edgeml_fleet_status"] == serving_versions(fleet)
