# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The deployment gates of model_deployment (private): readiness, smoke, latency and
error rate, measured against ONE slot through its admin port.

Each gate returns a ``GateResult`` shaped as in docs/deployment-result.md
(``name, passed, measured, threshold, detail``). Every wait is bounded: the readiness
gate by its timeout, the others by request counts and the soak window.
"""

from __future__ import annotations

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


@dataclass
class GateSettings:
    readiness_timeout: float = 60.0
    smoke_enabled: bool = True
    smoke_source: str | None = None  # None: expected where a vector has it, else recorded
    smoke_min_pass_ratio: float = 1.0
    latency_enabled: bool = True
    latency_requests: int = 30
    latency_p95_ms: float | None = None
    error_rate_enabled: bool = True
    soak_seconds: float = 5.0
    max_error_ratio: float = 0.0


@dataclass
class GateResult:
    name: str
    passed: bool
    measured: dict[str, t.Any] = field(default_factory=dict)
    threshold: dict[str, t.Any] = field(default_factory=dict)
    detail: str = ""

    def as_dict(self) -> dict[str, t.Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "measured": self.measured,
            "threshold": self.threshold,
            "detail": self.detail,
        }


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


def request_counts(text: str) -> dict[str, t.Any]:
    """Totals the error-rate gate compares: all requests, 5xx answers, errors by type."""
    total = server_errors = 0.0
    by_type: dict[str, float] = {}
    for name, labels, value in parse_metrics(text, ("edgeml_requests_total", "edgeml_errors_total")):
        if name == "edgeml_requests_total":
            total += value
            if labels.get("code", "").startswith("5"):
                server_errors += value
        else:
            kind = labels.get("type", "?")
            by_type[kind] = by_type.get(kind, 0.0) + value
    return {"requests": total, "server_errors": server_errors, "errors_by_type": by_type}


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
        for index, kind, reference in cases:
            answer = self.client.infer(self.vectors[index]["inputs"])
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
            answer = self.client.infer(self.vectors[i % len(self.vectors)]["inputs"])
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
            return GateResult("latency", True, measured, threshold, "measured only: no p95_ms budget set")
        ok = measured["p95_ms"] <= budget
        detail = f"p95 {measured['p95_ms']:g} ms {'within' if ok else 'over'} the budget of {budget:g} ms"
        return GateResult("latency", ok, measured, threshold, detail)

    # --- error rate -------------------------------------------------------------------
    def _scrape(self) -> dict[str, t.Any] | None:
        answer = self.client.metrics()
        return request_counts(answer.text) if answer.ok else None

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
                answer = self.client.infer(self.vectors[probes % len(self.vectors)]["inputs"])
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
