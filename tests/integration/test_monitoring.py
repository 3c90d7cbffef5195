"""The monitoring role on the lab's monitoring host (Debian's Prometheus and Alertmanager in
a systemd container, tests talk to them on 127.0.0.1): it scrapes every edge host of the
inventory with its site and ring, a second run and a check-mode run change nothing, and real
drifted traffic on one host fires the drift alert (PSI against the bundle's reference
profile, evaluated by the real Prometheus, received by the real Alertmanager) labelled for
the rulebook to pause rollouts."""

from __future__ import annotations

import json
import time

import numpy as np
import requests
import yaml
from browser import screenshot
from e2e.fleetops import DEPLOY_SETTINGS, MODEL
from fleetpage import fleet_page
from labtools import LAB_INVENTORY, ROOT, run_playbook

# Short intervals keep the test short; the rules' shapes are what is tested.
FAST = {
    "monitoring_scrape_interval": "2s",
    "monitoring_evaluation_interval": "2s",
    "monitoring_rate_window": "10s",
    "monitoring_alert_drift_for": "6s",
    "monitoring_alertmanager_group_wait": "1s",
}
DRIFTED_HOST = "edge-2"


def _inventory() -> dict:
    return yaml.safe_load(LAB_INVENTORY.read_text())["all"]["children"]


def _monitor() -> dict:
    return _inventory()["monitoring"]["hosts"]["monitor"]


def _edges() -> dict[str, dict]:
    return _inventory()["edge"]["children"]["debian"]["hosts"]


def _changed(report: dict) -> int:
    return sum(stats["changed"] for stats in report["stats"].values())


def _until(what: str, probe, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"{what} within {timeout:.0f}s; last seen: {last!r}")


def _metrics(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=5).text


def _send(url: str, rows: np.ndarray, batch: int = 10) -> None:
    session = requests.Session()
    for start in range(0, len(rows), batch):
        part = rows[start : start + batch].astype(np.float32)
        tensor = {"name": "X", "datatype": "FP32", "shape": list(part.shape), "data": part.reshape(-1).tolist()}
        answer = session.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": [tensor]}, timeout=10)
        assert answer.status_code == 200, answer.text


def test_monitoring_role_scrapes_the_fleet_and_alerts_on_drift(fleet_serving):
    args = ["-i", str(LAB_INVENTORY), "-e", json.dumps(FAST)]
    run_playbook("monitoring.yml", *args)
    assert _changed(run_playbook("monitoring.yml", *args)) == 0
    assert _changed(run_playbook("monitoring.yml", *args, "--check")) == 0

    prometheus = _monitor()["edgeml_prometheus_url_from_controller"]
    alertmanager = _monitor()["edgeml_alertmanager_url_from_controller"]
    edges = _edges()

    def targets():
        active = requests.get(f"{prometheus}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        up = {t["labels"]["host"]: t["labels"] for t in active if t["health"] == "up"}
        return up if set(up) == set(edges) else None

    labels = _until("every edge host scraped", targets)
    for host, settings in edges.items():
        assert (labels[host]["site"], labels[host]["ring"]) == (settings["edgeml_site"], settings["edgeml_ring"])

    # Every host must serve a version whose bundle has a reference profile.
    if any("edgeml_drift_window_rows{" not in _metrics(e["edgeml_model_url_from_controller"]) for e in edges.values()):
        settings = {**DEPLOY_SETTINGS, "model_version": "3.0.0"}
        run_playbook("deploy_model.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps(settings))
    validation = np.load(ROOT / "examples" / "out" / "digits-validation.npz")["X"]
    # Traffic like the validation set fills every host's window (1,000 rows): no drift
    # (earlier tests sent a few smoke vectors over and over, which is drift).
    for settings in edges.values():
        _send(settings["edgeml_model_url_from_controller"], np.concatenate([validation] * 3))
    # Dimmed images (every pixel a quarter as bright) on one host: drift there only.
    _send(edges[DRIFTED_HOST]["edgeml_model_url_from_controller"], (validation / 4).astype(np.float32)[:400])
    _send(edges[DRIFTED_HOST]["edgeml_model_url_from_controller"], (validation / 4).astype(np.float32))

    def drift_alert():
        alerts = requests.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
        return [a for a in alerts if a["labels"].get("alertname") == "EdgeMLInputDrift"]

    def drift_alert_of_one_host():
        alerts = drift_alert()
        return alerts if {a["labels"]["host"] for a in alerts} == {DRIFTED_HOST} else None

    alerts = _until(f"the drift alert for {DRIFTED_HOST} alone", drift_alert_of_one_host)
    alert = alerts[0]
    assert alert["labels"]["edgeml_action"] == "pause" and alert["labels"]["model"] == MODEL
    assert alert["status"]["state"] == "active"
    assert f"on {DRIFTED_HOST}: inputs drifted (PSI" in alert["annotations"]["summary"]

    # The fleet page shows it: that host's drift and its alert, no other host's.
    page, rows = fleet_page()
    for host in edges:
        drift, alerts = rows[host][9], rows[host][10]
        if host == DRIFTED_HOST:
            assert float(drift.split(" ")[0]) > 0.25 and "EdgeMLInputDrift" in alerts, rows[host]
        else:
            assert float(drift.split(" ")[0]) < 0.25 and "EdgeMLInputDrift" not in alerts, rows[host]
    screenshot(page, "fleet-status-drift", height=900)
