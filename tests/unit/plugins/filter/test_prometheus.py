"""prometheus_samples totals what the model server exports."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.prometheus import prometheus_samples

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
