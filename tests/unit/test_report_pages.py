# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The rollout report as a person reads it: written by the real report play
(playbooks/_rollout_report.yml, run by ansible-playbook on localhost) from the records of a
rollout whose canary rolled back a wrong-answer version, then opened in a real headless
browser (tests/browser.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from browser import screenshot
from rollout_records import ROLLED_BACK_CANARY

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# Two hosts' records as deploy_model.yml leaves them: the canary stopped 2.0.0 at its smoke
# gate and serves 1.0.0 again; wave1 was skipped when the rollout halted.
HOSTS = {
    "edge-1": ROLLED_BACK_CANARY,
    "edge-2": {
        "edgeml_model_name": "digits",
        "rollout_describe": {"ring": "wave1", "site": "site_b"},
        "rollout_attempted_version": "2.0.0",
        "rollout_outcome": "skipped (rollout halted)",
        "rollout_gates": [],
    },
}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("report")
    inventory = {
        "all": {
            "hosts": {
                **{h: dict(v, ansible_connection="local") for h, v in HOSTS.items()},
                "localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
            }
        }
    }
    (work / "hosts.yml").write_text(yaml.safe_dump(inventory))
    settings = {
        "rollout_scope": list(HOSTS),
        "rollout_halted": True,
        "rollout_halt_reason": "ring canary: 1 of 1 hosts failed (threshold 0%)",
        "rollout_started_at": "2026-12-06T05:00:00+00:00",
        "rollout_plan": {"batches": [{"ring": "canary", "hosts": ["edge-1"]}, {"ring": "wave1", "hosts": ["edge-2"]}]},
        "rollout_report_dir": str(work / "reports"),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}{os.pathsep}{env['PATH']}")
    run = subprocess.run(
        [
            BIN / "ansible-playbook",
            "-i",
            work / "hosts.yml",
            ROOT / "playbooks" / "_rollout_report.yml",
            "-e",
            json.dumps(settings),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    # The play ends by failing the run: the rollout did not complete.
    assert run.returncode == 2 and "the rollout did not complete" in run.stdout, run.stdout[-3000:]
    (html,) = (work / "reports").glob("rollout-*.html")
    (data,) = (work / "reports").glob("rollout-*.json")
    return {"html": html, "json": json.loads(data.read_text()), "stdout": run.stdout}


def test_the_report_says_what_was_rolled_out(report):
    assert (report["json"]["model"], report["json"]["version"]) == ("digits", "2.0.0")
    canary = next(row for row in report["json"]["hosts"] if row["host"] == "edge-1")
    assert (canary["old_version"], canary["attempted_version"], canary["new_version"]) == ("1.0.0", "2.0.0", "1.0.0")
    html = report["html"].read_text()
    assert "<h1>Rollout of digits 2.0.0</h1>" in html
    # Each gate as its verdict against the budget, not a JSON dump.
    # ... and how long it took.
    assert "smoke FAILED</span> <small>(0.1 s)</small>: 0 of 8 vectors right" in html
    assert "readiness passed</span> <small>(1.5 s)</small>: model digits 2.0.0 ready" in html
    assert "pass_ratio" not in html
    # How long each host and each ring took: the canary's one batch took its host's 14.2 s.
    assert re.search(
        r'<td class="name">canary</td><td>1</td><td>0</td><td>1</td>\s*<td><svg.*?</svg> 14.2 s</td>', html, re.S
    )
    assert '<td class="name">14.2 s</td>' in html


def test_the_report_renders_in_a_browser_without_console_errors(report):
    screenshot(report["html"], "rollout-report")
