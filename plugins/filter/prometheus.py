# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Read Prometheus text exposition into totals per sample name, and Alertmanager's alerts per host."""

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


def alerts_by_host(alerts: list) -> dict[str, list[dict]]:
    """Alertmanager's active alerts (GET /api/v2/alerts) per `host` label, firing first:
    {host: [{name, state, action, summary, since}]}. Alerts without a host label (a whole
    model's version skew) are under '*'."""
    if not isinstance(alerts, list):
        raise AnsibleFilterError(f"not Alertmanager's list of alerts: {str(alerts)[:200]}")
    by_host: dict[str, list[dict]] = {}
    for alert in alerts:
        labels = alert.get("labels") or {}
        by_host.setdefault(labels.get("host") or "*", []).append({
            "name": labels.get("alertname", "?"),
            "state": (alert.get("status") or {}).get("state", "?"),
            "action": labels.get("edgeml_action"),
            "summary": (alert.get("annotations") or {}).get("summary", ""),
            "since": alert.get("startsAt"),
        })
    for entries in by_host.values():
        entries.sort(key=lambda entry: (entry["state"] != "active", entry["name"]))
    return by_host


class FilterModule:
    """Prometheus filters."""

    def filters(self):
        return {"prometheus_samples": prometheus_samples, "alerts_by_host": alerts_by_host}
