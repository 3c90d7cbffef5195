"""The monitoring role's Prometheus rules, rendered by Ansible with the role's defaults,
checked and unit-tested by the real promtool (tests/unit/monitoring/rules.test.yml):
each alert fires on the series that should fire it, with the labels the rulebook acts on,
and steady good traffic fires none."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_collections.edgeml.fleet.tests.unit.monitoring.roletools import render, tool


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("rules")
    render("edgeml.rules.yml.j2", work / "edgeml.rules.yml")
    shutil.copy(Path(__file__).with_name("rules.test.yml"), work / "rules.test.yml")
    return work


def test_rules_pass_promtool_check(rules_dir: Path) -> None:
    result = promtool("check", "rules", str(rules_dir / "edgeml.rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout, result.stdout


def test_every_alert_fires_as_documented(rules_dir: Path) -> None:
    result = promtool("test", "rules", "rules.test.yml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_a_changed_threshold_changes_what_fires(tmp_path: Path) -> None:
    """The thresholds are the role's variables: at 50% the 30%-errors version no longer fires."""
    render("edgeml.rules.yml.j2", tmp_path / "edgeml.rules.yml", '{"monitoring_alert_error_ratio": 0.5}')
    shutil.copy(Path(__file__).with_name("rules.test.yml"), tmp_path / "rules.test.yml")
    result = promtool("test", "rules", "rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "alertname: EdgeMLInferenceErrors" in result.stdout + result.stderr


@pytest.mark.parametrize("action", ["rollback", "notify"])
def test_the_drift_action_is_the_role_s_choice(tmp_path: Path, action: str) -> None:
    """Drift pauses rollouts by default (rules.test.yml); monitoring_drift_action makes the rulebook
    roll the host back or only report it, and the alert's description says which."""
    render("edgeml.rules.yml.j2", tmp_path / "edgeml.rules.yml", f'{{"monitoring_drift_action": "{action}"}}')
    assert promtool("check", "rules", str(tmp_path / "edgeml.rules.yml")).returncode == 0
    rules = yaml.safe_load((tmp_path / "edgeml.rules.yml").read_text())
    drift = next(
        rule for group in rules["groups"] for rule in group["rules"] if rule.get("alert") == "EdgeMLInputDrift"
    )
    assert drift["labels"]["edgeml_action"] == action
    assert ("rolled back" in drift["annotations"]["description"]) == (action == "rollback")
    assert "rollouts pause" not in drift["annotations"]["description"]
