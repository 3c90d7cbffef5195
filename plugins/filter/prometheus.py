# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Read Prometheus text exposition into totals per sample name."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:  # reported when the filter is used
    text_string_to_metric_families = None


def prometheus_samples(text: str) -> dict[str, float]:
    """Sum every sample of the same name over its labels: {"edgeml_requests_total": 1234.0, ...}."""
    if text_string_to_metric_families is None:
        raise AnsibleFilterError("prometheus_samples needs the prometheus-client Python package on the controller")
    totals: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text or ""):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    except ValueError as error:
        raise AnsibleFilterError(f"not Prometheus text exposition: {error}") from error
    return totals


class FilterModule:
    """Prometheus filters."""

    def filters(self):
        return {"prometheus_samples": prometheus_samples}
