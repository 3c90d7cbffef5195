"""The loop closed on the lab (docs/monitoring.md): the real Prometheus and Alertmanager on the
lab's monitoring host (role monitoring) and the real ansible-rulebook on the controller
(extensions/eda/rulebooks/edgeml-fleet.yml), fed by Alertmanager's webhook over the lab
network. Version 6.0.0 of the example pipeline passes every deployment gate but fails on
images brighter than the digits; real traffic of such images to one host makes its error alert
fire, and the rulebook rolls that host, and only that host, back. The time from the first
failed response to the restore is recorded (tests/output/monitoring-loop.json), not judged
here: timings belong in benchmarks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from fleetops import deploy, latest_report, outcomes, serving_versions
from labtools import LAB_INVENTORY, MODEL, ROOT, podman, run_playbook

# The lab's scrape and evaluation intervals, set by the test (short, so the test is).
FAST = {
    "monitoring_scrape_interval": "2s",
    "monitoring_evaluation_interval": "2s",
    "monitoring_rate_window": "10s",
    "monitoring_alert_for": "4s",
    "monitoring_alertmanager_group_wait": "1s",
    "monitoring_alertmanager_group_interval": "5s",
}
FAILING_VERSION = "6.0.0"
HOST = "edge-2"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rulebook:
    """ansible-rulebook on the controller, its webhook on the lab network's gateway address
    (where the monitoring host's Alertmanager reaches the controller)."""

    def __init__(self, work: Path) -> None:
        gateway = podman("network", "inspect", "edgeml-lab", "--format", "{{range .Subnets}}{{.Gateway}}{{end}}")
        self.address = gateway.strip()
        self.port = _free_port()
        self.url = f"http://{self.address}:{self.port}/endpoint"
        variables = work / "vars.yml"
        variables.write_text(yaml.safe_dump({
            "edgeml_webhook_host": self.address,
            "edgeml_webhook_port": self.port,
            "edgeml_rollback_playbook": str(ROOT / "playbooks" / "rollback.yml"),
        }))
        java = shutil.which("java")
        assert java, "java is missing: make setup installs it"
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
        env.setdefault("JAVA_HOME", str(Path(os.path.realpath(java)).parents[1]))
        self.log_path = work / "rulebook.log"
        rulebook = ROOT / "extensions" / "eda" / "rulebooks" / "edgeml-fleet.yml"
        command = [ROOT / ".venv" / "bin" / "ansible-rulebook", "-r", rulebook, "-i", LAB_INVENTORY]
        self.proc = subprocess.Popen(
            [*command, "--vars", variables, "--print-events"],
            cwd=ROOT, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            with socket.socket() as sock:
                if sock.connect_ex((self.address, self.port)) == 0:
                    return
            time.sleep(0.3)
        raise AssertionError(f"the rulebook's webhook does not listen:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def rulebook(tmp_path):
    running = Rulebook(tmp_path)
    yield running
    running.stop()


class BrightTraffic:
    """Images brighter than the digits (a new camera) to one host, about 20 a second; every
    answer recorded with its time, status and the version that gave it."""

    def __init__(self, url: str) -> None:
        images = np.load(ROOT / "examples" / "out" / "digits-validation.npz")["X"]
        self.images = np.clip(images * 1.25, 0, 20).astype(np.float32)
        self.url = f"{url}/v2/models/{MODEL}/infer"
        self.answers: list[tuple[float, int, str | None]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = requests.Session()
        n = 0
        while not self.stop.wait(0.05):
            row = self.images[n % len(self.images)][None, :]
            n += 1
            tensor = {"name": "X", "datatype": "FP32", "shape": [1, 64], "data": row.reshape(-1).tolist()}
            try:
                answer = session.post(self.url, json={"inputs": [tensor]}, timeout=5)
                version = answer.json().get("model_version") if answer.status_code == 200 else None
                self.answers.append((time.monotonic(), answer.status_code, version))
            except requests.RequestException:
                self.answers.append((time.monotonic(), 0, None))

    def __enter__(self) -> BrightTraffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def _reports() -> set[Path]:
    return set((ROOT / ".build" / "reports").glob("rollout-*.json"))


def test_a_version_failing_on_live_traffic_is_rolled_back_by_the_rulebook(fleet, fleet_on, rulebook):
    fleet_on("1.0.0")
    settings = {**FAST, "monitoring_webhook_url": rulebook.url}
    run_playbook("monitoring.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps(settings))
    report = deploy(FAILING_VERSION)
    assert report["returncode"] == 0, outcomes(latest_report())
    assert set(serving_versions(fleet).values()) == {FAILING_VERSION}  # every gate passed it

    reports_before = _reports()
    with BrightTraffic(fleet[HOST]) as traffic:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and serving_versions(fleet)[HOST] != "1.0.0":
            time.sleep(0.5)
        restored_at = time.monotonic()
        time.sleep(3)  # answers from the restored version
    assert serving_versions(fleet)[HOST] == "1.0.0", rulebook.log_path.read_text()[-4000:]
    # Only the host whose alert fired went back.
    assert {h: v for h, v in serving_versions(fleet).items() if h != HOST} == {
        h: FAILING_VERSION for h in fleet if h != HOST
    }
    # The rollback playbook finishes (its live window, its report) after the switch back.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _reports() == reports_before:
        time.sleep(1)
    first_failure = next(t for t, status, _ in traffic.answers if status == 500)
    after = [(status, version) for t, status, version in traffic.answers if t > restored_at + 1]
    assert after and all(answer == (200, "1.0.0") for answer in after), after[:5]
    summary = latest_report()
    row = next(row for row in summary["hosts"] if row["host"] == HOST)
    assert outcomes(summary) == {HOST: row["outcome"]} and row["outcome"] == "rolled_back (requested)", row
    assert row["reason"].startswith(f"EdgeMLInferenceErrors: {MODEL} {FAILING_VERSION} on {HOST} fails"), row
    timings = {
        "failed_responses": sum(1 for _, status, _ in traffic.answers if status == 500),
        "seconds_first_failure_to_restore": round(restored_at - first_failure, 1),
        "settings": FAST,
    }
    out = ROOT / "tests" / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "monitoring-loop.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"monitoring loop: {timings}")
