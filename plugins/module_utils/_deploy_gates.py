# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The deployment gates of model_deployment (private): readiness, smoke, latency and
error rate, measured against ONE slot through its admin port.

Each gate returns a ``GateResult`` shaped as in docs/deployment-result.md
(``name, passed, measured, threshold, detail``). Every wait is bounded: the readiness
gate by its timeout, the others by request counts and the soak window.
"""

from __future__ import annotations

import functools
import math
import re
import time
import typing as t
from dataclasses import dataclass, field

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    tensors_match,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import ServerClient

MAX_PROBES = 200  # error-rate soak: at most this many probe requests, whatever the window
PROBE_INTERVAL = 0.1  # seconds between soak probes ("light" traffic: ~10 requests/s)
# The live window reads the server's counters this often: a failure seen there is
# switched back within about this much time plus the switch itself (milliseconds).
LIVE_POLL_INTERVAL = 0.2

# The one source of the gates' options and their defaults: the module's argument spec is
# this, GateSettings reads its defaults from it, and a unit test holds the module's
# documentation and the role's argument spec and defaults to it.
GATES_ARGUMENT_SPEC: dict[str, t.Any] = dict(
    readiness_timeout=dict(type="float", default=120.0),
    smoke=dict(
        type="dict",
        default={},
        options=dict(
            enabled=dict(type="bool", default=True),
            source=dict(type="str", choices=["expected", "recorded"]),
            min_pass_ratio=dict(type="float", default=1.0, no_log=False),
        ),
    ),
    latency=dict(
        type="dict",
        default={},
        options=dict(
            enabled=dict(type="bool", default=True),
            requests=dict(type="int", default=30),
            p95_ms=dict(type="float"),
        ),
    ),
    error_rate=dict(
        type="dict",
        default={},
        options=dict(
            enabled=dict(type="bool", default=True),
            soak_seconds=dict(type="float", default=5.0),
            max_ratio=dict(type="float", default=0.0),
        ),
    ),
    live=dict(
        type="dict",
        default={},
        options=dict(
            enabled=dict(type="bool", default=True),
            seconds=dict(type="float", default=5.0),
            min_requests=dict(type="int", default=20),
        ),
    ),
)


def gate_default(*path: str) -> t.Any:
    """The default of one gate option, e.g. gate_default("latency", "requests")."""
    spec: t.Any = {"options": GATES_ARGUMENT_SPEC}
    for key in path:
        spec = spec["options"][key]
    return spec.get("default")


@dataclass
class GateSettings:
    readiness_timeout: float = gate_default("readiness_timeout")
    smoke_enabled: bool = gate_default("smoke", "enabled")
    smoke_source: str | None = gate_default("smoke", "source")  # None: expected where a vector has it
    smoke_min_pass_ratio: float = gate_default("smoke", "min_pass_ratio")
    latency_enabled: bool = gate_default("latency", "enabled")
    latency_requests: int = gate_default("latency", "requests")
    latency_p95_ms: float | None = gate_default("latency", "p95_ms")
    error_rate_enabled: bool = gate_default("error_rate", "enabled")
    soak_seconds: float = gate_default("error_rate", "soak_seconds")
    max_error_ratio: float = gate_default("error_rate", "max_ratio")
    live_enabled: bool = gate_default("live", "enabled")
    live_seconds: float = gate_default("live", "seconds")
    live_min_requests: int = gate_default("live", "min_requests")
    # Why latency_p95_ms is None when the caller cleared it (a rollback), for the gate's detail.
    latency_unjudged_reason: str | None = None


@dataclass
class GateResult:
    name: str
    passed: bool
    measured: dict[str, t.Any] = field(default_factory=dict)
    threshold: dict[str, t.Any] = field(default_factory=dict)
    detail: str = ""
    seconds: float | None = None  # how long the gate took (set by Gates, _timed)

    def as_dict(self) -> dict[str, t.Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "measured": self.measured,
            "threshold": self.threshold,
            "detail": self.detail,
            "seconds": self.seconds,
        }


_GateMethod = t.TypeVar("_GateMethod", bound=t.Callable[..., GateResult])


def _timed(gate: _GateMethod) -> _GateMethod:
    """Record on the gate's result how long it took: reports show where a deployment's time goes."""

    @functools.wraps(gate)
    def timed(*args: t.Any, **kwargs: t.Any) -> GateResult:
        started = time.monotonic()
        result = gate(*args, **kwargs)
        result.seconds = round(time.monotonic() - started, 3)
        return result

    return t.cast(_GateMethod, timed)


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str, names: t.Iterable[str]) -> list[tuple[str, dict[str, str], float]]:
    """Samples (name, labels, value) of the given metric names from Prometheus text."""
    wanted = set(names)
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE_RE.match(line)
        if not match or match.group(1) not in wanted:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        samples.append((match.group(1), dict(_LABEL_RE.findall(match.group(2) or "")), value))
    return samples


def request_counts(text: str, version: str | None = None) -> dict[str, t.Any]:
    """Totals the error-rate gates compare: all requests, 5xx answers, errors by type, and
    the infer latency histogram (cumulative bucket counts by upper bound), of one VERSION
    when given (requests to other versions served meanwhile do not count)."""
    total = server_errors = 0.0
    by_type: dict[str, float] = {}
    buckets: dict[float, float] = {}
    names = ("edgeml_requests_total", "edgeml_errors_total", "edgeml_request_duration_seconds_bucket")
    for name, labels, value in parse_metrics(text, names):
        if version is not None and name != "edgeml_errors_total" and labels.get("version") != version:
            continue
        if name == "edgeml_requests_total":
            total += value
            if labels.get("code", "").startswith("5"):
                server_errors += value
        elif name == "edgeml_errors_total":
            kind = labels.get("type", "?")
            by_type[kind] = by_type.get(kind, 0.0) + value
        elif labels.get("endpoint") == "infer":
            bound = float(labels.get("le", "+Inf"))
            buckets[bound] = buckets.get(bound, 0.0) + value
    return {"requests": total, "server_errors": server_errors, "errors_by_type": by_type, "buckets": buckets}


def _live_measured(
    before: dict[str, t.Any], now: dict[str, t.Any], started: float, budget_ms: float | None
) -> dict[str, t.Any]:
    """What the live window saw since BEFORE: requests, server errors, infer p95 (ms), and
    how many infer requests surely took longer than BUDGET_MS."""
    deltas = {bound: count - before["buckets"].get(bound, 0.0) for bound, count in now["buckets"].items()}
    p95 = histogram_quantile(0.95, deltas)
    measured = {
        "requests": int(now["requests"] - before["requests"]),
        "server_errors": int(now["server_errors"] - before["server_errors"]),
        "p95_ms": None if p95 is None else round(p95 * 1000.0, 3),
        "seconds": round(time.monotonic() - started, 3),
    }
    if budget_ms is not None:
        measured["over_budget"] = surely_over(deltas, budget_ms / 1000.0)
    return measured


def surely_over(buckets: dict[float, float], seconds: float) -> int:
    """How many observations of cumulative BUCKETS surely took longer than SECONDS: those above
    the smallest bucket bound at or over it (a bucket straddling it counts as within)."""
    bounds = sorted(buckets)
    if not bounds:
        return 0
    at_or_over = [bound for bound in bounds if bound >= seconds]
    within = buckets[at_or_over[0]] if at_or_over else buckets[bounds[-1]]
    return max(0, int(buckets[bounds[-1]] - within))


def histogram_quantile(quantile: float, buckets: dict[float, float]) -> float | None:
    """The quantile (seconds) of cumulative bucket counts, interpolated linearly inside its
    bucket as Prometheus's histogram_quantile does; None without observations."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = quantile * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # beyond the largest finite bucket: its bound is all we know
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = bound, count
    return lower


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100.0 * len(ordered)))
    return ordered[rank - 1]


def _short(data: t.Any, limit: int = 6) -> str:
    if isinstance(data, list) and len(data) > limit:
        return "[" + ", ".join(repr(v) for v in data[:limit]) + ", ...]"
    return repr(data)


class Gates:
    """Runs the gates against one slot, for one expected version."""

    def __init__(
        self,
        client: ServerClient,
        settings: GateSettings,
        manifest: dict[str, t.Any],
        version: str,
        sleep: t.Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.settings = settings
        self.version = version
        self.sleep = sleep
        smoke = manifest.get("smoke_tests") or {}
        self.vectors: list[dict[str, t.Any]] = list(smoke.get("vectors") or [])
        tolerance = smoke.get("tolerance") or {}
        self.rtol = float(tolerance.get("rtol", DEFAULT_RTOL))
        self.atol = float(tolerance.get("atol", DEFAULT_ATOL))

    # --- readiness --------------------------------------------------------------------
    @_timed
    def readiness(self, service: t.Callable[[], tuple[str | None, str | None]] | None = None) -> GateResult:
        """Wait until the slot serves VERSION and is ready, and (with SERVICE) its systemd
        service is active. SERVICE() returns (problem, not_active_yet): a problem (failed,
        restarted) fails the gate at once; not_active_yet says what the service still waits
        for (with Notify=healthy: its health check), and the gate keeps waiting."""
        timeout = self.settings.readiness_timeout
        started = time.monotonic()
        last = "no answer yet"
        while True:
            problem, pending = service() if service else (None, None)
            if problem:
                return self._readiness(False, started, f"the service failed: {problem}")
            answer = self.client.version_ready(self.version)
            if answer.ok and not pending:
                return self._readiness(True, started, f"model {self.client.name} {self.version} ready")
            if answer.ok:
                last = f"the model is ready but {pending}"
            else:
                status = self.client.status()
                if status.ok and isinstance(status.json, dict):
                    serving = status.json.get("serving_version")
                    last = status.json.get("error") or f"serving {serving!r}, not {self.version!r}"
                    if serving is None and str(status.json.get("error") or "").startswith("initial load failed"):
                        # Live but never ready: the server does not retry a failed load by itself.
                        return self._readiness(False, started, last)
                    swap = status.json.get("last_swap") or {}
                    if swap.get("requested_version") == self.version and swap.get("result") == "failure":
                        last = f"swap to {self.version} failed: {swap.get('reason')}"
                else:
                    last = answer.reason()
            if time.monotonic() - started >= timeout:
                return self._readiness(False, started, f"not ready within {timeout:g} s: {last}", timed_out=True)
            self.sleep(0.2)

    def _readiness(self, passed: bool, started: float, detail: str, timed_out: bool = False) -> GateResult:
        measured: dict[str, t.Any] = {"seconds_to_ready": round(time.monotonic() - started, 3) if passed else None}
        if timed_out:
            measured["timed_out"] = True
        return GateResult("readiness", passed, measured, {"timeout_seconds": self.settings.readiness_timeout}, detail)

    # --- smoke ------------------------------------------------------------------------
    def _smoke_cases(self) -> list[tuple[int, str, list[dict[str, t.Any]]]]:
        source = self.settings.smoke_source
        cases = []
        for index, vector in enumerate(self.vectors):
            expected = vector.get("expected")
            if source == "expected" or (source is None and expected):
                if expected:
                    cases.append((index, "expected", expected))
            else:
                cases.append((index, "recorded", vector.get("outputs") or []))
        return cases

    @_timed
    def smoke(self) -> GateResult:
        ratio = self.settings.smoke_min_pass_ratio
        threshold = {"min_pass_ratio": ratio, "source": self.settings.smoke_source or "auto"}
        cases = self._smoke_cases()
        if not cases:
            what = "expected outputs" if self.settings.smoke_source == "expected" else "smoke vectors"
            return GateResult(
                "smoke",
                False,
                {"vectors": 0},
                threshold,
                f"the bundle has no {what} to check; give expected_outputs to model_bundle or use "
                "gates.smoke.source: recorded",
            )
        wrong: list[str] = []
        # The smoke gate judges answers, the latency gate speed: a slow version's answer is
        # waited for as long as its readiness was (a CI run saw the client's usual timeout
        # turn a slow but right answer into a wrong vector).
        timeout = max(self.settings.readiness_timeout, self.client.timeout)
        for index, kind, reference in cases:
            answer = self.client.infer(self.vectors[index]["inputs"], self.version, timeout=timeout)
            if not answer.ok or not isinstance(answer.json, dict):
                wrong.append(f"vector {index}: {answer.reason()}")
                continue
            if answer.json.get("model_version") != self.version:
                wrong.append(f"vector {index}: answered by version {answer.json.get('model_version')!r}")
                continue
            actual = answer.json.get("outputs") or []
            if not tensors_match(actual, reference, self.rtol, self.atol):
                by_name = {o.get("name"): o for o in actual}
                ref = reference[0] if reference else {}
                got = by_name.get(ref.get("name"), {}).get("data")
                wrong.append(f"vector {index}: {ref.get('name')} {kind} {_short(ref.get('data'))}, got {_short(got)}")
        passed_count = len(cases) - len(wrong)
        measured = {
            "vectors": len(cases),
            "passed": passed_count,
            "pass_ratio": round(passed_count / len(cases), 6),
            "sources": sorted({case[1] for case in cases}),
            "failures": wrong[:10],
        }
        ok = passed_count / len(cases) >= ratio
        detail = (
            f"{passed_count} of {len(cases)} vectors right"
            if ok
            else f"{len(wrong)} of {len(cases)} vectors wrong ({wrong[0]})"
        )
        return GateResult("smoke", ok, measured, threshold, detail)

    # --- latency ----------------------------------------------------------------------
    @_timed
    def latency(self) -> GateResult:
        count = self.settings.latency_requests
        budget = self.settings.latency_p95_ms
        threshold = {"p95_ms": budget, "requests": count}
        if not self.vectors:
            return GateResult("latency", False, {}, threshold, "no smoke vector inputs to send")
        # The nearest-rank p95 of `count` requests is over the budget as soon as
        # count - ceil(0.95 * count) + 1 of them were: stop there, the verdict is known
        # (a slow version then serves 2 gate requests of 20, not all 20).
        decisive = count - math.ceil(0.95 * count) + 1
        times: list[float] = []
        over: list[float] = []
        for i in range(count):
            answer = self.client.infer(self.vectors[i % len(self.vectors)]["inputs"], self.version)
            if not answer.ok:
                return GateResult(
                    "latency",
                    False,
                    {"requests": i + 1},
                    threshold,
                    f"request {i + 1} of {count} failed: {answer.reason()}",
                )
            times.append(answer.seconds * 1000.0)
            if budget is not None and times[-1] > budget:
                over.append(times[-1])
                if len(over) >= decisive:
                    break
        measured = {"requests": len(times), "p50_ms": round(percentile(times, 50), 3)}
        if len(times) < count:
            measured.update(over_budget=len(over), max_ms=round(max(times), 3))
            slow = ", ".join(f"{ms:.0f}" for ms in over)
            detail = (
                f"p95 over the budget of {budget:g} ms: stopped after {len(times)} of {count} requests, "
                f"{len(over)} took longer ({slow} ms), so the p95 of {count} cannot be within it"
            )
            return GateResult("latency", False, measured, threshold, detail)
        measured.update(p95_ms=round(percentile(times, 95), 3), max_ms=round(max(times), 3))
        if budget is None:
            why = self.settings.latency_unjudged_reason or "no p95_ms budget set"
            return GateResult("latency", True, measured, threshold, f"measured only: {why}")
        ok = measured["p95_ms"] <= budget
        detail = f"p95 {measured['p95_ms']:g} ms {'within' if ok else 'over'} the budget of {budget:g} ms"
        return GateResult("latency", ok, measured, threshold, detail)

    # --- error rate -------------------------------------------------------------------
    def _scrape(self) -> dict[str, t.Any] | None:
        answer = self.client.metrics()
        return request_counts(answer.text, self.version) if answer.ok else None

    @_timed
    def error_rate(self) -> GateResult:
        soak = self.settings.soak_seconds
        max_ratio = self.settings.max_error_ratio
        threshold = {"max_ratio": max_ratio, "soak_seconds": soak}
        before = self._scrape()
        if before is None:
            return GateResult("error_rate", False, {}, threshold, "cannot read the slot's /metrics")
        probes = failed_probes = 0
        started = time.monotonic()
        while time.monotonic() - started < soak and probes < MAX_PROBES:
            if self.vectors:
                answer = self.client.infer(self.vectors[probes % len(self.vectors)]["inputs"], self.version)
                failed_probes += 0 if answer.status else 1  # no connection: not in the metrics
            probes += 1
            self.sleep(PROBE_INTERVAL)
        after = self._scrape()
        if after is None:
            return GateResult("error_rate", False, {"probes": probes}, threshold, "cannot read the slot's /metrics")
        requests = after["requests"] - before["requests"]
        errors = after["server_errors"] - before["server_errors"] + failed_probes
        if requests < 0 or errors < failed_probes:
            return GateResult(
                "error_rate",
                False,
                {"probes": probes},
                threshold,
                "the slot's counters went backwards during the soak: the server restarted",
            )
        ratio = errors / requests if requests > 0 else (1.0 if errors else 0.0)
        by_type = {
            k: v - before["errors_by_type"].get(k, 0.0)
            for k, v in after["errors_by_type"].items()
            if v - before["errors_by_type"].get(k, 0.0) > 0
        }
        measured = {
            "requests": int(requests),
            "server_errors": int(errors),
            "ratio": round(ratio, 6),
            "probes": probes,
            "errors_by_type": {k: int(v) for k, v in sorted(by_type.items())},
        }
        ok = ratio <= max_ratio
        detail = (
            f"{int(errors)} server errors in {int(requests)} requests over {soak:g} s "
            f"(ratio {ratio:.4g}, max {max_ratio:g})"
        )
        return GateResult("error_rate", ok, measured, threshold, detail)

    # --- live: real traffic after the switch ---------------------------------------------
    @_timed
    def live(self, service: t.Callable[[], tuple[str | None, str | None]] | None = None) -> GateResult:
        """Watch the version's real traffic for ``live_seconds`` after public traffic moved
        to it, from the server's own counters: server errors over ``max_error_ratio`` or an
        infer p95 over the latency budget (once ``live_min_requests`` were served) fail at
        once, and so do a service that fails or restarts and a server that stops answering.
        The caller switches back on a failure; it is seen within LIVE_POLL_INTERVAL."""
        settings = self.settings
        threshold = {
            "seconds": settings.live_seconds,
            "max_ratio": settings.max_error_ratio,
            "p95_ms": settings.latency_p95_ms,
            "min_requests": settings.live_min_requests,
        }
        before = self._scrape()
        measured: dict[str, t.Any] = {"requests": 0, "server_errors": 0, "p95_ms": None}
        problem = None if before is not None else "cannot read the server's /metrics after the switch"
        started = time.monotonic()
        while problem is None and time.monotonic() - started < settings.live_seconds:
            self.sleep(LIVE_POLL_INTERVAL)
            problem = service()[0] if service else None
            if problem:
                problem = f"the service failed: {problem}"
                break
            now = self._scrape()
            if now is None:
                problem = "the server stopped answering after the switch"
                break
            measured = _live_measured(t.cast(dict, before), now, started, settings.latency_p95_ms)
            problem = self._live_problem(measured)
        if problem:
            return GateResult("live", False, measured, threshold, problem)
        detail = f"{measured['requests']} live requests in {settings.live_seconds:g} s, "
        detail += f"{measured['server_errors']} server errors"
        if measured["p95_ms"] is not None:
            detail += f", p95 {measured['p95_ms']:g} ms"
        return GateResult("live", True, measured, threshold, detail)

    def _live_problem(self, measured: dict[str, t.Any]) -> str | None:
        settings = self.settings
        requests, errors, p95 = measured["requests"], measured["server_errors"], measured["p95_ms"]
        if requests < 0:
            return "the server's counters went backwards: it restarted"
        if errors > settings.max_error_ratio * max(requests, settings.live_min_requests):
            return f"{errors} server errors in {requests} live requests (max ratio {settings.max_error_ratio:g})"
        budget = settings.latency_p95_ms
        if budget is None:
            return None
        if p95 is not None and requests >= settings.live_min_requests and p95 > budget:
            return f"live p95 {p95:g} ms over the budget of {budget:g} ms ({requests} requests)"
        # Too few answers to judge a p95 is no pass: a version too slow for its traffic answers
        # few requests, all late. As the latency gate does, the p95 of live_min_requests is over
        # the budget as soon as more than 5 % of them surely were (the error rule's max() too).
        judged = max(requests, settings.live_min_requests)
        decisive = judged - math.ceil(0.95 * judged) + 1
        over = measured.get("over_budget", 0)
        if over >= decisive:
            return (
                f"{over} of {requests} live requests took longer than the budget of {budget:g} ms: "
                f"the p95 of {judged} cannot be within it"
            )
        return None

    # --- all --------------------------------------------------------------------------
    def after_ready(self) -> list[GateResult]:
        """smoke, latency, error_rate (those enabled), stopping at the first failure."""
        results: list[GateResult] = []
        for enabled, gate in (
            (self.settings.smoke_enabled, self.smoke),
            (self.settings.latency_enabled, self.latency),
            (self.settings.error_rate_enabled, self.error_rate),
        ):
            if not enabled:
                continue
            result = gate()
            results.append(result)
            if not result.passed:
                break
        return results
