"""Prometheus metrics. One registry per server so tests can run several in-process.

Label values never come from request input (an unknown model name or path is
recorded as "_unknown"), so a stream of junk requests cannot grow the series set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .bundle import LoadedModel
from .drift import MIN_ROWS

CONTENT_TYPE = CONTENT_TYPE_LATEST

# The *_created series double the exposition size for no use on an edge box.
disable_created_metrics()

# Inference on a tiny model takes tens of microseconds; the usual 5 ms first
# bucket would put every request in one bucket.
# Bounds at 0.5, 2.5 and 10 s too: a deployment's live window counts the requests surely over
# its latency budget (above the smallest bound at or over it), so budgets of 0.5-10 s need a
# bound near them (model_deployment's gates).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip


class _InputStatsCollector(Collector):
    """Exports the serving version's per-input running statistics (drift monitoring).

    mean = sum / count, variance = sum_of_squares / count - mean^2, per scrape window
    by rate()/increase() on the counters.
    """

    def __init__(self, current: Callable[[], LoadedModel | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[Any]:
        labels = ["model", "version", "input"]
        count = CounterMetricFamily(
            "edgeml_input_values", "Input tensor elements observed (finite requests only)", labels=labels
        )
        total = GaugeMetricFamily("edgeml_input_values_sum", "Sum of input tensor elements", labels=labels)
        sumsq = GaugeMetricFamily(
            "edgeml_input_values_sum_of_squares", "Sum of squared input tensor elements", labels=labels
        )
        lo = GaugeMetricFamily("edgeml_input_values_min", "Smallest input tensor element seen", labels=labels)
        hi = GaugeMetricFamily("edgeml_input_values_max", "Largest input tensor element seen", labels=labels)
        nonfinite = CounterMetricFamily(
            "edgeml_input_nonfinite_values",
            "Input elements that were NaN or infinity (left out of the sums)",
            labels=labels,
        )
        model = self._current()
        if model is not None:
            for name, st in model.stats.items():
                lv = [model.name, model.version, name]
                c, s, q, mn, mx, nf = st.snapshot()
                count.add_metric(lv, c)
                total.add_metric(lv, s)
                sumsq.add_metric(lv, q)
                nonfinite.add_metric(lv, nf)
                if c:
                    lo.add_metric(lv, mn)
                    hi.add_metric(lv, mx)
        yield from (count, total, sumsq, lo, hi, nonfinite)


class _DriftCollector(Collector):
    """Exports the serving version's drift against its reference profile (drift.py).

    The PSI gauges appear once the window holds MIN_ROWS rows (fewer rows are noise);
    edgeml_drift_window_rows appears as soon as the version has a profile.
    """

    def __init__(self, current: Callable[[], LoadedModel | None]) -> None:
        self._current = current

    def collect(self) -> Iterator[Any]:
        base = ["model", "version"]
        rows = GaugeMetricFamily(
            "edgeml_drift_window_rows",
            "Rows in the drift window (compared with the reference profile)",
            labels=base,
        )
        overall = GaugeMetricFamily(
            "edgeml_drift_psi", "Population stability index, mean over every input feature", labels=base
        )
        per_input = GaugeMetricFamily(
            "edgeml_drift_input_psi",
            "Population stability index of one input, mean over its features",
            labels=[*base, "input"],
        )
        per_feature = GaugeMetricFamily(
            "edgeml_drift_feature_psi",
            "Population stability index of one input feature (flat index)",
            labels=[*base, "input", "feature"],
        )
        out_of_range = GaugeMetricFamily(
            "edgeml_drift_out_of_range_ratio",
            "Share of input values outside the reference minimum..maximum of their feature",
            labels=[*base, "input"],
        )
        per_output = GaugeMetricFamily(
            "edgeml_drift_output_psi",
            "Population stability index of one output's distribution",
            labels=[*base, "output"],
        )
        model = self._current()
        if model is not None and model.drift is not None:
            snap = model.drift.snapshot()
            lv = [model.name, model.version]
            rows.add_metric(lv, snap.rows)
            if snap.rows >= MIN_ROWS:
                overall.add_metric(lv, snap.overall_psi)
                for t in snap.inputs:
                    per_input.add_metric([*lv, t.name], t.psi)
                    if t.out_of_range_ratio is not None:
                        out_of_range.add_metric([*lv, t.name], t.out_of_range_ratio)
                    for j, value in enumerate(t.feature_psi):
                        per_feature.add_metric([*lv, t.name, str(j)], value)
                for t in snap.outputs:
                    per_output.add_metric([*lv, t.name], t.psi)
        yield from (rows, overall, per_input, per_feature, out_of_range, per_output)


class Metrics:
    def __init__(self, model_name: str, current: Callable[[], LoadedModel | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model_name = model_name
        r = self.registry
        self.requests = Counter(
            "edgeml_requests",
            "HTTP requests by model, version, endpoint and status code",
            ["model", "version", "endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "edgeml_request_duration_seconds",
            "Time from request body received to response built",
            # version: a deployer reads the latency of ONE version from deltas after a switch.
            ["model", "version", "endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("edgeml_errors", "Failed requests by error type", ["model", "type"], registry=r)
        self.model_info = Gauge(
            "edgeml_model_info",
            "The model version being served (value 1)",
            ["model", "version", "sha256"],
            registry=r,
        )
        self.ready = Gauge(
            "edgeml_model_ready", "1 when the model passed its self-test and serves", ["model"], registry=r
        )
        self.swaps = Counter(
            "edgeml_model_swaps",
            "Version swaps (SIGHUP or admin load) by result",
            ["model", "result"],
            registry=r,
        )
        self.last_swap_ok = Gauge(
            "edgeml_model_last_swap_success",
            "1 if the last swap succeeded, 0 if it failed",
            ["model"],
            registry=r,
        )
        self.last_swap_ts = Gauge(
            "edgeml_model_last_swap_timestamp_seconds",
            "Unix time of the last swap attempt",
            ["model"],
            registry=r,
        )
        self.inflight_old = Gauge(
            "edgeml_model_draining_versions",
            "Swapped-out versions still finishing in-flight requests",
            ["model"],
            registry=r,
        )
        r.register(_InputStatsCollector(current))
        r.register(_DriftCollector(current))
        self.ready.labels(model_name).set(0)
        self.inflight_old.labels(model_name).set(0)
        for result in ("success", "failure"):
            self.swaps.labels(model_name, result)
        self._req_children: dict[tuple[str, str, str, int], Any] = {}
        self._lat_children: dict[tuple[str, str, str], Any] = {}
        self._err_children: dict[tuple[str, str], Any] = {}
        self._info_labels: tuple[str, str, str] | None = None

    def observe(self, model: str, version: str, endpoint: str, code: int, seconds: float) -> None:
        # Cache label children: .labels() parses kwargs and takes a lock each call.
        key = (model, version, endpoint, code)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(model, version, endpoint, str(code))
        child.inc()
        lkey = (model, version, endpoint)
        lchild = self._lat_children.get(lkey)
        if lchild is None:
            lchild = self._lat_children[lkey] = self.latency.labels(model, version, endpoint)
        lchild.observe(seconds)

    def error(self, model: str, kind: str) -> None:
        key = (model, kind)
        child = self._err_children.get(key)
        if child is None:
            child = self._err_children[key] = self.errors.labels(model, kind)
        child.inc()

    def set_serving(self, model: LoadedModel | None) -> None:
        if self._info_labels is not None:
            self.model_info.remove(*self._info_labels)
            self._info_labels = None
        if model is not None:
            self._info_labels = (model.name, model.version, model.sha256)
            self.model_info.labels(*self._info_labels).set(1)
        self.ready.labels(self.model_name).set(1 if model is not None else 0)

    def swap_result(self, ok: bool, when: float) -> None:
        self.swaps.labels(self.model_name, "success" if ok else "failure").inc()
        self.last_swap_ok.labels(self.model_name).set(1 if ok else 0)
        self.last_swap_ts.labels(self.model_name).set(when)

    def render(self) -> bytes:
        return generate_latest(self.registry)
