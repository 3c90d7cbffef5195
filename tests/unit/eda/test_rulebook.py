"""The rulebook (extensions/eda/rulebooks/edgeml-fleet.yml) run by the real ansible-rulebook,
fed by the real Alertmanager configured from the monitoring role's template: alerts posted
to Alertmanager's API reach the rulebook in Alertmanager's own webhook format. The rollback
playbook is replaced by one that records what it was asked (the real rollback runs on the
lab: tests/e2e/test_monitoring_loop.py); the pause is the real playbooks/pause_rollouts.yml,
which only writes a file on the controller. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
import yaml
from ansible_collections.edgeml.fleet.tests.unit.eda.rulebooktools import free_port, java_home, wait_port
from ansible_collections.edgeml.fleet.tests.unit.monitoring.roletools import ROOT, render, tool

RULEBOOK = ROOT / "extensions" / "eda" / "rulebooks" / "edgeml-fleet.yml"
RECORDER = """\
- name: Record what a rollback was asked
  hosts: "{{ rollback_hosts }}"
  gather_facts: false
  connection: local
  tasks:
    - name: Record the host and the reason
      ansible.builtin.lineinfile:
        path: "RECORD_FILE"
        line: "{{ inventory_hostname }}|{{ rollback_reason }}"
        create: true
        mode: "0644"
      delegate_to: localhost

- name: Report, as the rollback playbook does on the controller
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Record the report
      ansible.builtin.lineinfile:
        path: "RECORD_FILE.report"
        line: "{{ rollback_hosts }}|{{ rollout_report_dir }}"
        create: true
        mode: "0644"
"""


class Loop:
    def __init__(self, work: Path, alertmanager: str) -> None:
        self.work = work
        self.alertmanager = alertmanager

    def alert(self, host: str, alertname: str, action: str, summary: str, minutes: float = 5) -> None:
        now = datetime.now(timezone.utc)
        labels = {
            "alertname": alertname, "host": host, "model": "digits", "version": "2.1.0",
            "site": "site_a", "ring": "canary", "severity": "critical", "edgeml_action": action,
        }
        body = [{
            "labels": labels,
            "annotations": {"summary": summary},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=minutes)).isoformat(),
        }]
        requests.post(f"{self.alertmanager}/api/v2/alerts", json=body, timeout=5).raise_for_status()

    def rollbacks(self) -> list[str]:
        log = self.work / "rollbacks.log"
        return log.read_text().splitlines() if log.exists() else []

    def wait_rollbacks(self, count: int, timeout: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.rollbacks()) >= count:
                return self.rollbacks()
            time.sleep(0.5)
        raise AssertionError(f"{count} rollbacks expected, got {self.rollbacks()}:\n{self.log()}")

    def log(self) -> str:
        return (self.work / "rulebook.log").read_text()


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    work = tmp_path_factory.mktemp("eda")
    hook_port, am_port = free_port(), free_port()
    # ansible-rulebook runs the playbook from a private copy: record to an absolute path.
    (work / "record.yml").write_text(RECORDER.replace("RECORD_FILE", str(work / "rollbacks.log")))
    (work / "inventory.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"edge": {"hosts": {f"edge-{n}": {"ansible_connection": "local"} for n in range(1, 5)}}}}}
    ))
    (work / "vars.yml").write_text(yaml.safe_dump({
        "edgeml_webhook_host": "127.0.0.1",
        "edgeml_webhook_port": hook_port,
        "edgeml_rollback_playbook": str(work / "record.yml"),
        "edgeml_pause_playbook": str(ROOT / "playbooks" / "pause_rollouts.yml"),
        "edgeml_pause_file": str(work / "state" / "rollout-paused.json"),
        "edgeml_report_dir": str(work / "reports"),
    }))
    render("alertmanager.yml.j2", work / "alertmanager.yml", json.dumps({
        "monitoring_webhook_url": f"http://127.0.0.1:{hook_port}/endpoint",
        "monitoring_alertmanager_group_wait": "0s",
        "monitoring_alertmanager_group_interval": "1s",
        "monitoring_alertmanager_repeat_interval": "2s",
    }))
    env = {**os.environ, "JAVA_HOME": java_home(), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_COLLECTIONS_PATH": str(ROOT / ".collections")}
    rb_log = (work / "rulebook.log").open("wb")
    rulebook = subprocess.Popen(
        [shutil.which("ansible-rulebook") or "ansible-rulebook", "-r", str(RULEBOOK), "-i", str(work / "inventory.yml"),
         "--vars", str(work / "vars.yml"), "--print-events"],
        cwd=work, env=env, stdout=rb_log, stderr=subprocess.STDOUT,
    )
    am_log = (work / "alertmanager.log").open("wb")
    alertmanager = subprocess.Popen(
        [tool("prometheus-alertmanager"), f"--config.file={work / 'alertmanager.yml'}",
         f"--storage.path={work / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
         "--cluster.listen-address="],
        cwd=work, stdout=am_log, stderr=subprocess.STDOUT,
    )
    try:
        wait_port(hook_port, rulebook, work / "rulebook.log")
        wait_port(am_port, alertmanager, work / "alertmanager.log")
        yield Loop(work, f"http://127.0.0.1:{am_port}")
    finally:
        for proc in (rulebook, alertmanager):
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_failing_version_is_rolled_back_once_per_host_with_its_reason(loop: Loop) -> None:
    loop.alert("edge-2", "EdgeMLInferenceErrors", "rollback", "digits 2.1.0 on edge-2 fails 30% of its requests")
    assert loop.wait_rollbacks(1) == ["edge-2|EdgeMLInferenceErrors: digits 2.1.0 on edge-2 fails 30% of its requests"]
    # The playbook's controller play ran too, told where the report goes (not beside the
    # temporary copy of the inventory ansible-rulebook runs it with).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (loop.work / "rollbacks.log.report").exists():
        time.sleep(0.5)
    assert (loop.work / "rollbacks.log.report").read_text().splitlines() == [f"edge-2|{loop.work / 'reports'}"]
    # Alertmanager repeats the firing alert every 2 s here: the throttle holds the host to one rollback.
    time.sleep(6)
    assert loop.rollbacks() == ["edge-2|EdgeMLInferenceErrors: digits 2.1.0 on edge-2 fails 30% of its requests"]
    assert loop.log().count("EdgeMLInferenceErrors") > 1, "Alertmanager did not repeat the alert"
    loop.alert("edge-3", "EdgeMLInferenceSlow", "rollback", "digits 2.1.0 on edge-3: p95 latency 962.5ms")
    assert loop.wait_rollbacks(2)[1] == "edge-3|EdgeMLInferenceSlow: digits 2.1.0 on edge-3: p95 latency 962.5ms"


def test_drift_pauses_rollouts_and_readiness_is_reported_neither_rolls_back(loop: Loop) -> None:
    before = loop.rollbacks()
    pause_file = loop.work / "state" / "rollout-paused.json"
    loop.alert("edge-1", "EdgeMLInputDrift", "pause", "digits 2.1.0 on edge-1: inputs drifted (PSI 0.40)")
    loop.alert("edge-4", "EdgeMLModelNotReady", "notify", "edge-4 serves no model")
    report = "EdgeMLModelNotReady (notify): edge-4 serves no model"
    # Wait for both: Alertmanager sends the two groups independently, in either order.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (report in loop.log() and pause_file.exists()):
        time.sleep(0.5)
    assert report in loop.log()
    assert pause_file.exists(), loop.log()[-3000:]
    pause = json.loads(pause_file.read_text())
    assert pause["reason"] == "EdgeMLInputDrift: digits 2.1.0 on edge-1: inputs drifted (PSI 0.40)"
    # Alertmanager repeats the alert every 2 s: the throttle runs the pause once, and the
    # first pause's record stays.
    time.sleep(6)
    assert json.loads(pause_file.read_text()) == pause
    assert loop.log().count("rollouts are paused: EdgeMLInputDrift") == 1, loop.log()[-3000:]
    assert loop.rollbacks() == before
