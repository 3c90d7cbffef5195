"""The loop closed on the lab (docs/monitoring.md): the real Prometheus and Alertmanager on the
lab's monitoring host (role monitoring) and the real ansible-rulebook on the controller
(extensions/eda/rulebooks/edgeml-fleet.yml), fed by Alertmanager's webhook over the lab
network. In order, on one monitoring setup:

- steady traffic like the validation data on every host for two minutes: no alert, no action;
- inputs that drift on one host while a rollout runs: the drift alert fires and the rulebook
  pauses the rollout before its next ring (nothing is rolled back);
- version 6.0.0 of the example pipeline, which passes every deployment gate but fails on
  images brighter than the digits, rolled out to one host: real traffic of such images to it
  makes its error alert fire, and the rulebook rolls that host, and no other, back. The time from the
  first failed response to the restore is recorded (tests/output/monitoring-loop.json), not
  judged here: timings belong in benchmarks.

Every answer of the test's traffic is checked: its status, and its label against what the
version that gave it computes for that image (the bundle's model.onnx, run here by
onnxruntime)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import requests
import yaml
from fleetops import ALL_AT_ONCE, deploy, deploy_args, latest_report, outcomes, serving_versions, wait_until_serving
from labtools import BIN, LAB, LAB_INVENTORY, MODEL, ROOT, podman, run_playbook

# The lab's scrape and evaluation intervals, set by the test (short, so the test is).
FAST = {
    "monitoring_scrape_interval": "2s",
    "monitoring_evaluation_interval": "2s",
    "monitoring_rate_window": "10s",
    "monitoring_alert_for": "4s",
    "monitoring_alert_drift_for": "4s",
    "monitoring_alertmanager_group_wait": "1s",
    "monitoring_alertmanager_group_interval": "5s",
}
BASE_VERSION = "1.0.0"
NEXT_VERSION = "3.0.0"  # a good version, rolled out while inputs drift
FAILING_VERSION = "6.0.0"
FAILING_HOST = "edge-2"
DRIFTING_HOST = "edge-4"  # in the last ring: its window is not replaced before the pause
STEADY_SECONDS = 120
BUNDLES = ROOT / "examples" / "out" / "bundles" / MODEL
VALIDATION = np.load(ROOT / "examples" / "out" / "digits-validation.npz")["X"].astype(np.float32)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Rulebook:
    """ansible-rulebook on the controller, its webhook on the lab network's gateway address
    (where the monitoring host's Alertmanager reaches the controller)."""

    def __init__(self, work: Path, pause_file: Path) -> None:
        gateway = podman("network", "inspect", LAB.name, "--format", "{{range .Subnets}}{{.Gateway}}{{end}}")
        self.address = gateway.strip()
        self.port = _free_port()
        self.url = f"http://{self.address}:{self.port}/endpoint"
        variables = work / "vars.yml"
        variables.write_text(yaml.safe_dump({
            "edgeml_webhook_host": self.address,
            "edgeml_webhook_port": self.port,
            "edgeml_rollback_playbook": str(ROOT / "playbooks" / "rollback.yml"),
            "edgeml_pause_playbook": str(ROOT / "playbooks" / "pause_rollouts.yml"),
            "edgeml_report_dir": str(LAB.report_dir),
            "edgeml_pause_file": str(pause_file),
        }))
        java = shutil.which("java")
        assert java, "java is missing: make setup installs it"
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
        env.setdefault("JAVA_HOME", str(Path(os.path.realpath(java)).parents[1]))
        self.log_path = work / "rulebook.log"
        rulebook = ROOT / "extensions" / "eda" / "rulebooks" / "edgeml-fleet.yml"
        command = [BIN / "ansible-rulebook", "-r", rulebook, "-i", LAB_INVENTORY]
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

    def log(self, since: int = 0) -> str:
        return self.log_path.read_bytes()[since:].decode(errors="replace")

    def size(self) -> int:
        return self.log_path.stat().st_size

    def stop(self) -> None:
        """The rulebook and every job it started. Its jobs run in sessions of their own (ansible-runner
        gives each a terminal), so they are found by parentage first: a CI run found a rollback it
        had started still alive 36 min after its scenario, in the lab of later ones."""
        jobs = _descendants(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for pid in jobs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    """Every live process below PID (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


class Monitoring:
    """The lab's Prometheus and Alertmanager as the controller reaches them."""

    def __init__(self, monitor_vars: dict) -> None:
        self.prometheus = monitor_vars["edgeml_prometheus_url_from_controller"]
        self.alertmanager = monitor_vars["edgeml_alertmanager_url_from_controller"]

    def query(self, expr: str) -> list[dict]:
        answer = requests.get(f"{self.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def alerts(self) -> list[str]:
        """Every alert pending or firing now, as alertname@host."""
        return sorted(f"{a['metric']['alertname']}@{a['metric'].get('host', '-')}" for a in self.query("ALERTS"))

    def active_in_alertmanager(self) -> list[str]:
        answer = requests.get(f"{self.alertmanager}/api/v2/alerts", params={"active": "true"}, timeout=5).json()
        return sorted(
            f"{a['labels']['alertname']}@{a['labels'].get('host', '-')}"
            for a in answer
            if a["status"]["state"] == "active"
        )

    def wait_quiet(self, timeout: float = 90) -> None:
        """Until nothing is pending or firing in Prometheus and nothing is active in
        Alertmanager (it keeps a resolved alert active until Prometheus tells it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self.alerts() or self.active_in_alertmanager()):
            time.sleep(1)
        left = self.alerts() + self.active_in_alertmanager()
        assert not left, f"alerts left over from before: {left}"


@pytest.fixture(scope="module")
def pause_file(lab_vars) -> Iterator[Path]:
    path = Path(lab_vars["edge-1"]["rollout_pause_file"])
    path.unlink(missing_ok=True)
    yield path
    path.unlink(missing_ok=True)  # never leave the lab's rollouts paused


@pytest.fixture(scope="module")
def rulebook(tmp_path_factory, pause_file) -> Iterator[Rulebook]:
    running = Rulebook(tmp_path_factory.mktemp("rulebook"), pause_file)
    yield running
    running.stop()


class Answers:
    """The labels each version's model gives the test's images, computed here by onnxruntime."""

    def __init__(self) -> None:
        self.sessions: dict[str, ort.InferenceSession] = {}

    def label(self, version: str, row: np.ndarray) -> int | None:
        if version not in self.sessions:
            self.sessions[version] = ort.InferenceSession(str(BUNDLES / version / "model.onnx"))
        session = self.sessions[version]
        try:
            outputs = session.run(None, {session.get_inputs()[0].name: row[None, :]})
        except Exception:
            return None
        names = [output.name for output in session.get_outputs()]
        return int(np.asarray(outputs[names.index("label")]).reshape(-1)[0])


class Traffic:
    """Images to some hosts, one at a time, each host about `rate` requests a second. Every
    answer is kept with its time, host, status and version, and judged: HTTP 200 with the
    label that version's model computes for the image."""

    def __init__(self, urls: dict[str, str], images: np.ndarray, rate: float, answers: Answers) -> None:
        self.urls, self.images, self.period, self.answers = urls, images, 1.0 / rate, answers
        self.log: list[tuple[float, str, int, str | None, bool]] = []  # time, host, status, version, right
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(host,), daemon=True) for host in urls]

    def _run(self, host: str) -> None:
        session, n = requests.Session(), 0
        url = f"{self.urls[host]}/v2/models/{MODEL}/infer"
        while not self.stop.wait(self.period):
            row = self.images[n % len(self.images)]
            n += 1
            tensor = {"name": "X", "datatype": "FP32", "shape": [1, 64], "data": row.tolist()}
            try:
                answer = session.post(url, json={"inputs": [tensor], "outputs": [{"name": "label"}]}, timeout=5)
            except requests.RequestException:
                self.log.append((time.monotonic(), host, 0, None, False))
                continue
            version, right = None, False
            if answer.status_code == 200:
                doc = answer.json()
                version = doc.get("model_version")
                label = next(o["data"][0] for o in doc["outputs"] if o["name"] == "label")
                right = version is not None and label == self.answers.label(version, row)
            self.log.append((time.monotonic(), host, answer.status_code, version, right))

    def wrong(self) -> list[tuple]:
        return [entry for entry in self.log if not entry[4]]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def _flush_windows(fleet: dict[str, str]) -> None:
    """Fill every host's drift window (1,000 rows) with rows like the reference: earlier
    tests sent a few smoke vectors over and over, which is drift."""
    rows = np.concatenate([VALIDATION] * 3)
    for url in fleet.values():
        session = requests.Session()
        for start in range(0, len(rows), 10):
            part = rows[start : start + 10]
            tensor = {"name": "X", "datatype": "FP32", "shape": list(part.shape), "data": part.reshape(-1).tolist()}
            assert session.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, timeout=10).ok


@pytest.fixture(scope="module")
def monitoring(fleet, lab_vars, rulebook) -> Monitoring:
    """The fleet on BASE_VERSION, Prometheus and Alertmanager at the test's intervals,
    alerting the rulebook, and nothing pending or firing."""
    if set(serving_versions(fleet).values()) != {BASE_VERSION}:
        report = deploy(BASE_VERSION, **ALL_AT_ONCE)
        assert report["returncode"] == 0, outcomes(latest_report())
    _flush_windows(fleet)
    settings = {**FAST, "monitoring_webhook_url": rulebook.url}
    run_playbook("monitoring.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps(settings))
    monitoring = Monitoring(lab_vars["monitor"])
    monitoring.wait_quiet()
    return monitoring


def _reports() -> set[Path]:
    return set(LAB.report_dir.glob("rollout-*.json"))


def _actions(log: str) -> list[str]:
    """What the rulebook did in this part of its log: playbooks run and reports printed."""
    lines = log.splitlines()
    return [line for line in lines if line.startswith("PLAY [")] + [
        lines[i + 1] for i, line in enumerate(lines[:-1]) if "[debug]" in line
    ]


def test_steady_good_traffic_raises_no_alert_and_takes_no_action(fleet, monitoring, rulebook, pause_file):
    log_start, reports_before = rulebook.size(), _reports()
    started = time.monotonic()
    with Traffic(fleet, VALIDATION, rate=5, answers=Answers()) as traffic:
        time.sleep(STEADY_SECONDS)
    assert traffic.log and not traffic.wrong(), traffic.wrong()[:5]
    assert {entry[3] for entry in traffic.log} == {BASE_VERSION}
    # Prometheus saw the traffic and the drift figures of every host: no alert is not for want of data.
    # Summed per host: a host's server keeps the counters of every version it served since it
    # started, and those of the versions earlier scenarios rolled out have a rate of 0 (a CI
    # run on a fresh lab got 0.0 for every host from a dict keeping the last series per host).
    rates = {
        r["metric"]["host"]: float(r["value"][1])
        for r in monitoring.query("sum by (host) (edgeml:infer_requests:rate)")
    }
    assert set(rates) == set(fleet) and all(rate > 2 for rate in rates.values()), rates
    psi = {r["metric"]["host"]: float(r["value"][1]) for r in monitoring.query("edgeml_drift_psi")}
    assert set(psi) == set(fleet) and all(value < 0.25 for value in psi.values()), psi
    # No alert pending or firing at any evaluation since the test began (not before: a
    # CI run's look-back of exactly the traffic's two minutes, taken a few seconds after it,
    # reached the alerts of the earlier scenarios' traffic), none in Alertmanager.
    fired = monitoring.query(f"max_over_time(ALERTS[{int(time.monotonic() - started)}s])")
    assert fired == [], fired
    assert monitoring.active_in_alertmanager() == []
    # And the rulebook did nothing.
    assert _actions(rulebook.log(log_start)) == []
    assert _reports() == reports_before and not pause_file.exists()


def test_drift_pauses_a_rollout_started_meanwhile(fleet, monitoring, rulebook, pause_file, tmp_path):
    reports_before = _reports()
    inverted = (VALIDATION.max() - VALIDATION).astype(np.float32)  # a camera that swapped ink and paper
    # Each ring after the first waits 45 s: the drift starts once the canary serves the new
    # version, and its alert fires within that wait.
    output = tmp_path / "rollout.log"
    with output.open("w") as out:
        rollout = subprocess.Popen(
            [BIN / "ansible-playbook", ROOT / "playbooks" / "deploy_model.yml",
             *deploy_args(NEXT_VERSION, rollout_pause_seconds=45)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
        )
        try:
            wait_until_serving(fleet, "edge-1", NEXT_VERSION, timeout=240)
            with Traffic({DRIFTING_HOST: fleet[DRIFTING_HOST]}, inverted, rate=30, answers=Answers()) as drift:
                rollout.wait(timeout=300)
        finally:
            if rollout.poll() is None:
                rollout.kill()
    assert drift.log and not drift.wrong(), drift.wrong()[:5]
    assert rollout.returncode != 0, output.read_text()[-3000:]
    new = _reports() - reports_before
    assert len(new) == 1, new  # the rollout's own: nothing was rolled back
    summary = json.loads(new.pop().read_text())
    assert outcomes(summary) == {"edge-1": "deployed", "edge-2": "paused", "edge-3": "paused", "edge-4": "paused"}
    reason = f"EdgeMLInputDrift: {MODEL} {BASE_VERSION} on {DRIFTING_HOST}: inputs drifted (PSI"
    assert summary["status"].startswith(f"PAUSED: {reason}"), summary["status"]
    assert "-e rollout_resume=true" in summary["status"]
    assert serving_versions(fleet) == {"edge-1": NEXT_VERSION, "edge-2": BASE_VERSION, "edge-3": BASE_VERSION,
                                       "edge-4": BASE_VERSION}
    assert json.loads(pause_file.read_text())["reason"].startswith(reason)
    # A person looked: the pause is lifted, and the next rollout may run.
    run_playbook("pause_rollouts.yml", "-i", str(LAB_INVENTORY), "-e", "rollout_resume=true")
    assert not pause_file.exists()


def test_a_version_failing_on_live_traffic_is_rolled_back_by_the_rulebook(fleet, monitoring, rulebook):
    before = serving_versions(fleet)
    previous = before[FAILING_HOST]
    # Rolled out to that host alone (a whole-fleet rollout only adds time): every gate passes it.
    report = deploy(FAILING_VERSION, rollout_hosts=FAILING_HOST)
    assert report["returncode"] == 0, outcomes(latest_report())
    assert serving_versions(fleet) == {**before, FAILING_HOST: FAILING_VERSION}

    reports_before = _reports()
    # Images brighter than the digits (a new camera): 6.0.0 fails on them.
    bright = np.clip(VALIDATION * 1.25, 0, 20).astype(np.float32)
    with Traffic({FAILING_HOST: fleet[FAILING_HOST]}, bright, rate=20, answers=Answers()) as traffic:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and serving_versions(fleet)[FAILING_HOST] != previous:
            time.sleep(0.5)
        restored_at = time.monotonic()
        time.sleep(3)  # answers from the restored version
    # that host back, no other touched (a local run once saw the rulebook stop listening
    # mid-module, its log silent: its exit status tells a crash from a missed alert)
    assert serving_versions(fleet) == before, (f"rulebook exit status {rulebook.proc.poll()}", rulebook.log()[-4000:])
    # The rollback playbook finishes (its live window, its report) after the switch back.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _reports() == reports_before:
        time.sleep(1)
    first_failure = next(t for t, _, status, _, _ in traffic.log if status == 500)
    after = [(status, version, right) for t, _, status, version, right in traffic.log if t > restored_at + 1]
    assert after and all(answer == (200, previous, True) for answer in after), after[:5]
    summary = latest_report()
    row = next(row for row in summary["hosts"] if row["host"] == FAILING_HOST)
    assert outcomes(summary) == {FAILING_HOST: row["outcome"]} and row["outcome"] == "rolled_back (requested)", row
    assert row["reason"].startswith(f"EdgeMLInferenceErrors: {MODEL} {FAILING_VERSION} on {FAILING_HOST} fails"), row
    timings = {
        "failed_responses": sum(1 for _, _, status, _, _ in traffic.log if status == 500),
        "seconds_first_failure_to_restore": round(restored_at - first_failure, 1),
        "settings": FAST,
    }
    out = ROOT / "tests" / "output"
    out.mkdir(parents=True, exist_ok=True)
    (out / "monitoring-loop.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(f"monitoring loop: {timings}")
