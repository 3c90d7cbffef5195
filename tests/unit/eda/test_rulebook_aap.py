"""The Automation Platform variant of the rulebook (extensions/eda/rulebooks/edgeml-fleet-aap.yml)
run by the real ansible-rulebook, fed Alertmanager's webhook format on 127.0.0.1.

The controller is a stand-in: an Automation Platform controller cannot run here, so a small
HTTP server answers the calls ansible-rulebook's run_job_template makes (the config, the job
template looked up by name and organization, the launch, the job's status) with the job
templates of extensions/aap/controller_config.yml, and records every launch. What is tested
is the rulebook's side: which job template it launches, with which extra vars, how often;
and that the job template it names exists and accepts those variables at launch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml
from ansible_collections.edgeml.fleet.tests.unit.eda.rulebooktools import free_port, java_home, wait_port
from ansible_collections.edgeml.fleet.tests.unit.monitoring.roletools import ROOT

RULEBOOK = ROOT / "extensions" / "eda" / "rulebooks" / "edgeml-fleet-aap.yml"
RULEBOOK_VARS = yaml.safe_load((ROOT / "extensions" / "eda" / "rulebooks" / "edgeml-fleet-aap.vars.yml").read_text())
CONFIG = yaml.safe_load((ROOT / "extensions" / "aap" / "controller_config.yml").read_text())


def _job_templates() -> list[dict[str, Any]]:
    """The configuration's job templates as the controller lists them (unified_job_templates)."""
    organization = CONFIG["edgeml_aap_organization"]
    return [
        {
            "id": number,
            "type": "job_template",
            "name": template["name"],
            "summary_fields": {"organization": {"name": organization}},
            "related": {"launch": f"/api/v2/job_templates/{number}/launch/"},
            "ask_limit_on_launch": bool(template.get("ask_limit_on_launch")),
            "ask_labels_on_launch": False,
            "ask_inventory_on_launch": False,
            "ask_variables_on_launch": bool(template.get("ask_variables_on_launch")),
        }
        for number, template in enumerate(CONFIG["controller_templates"], start=1)
    ]


class Controller:
    """The stand-in controller: job templates from the configuration, launches recorded."""

    def __init__(self) -> None:
        self.templates = _job_templates()
        self.launches: list[dict[str, Any]] = []
        controller = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, body: dict[str, Any], status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                if url.path == "/api/v2/config/":
                    self._answer({"version": "4.6.0"})
                elif url.path == "/api/v2/unified_job_templates/":
                    found = [t for t in controller.templates if t["name"] == query.get("name")]
                    self._answer({"count": len(found), "results": found, "next": None})
                elif url.path == "/api/v2/jobs/":
                    ids = [int(i) for i in query.get("id__in", "").split(",") if i]
                    self._answer({"results": [{"id": i, "status": "successful", "artifacts": {}} for i in ids]})
                else:
                    self._answer({"detail": "not found"}, 404)

            def do_POST(self) -> None:
                match = re.fullmatch(r"/api/v2/job_templates/(\d+)/launch/", urlsplit(self.path).path)
                if not match:
                    self._answer({"detail": "not found"}, 404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                template = next(t for t in controller.templates if t["id"] == int(match[1]))
                controller.launches.append({"template": template["name"], **body})
                number = len(controller.launches)
                self._answer({"id": number, "job": number, "url": f"/api/v2/jobs/{number}/", "status": "pending"}, 201)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_launches(self, count: int, log: Path, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.launches) < count:
            time.sleep(0.3)
        assert len(self.launches) >= count, f"{len(self.launches)} launches:\n{log.read_text()[-3000:]}"
        return self.launches


@pytest.fixture(scope="module")
def activation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Controller, str, Path]]:
    """The rulebook running against the stand-in controller; its webhook URL and log."""
    work = tmp_path_factory.mktemp("eda-aap")
    controller = Controller()
    hook_port = free_port()
    (work / "inventory.yml").write_text(yaml.safe_dump(
        {"all": {"children": {"edge": {"hosts": {f"edge-{n}": {"ansible_connection": "local"} for n in range(1, 4)}}}}}
    ))
    (work / "vars.yml").write_text(yaml.safe_dump(
        {**RULEBOOK_VARS, "edgeml_webhook_host": "127.0.0.1", "edgeml_webhook_port": hook_port}
    ))
    log = work / "rulebook.log"
    env = {**os.environ, "JAVA_HOME": java_home(), "ANSIBLE_NOCOLOR": "1"}
    proc = subprocess.Popen(
        [shutil.which("ansible-rulebook") or "ansible-rulebook", "-r", str(RULEBOOK), "-i", str(work / "inventory.yml"),
         "--vars", str(work / "vars.yml"), "--print-events",
         "--controller-url", controller.url, "--controller-token", "stand-in"],
        cwd=work, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        wait_port(hook_port, proc, log)
        yield controller, f"http://127.0.0.1:{hook_port}/endpoint", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        controller.server.shutdown()


def _webhook(url: str, host: str, alertname: str, action: str, summary: str) -> None:
    """One notification in Alertmanager's webhook format (version 4), as it posts it."""
    labels = {"alertname": alertname, "host": host, "model": "digits", "edgeml_action": action}
    body = {
        "version": "4", "status": "firing", "receiver": "edgeml-rulebook",
        "groupLabels": {"alertname": alertname, "host": host}, "commonLabels": labels,
        "commonAnnotations": {"summary": summary},
        "alerts": [{"status": "firing", "labels": labels, "annotations": {"summary": summary}}],
    }
    requests.post(url, json=body, timeout=5).raise_for_status()


def test_the_job_template_the_rulebook_names_takes_its_variables():
    name = RULEBOOK_VARS["edgeml_rollback_job_template"]
    template = next(t for t in CONFIG["controller_templates"] if t["name"] == name)
    assert template["playbook"] == "rollback.yml"
    # Survey or not, the controller drops extra vars a template does not ask for at launch.
    assert template["ask_variables_on_launch"] is True
    assert RULEBOOK_VARS["edgeml_organization"] == CONFIG["edgeml_aap_organization"]


def test_a_failing_version_launches_the_rollback_job_template_once_per_host(activation):
    controller, webhook, log = activation
    summary = "digits 6.0.0 on edge-2 fails 30% of its inference requests"
    for _ in range(3):  # Alertmanager repeats a firing alert: one rollback
        _webhook(webhook, "edge-2", "EdgeMLInferenceErrors", "rollback", summary)
    (launch,) = controller.wait_launches(1, log)
    assert launch["template"] == "edgeml - roll back"
    extra_vars = launch["extra_vars"]
    assert (extra_vars["rollback_hosts"], extra_vars["rollback_to"]) == ("edge-2", "previous")
    assert extra_vars["rollback_reason"] == f"EdgeMLInferenceErrors: {summary}"
    time.sleep(3)
    assert len(controller.launches) == 1
    # Drift is reported, not acted on (no pause a later controller job would see).
    _webhook(webhook, "edge-3", "EdgeMLInputDrift", "pause", "digits 6.0.0 on edge-3: inputs drifted (PSI 0.41)")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "EdgeMLInputDrift (pause)" not in log.read_text():
        time.sleep(0.3)
    assert "EdgeMLInputDrift (pause): digits 6.0.0 on edge-3" in log.read_text()
    assert len(controller.launches) == 1
