"""prometheus_samples totals what the model server exports; alerts_by_host groups Alertmanager's alerts."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.prometheus import alerts_by_host, prometheus_samples

TEXT = """\
# HELP edgeml_requests_total Requests.
# TYPE edgeml_requests_total counter
edgeml_requests_total{endpoint="infer",status="200"} 40.0
edgeml_requests_total{endpoint="infer",status="400"} 2.0
# HELP edgeml_model_ready Ready.
# TYPE edgeml_model_ready gauge
edgeml_model_ready 1.0
"""


def test_samples_are_summed_over_labels():
    samples = prometheus_samples(TEXT)
    assert samples["edgeml_requests_total"] == 42.0
    assert samples["edgeml_model_ready"] == 1.0


def test_empty_text_has_no_samples():
    assert prometheus_samples("") == {}


def test_garbage_is_a_clear_error():
    with pytest.raises(AnsibleFilterError, match="not Prometheus text"):
        prometheus_samples("edgeml_requests_total{broken 1\n")


def test_alerts_are_grouped_by_host_firing_first():
    alerts = [
        {"labels": {"alertname": "EdgeMLInputDrift", "host": "edge-2", "edgeml_action": "pause"},
         "annotations": {"summary": "drifted"}, "status": {"state": "suppressed"}, "startsAt": "t1"},
        {"labels": {"alertname": "EdgeMLModelNotReady", "host": "edge-2", "edgeml_action": "notify"},
         "annotations": {"summary": "down"}, "status": {"state": "active"}, "startsAt": "t2"},
        {"labels": {"alertname": "EdgeMLVersionSkew", "model": "digits"}, "status": {"state": "active"}},
    ]
    by_host = alerts_by_host(alerts)
    assert [alert["name"] for alert in by_host["edge-2"]] == ["EdgeMLModelNotReady", "EdgeMLInputDrift"]
    assert by_host["edge-2"][1] == {"name": "EdgeMLInputDrift", "state": "suppressed", "action": "pause",
                                    "summary": "drifted", "since": "t1"}
    assert [alert["name"] for alert in by_host["*"]] == ["EdgeMLVersionSkew"]  # no host: the whole fleet's
    assert alerts_by_host([]) == {}


def test_an_answer_that_is_not_a_list_of_alerts_is_refused():
    with pytest.raises(AnsibleFilterError, match="not Alertmanager's list of alerts"):
        alerts_by_host({"error": "unauthorized"})
