"""Helpers for the end-to-end rollout scenarios: fleet state over HTTP, rollouts, load."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from dataclasses import dataclass, field

import requests
from labtools import BIN, LAB_INVENTORY, ROOT, podman, run_playbook

MODEL = "digits"
# Small gates keep each scenario short; the shapes and thresholds are what is tested.
# The latency budget sits between the good models and 4.0.0, with room on both sides for
# a busy machine (make test runs the VM layer and Molecule beside these scenarios). Good
# models: well under 1 ms of compute; measured p95 10-63 ms alone, up to 265 ms while a
# TCG VM and Molecule shared the 2 cores. 4.0.0: about 1.3 s of compute per request alone
# (192 MatMuls; with 64 it measured p95 611 ms alone and 1,012 ms with the VM beside it).
GATES = {
    "readiness_timeout": 90,
    "smoke": {"enabled": True, "min_pass_ratio": 1.0},
    "latency": {"requests": 20, "p95_ms": 500},
    "error_rate": {"soak_seconds": 2, "max_ratio": 0.0},
}
DEPLOY_SETTINGS = {"model_deployment_registry_tls_verify": False, "model_deployment_gates": GATES}


def serving_versions(fleet: dict[str, str]) -> dict[str, str | None]:
    """What each host serves right now, asked over HTTP (None: nothing answers)."""
    versions = {}
    for host, url in fleet.items():
        try:
            versions[host] = requests.get(f"{url}/v2/models/{MODEL}/status", timeout=3).json()["serving_version"]
        except (requests.RequestException, ValueError, KeyError):
            versions[host] = None
    return versions


def deploy_args(version: str, **extra) -> list[str]:
    settings = {**DEPLOY_SETTINGS, "model_version": version, **extra}
    return ["-i", str(LAB_INVENTORY), "-e", json.dumps(settings)]


def deploy(version: str, **extra) -> dict:
    return run_playbook("deploy_model.yml", *deploy_args(version, **extra), check=False)


def latest_report() -> dict:
    reports = sorted((ROOT / ".build" / "reports").glob("rollout-*.json"))
    return json.loads(reports[-1].read_text())


def outcomes(report: dict) -> dict[str, str]:
    return {row["host"]: row["outcome"] for row in report["hosts"]}


@dataclass
class LoadReport:
    sent: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)


class LoadGenerator:
    """Infer requests to every host, round robin, until stopped (bounded in time and count)."""

    def __init__(self, fleet: dict[str, str], max_seconds: float = 900, max_requests: int = 200_000):
        self.urls = [f"{url}/v2/models/{MODEL}/infer" for url in fleet.values()]
        self.report = LoadReport()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._max_requests = max_requests
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}

    def _run(self) -> None:
        session = requests.Session()
        index = 0
        while not self._stop.is_set() and time.monotonic() < self._deadline and self.report.sent < self._max_requests:
            url = self.urls[index % len(self.urls)]
            index += 1
            self.report.sent += 1
            try:
                answer = session.post(url, json=self._body, timeout=10)
                ok = answer.status_code == 200
                detail = f"{url}: HTTP {answer.status_code} {answer.text[:120]}"
            except requests.RequestException as error:
                ok, detail = False, f"{url}: {type(error).__name__}"
            if not ok:
                self.report.failed += 1
                self.report.failures.append(detail)
            time.sleep(0.01)

    def __enter__(self) -> LoadReport:
        self._thread.start()
        return self.report

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def stop_host(host: str) -> None:
    podman("stop", "--time", "5", f"edgeml-lab-{host}")


def start_host(host: str, fleet: dict[str, str]) -> None:
    """Start a stopped lab host and wait until it serves again (its unit starts at boot)."""
    podman("start", f"edgeml-lab-{host}")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if serving_versions({host: fleet[host]})[host]:
            return
        time.sleep(1)
    raise AssertionError(f"{host} does not serve again after a restart")


def popen_deploy(version: str, **extra) -> subprocess.Popen:
    """A rollout in the background (for scenarios that act on the fleet meanwhile)."""
    return subprocess.Popen(
        [BIN / "ansible-playbook", ROOT / "playbooks" / "deploy_model.yml", *deploy_args(version, **extra)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_until_serving(fleet: dict[str, str], host: str, version: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serving_versions({host: fleet[host]})[host] == version:
            return
        time.sleep(0.3)
    raise AssertionError(f"{host} did not serve {version} within {timeout} s")


def host_state(host: str) -> dict:
    out = subprocess.run(
        [
            BIN / "ansible",
            "-i",
            LAB_INVENTORY,
            host,
            "-m",
            "ansible.builtin.slurp",
            "-a",
            f"src=/var/lib/edgeml/state/{MODEL}.json",
            "-o",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(base64.b64decode(json.loads(out.split("=>", 1)[1])["content"]))


def path_exists_on(host: str, path: str) -> bool:
    result = subprocess.run(
        [BIN / "ansible", "-i", LAB_INVENTORY, host, "-m", "ansible.builtin.stat", "-a", f"path={path}", "-o"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(result.split("=>", 1)[1])["stat"]["exists"]


def rollout_with_a_host_stopped(fleet: dict[str, str], host: str, version: str, **extra) -> subprocess.Popen:
    """Roll out, stop `host` once the canary serves `version` (during the pause before the
    next ring), let the rollout finish, then start the host again."""
    rollout = popen_deploy(version, rollout_pause_seconds=15, **extra)
    try:
        wait_until_serving(fleet, "edge-1", version)
        stop_host(host)
        rollout.wait(timeout=600)
    finally:
        start_host(host, fleet)
    return rollout
