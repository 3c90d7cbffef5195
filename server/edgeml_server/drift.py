"""Drift against the bundle's reference profile (docs/bundle-format.md, profile.json).

The profile holds, per feature of each input (and of each numeric output), the cut
points of quantile bins and the share of the reference data in each bin; for an
integer output, its classes and their shares. The server keeps the bin of every
feature of the last ``window`` rows it answered in a ring buffer, with the bin counts
kept up to date as rows enter and leave, and compares those counts with the reference:

  PSI = sum over bins of (live - ref) * ln(live / ref), shares floored at PSI_FLOOR

(the population stability index; under 0.1 little change, 0.1-0.25 some, over 0.25 a
shift worth acting on). Requests are queued on the request path (the last ``window``
rows' worth; older ones are dropped unbinned) and binned at the next scrape, so a
request pays for an append, not for the statistics.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

PROFILE_SCHEMA_VERSION = 1
# A share of 0 makes ln() infinite; 1e-4 is the usual floor (one row in 10,000).
PSI_FLOOR = 1e-4
DEFAULT_WINDOW = 1000
# The ring holds one int32 per feature per row: 100,000 rows of 64 features is 26 MB.
MAX_WINDOW = 100_000
# PSI over fewer rows than this is mostly sampling noise: it is not exported.
MIN_ROWS = 100
# A profile is data from a file the server loads: bound it.
MAX_FEATURES = 4096
MAX_BINS = 64


class ProfileError(ValueError):
    """profile.json is malformed; the message says where."""


def psi(live: np.ndarray, ref: np.ndarray) -> Any:
    """Population stability index of share vectors over the same bins (the last axis): a
    number for two vectors, one per row for two matrices."""
    a = np.maximum(live, PSI_FLOOR)
    e = np.maximum(ref, PSI_FLOOR)
    return np.sum((a - e) * np.log(a / e), axis=-1)


def _floats(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise ProfileError(f"{where} must be a list of finite numbers")
    return np.asarray(value, dtype=np.float64)


@dataclass
class _Tensor:
    """Binning of one tensor: F features, each with its own cut points (or classes)."""

    name: str
    edges: np.ndarray  # (F, K) cut points, padded with +inf; bin = number of cut points <= x
    expected: np.ndarray  # (F, K + 1) reference shares (0 for padding bins)
    low: np.ndarray  # (F,) reference minimum per feature
    high: np.ndarray  # (F,) reference maximum per feature
    classes: np.ndarray | None  # sorted classes of a classes tensor (F == 1); bin K = "other"

    @property
    def features(self) -> int:
        return int(self.edges.shape[0])

    def bins(self, rows: np.ndarray) -> np.ndarray:
        """(n, F) bin index of each feature of each row."""
        if self.classes is not None:
            col = rows[:, 0]
            idx = np.searchsorted(self.classes, col)
            idx = np.minimum(idx, len(self.classes) - 1)
            hit = self.classes[idx] == col
            return np.where(hit, idx, len(self.classes))[:, None]
        return (rows[:, :, None] >= self.edges[None, :, :]).sum(axis=2)


def _parse_binned(item: dict[str, Any], where: str) -> _Tensor:
    feats = item.get("features")
    if not isinstance(feats, list) or not 0 < len(feats) <= MAX_FEATURES:
        raise ProfileError(f"{where}.features must be a list of 1..{MAX_FEATURES} features")
    parsed = []
    for j, feat in enumerate(feats):
        fw = f"{where}.features[{j}]"
        if not isinstance(feat, dict):
            raise ProfileError(f"{fw} must be an object")
        edges = _floats(feat.get("edges"), f"{fw}.edges")
        shares = _floats(feat.get("expected"), f"{fw}.expected")
        if len(edges) >= MAX_BINS or np.any(np.diff(edges) <= 0):
            raise ProfileError(f"{fw}.edges must be strictly increasing, fewer than {MAX_BINS}")
        if len(shares) != len(edges) + 1 or np.any(shares < 0) or abs(shares.sum() - 1) > 1e-3:
            raise ProfileError(f"{fw}.expected must be len(edges) + 1 shares >= 0 summing to 1")
        lo, hi = _floats([feat.get("min"), feat.get("max")], f"{fw}.min/max")
        parsed.append((edges, shares, lo, hi))
    k = max(len(e) for e, _s, _l, _h in parsed)
    edges = np.full((len(parsed), k), np.inf)
    expected = np.zeros((len(parsed), k + 1))
    for j, (e, s, _l, _h) in enumerate(parsed):
        edges[j, : len(e)] = e
        expected[j, : len(s)] = s
    low = np.array([p[2] for p in parsed])
    high = np.array([p[3] for p in parsed])
    return _Tensor(item["name"], edges, expected, low, high, None)


def _parse_classes(item: dict[str, Any], where: str) -> _Tensor:
    classes = _floats(item.get("classes"), f"{where}.classes")
    shares = _floats(item.get("expected"), f"{where}.expected")
    if not 0 < len(classes) < MAX_BINS or np.any(np.diff(classes) <= 0):
        raise ProfileError(f"{where}.classes must be 1..{MAX_BINS - 1} increasing values")
    if len(shares) != len(classes) + 1 or np.any(shares < 0) or abs(shares.sum() - 1) > 1e-3:
        raise ProfileError(f"{where}.expected must be len(classes) + 1 shares (the last: other)")
    edges = np.full((1, len(classes)), np.inf)
    return _Tensor(item["name"], edges, shares[None, :], classes[:1], classes[-1:], classes)


def parse_profile(doc: Any, inputs: set[str], outputs: set[str]) -> tuple[list[_Tensor], list[_Tensor]]:
    """Check profile.json against the signature; return (inputs, outputs) binnings."""
    if not isinstance(doc, dict) or doc.get("schema_version") != PROFILE_SCHEMA_VERSION:
        raise ProfileError(f"profile.json must be an object with schema_version {PROFILE_SCHEMA_VERSION}")
    result: list[list[_Tensor]] = []
    for kind, names in (("inputs", inputs), ("outputs", outputs)):
        items = doc.get(kind, [])
        if not isinstance(items, list):
            raise ProfileError(f"profile.json: {kind} must be a list")
        tensors = []
        for i, item in enumerate(items):
            where = f"profile.json {kind}[{i}]"
            if not isinstance(item, dict) or item.get("name") not in names:
                raise ProfileError(f"{where}.name must name one of the model's {kind} {sorted(names)}")
            tensors.append(_parse_classes(item, where) if "classes" in item else _parse_binned(item, where))
        result.append(tensors)
    return result[0], result[1]


class _Window:
    """The bins of the last ``size`` rows of one tensor, and their counts per bin."""

    def __init__(self, tensor: _Tensor, size: int) -> None:
        self.tensor = tensor
        self.size = size
        nbins = tensor.expected.shape[1]
        self.offsets = (np.arange(tensor.features) * nbins)[None, :]
        self.ring = np.zeros((size, tensor.features), dtype=np.int32)
        self.counts = np.zeros(tensor.features * nbins, dtype=np.int64)
        self.filled = 0
        self.pos = 0
        self.out_of_range = np.zeros(size, dtype=np.int32)  # per row: features outside [min, max]
        self.out_of_range_total = 0

    def add(self, rows: np.ndarray) -> None:
        t = self.tensor
        rows = rows[np.isfinite(rows).all(axis=1)]
        if rows.shape[0] > self.size:
            rows = rows[-self.size :]
        n = rows.shape[0]
        if n == 0:
            return
        flat_bins = (t.bins(rows) + self.offsets).astype(np.int32)
        oor = ((rows < t.low) | (rows > t.high)).sum(axis=1).astype(np.int32) if t.classes is None else None
        slots = (self.pos + np.arange(n)) % self.size
        # Slots at or past `filled` have never held a row (the ring fills in order).
        old = slots[slots < self.filled]
        if old.size:
            self.counts -= np.bincount(self.ring[old].reshape(-1), minlength=self.counts.size)
            self.out_of_range_total -= int(self.out_of_range[old].sum())
        self.counts += np.bincount(flat_bins.reshape(-1), minlength=self.counts.size)
        self.ring[slots] = flat_bins
        if oor is not None:
            self.out_of_range[slots] = oor
            self.out_of_range_total += int(oor.sum())
        self.pos = (self.pos + n) % self.size
        self.filled = min(self.size, self.filled + n)

    def feature_psi(self) -> np.ndarray:
        shares = self.counts.reshape(self.tensor.expected.shape) / max(self.filled, 1)
        # Padding bins have share 0 on both sides: floored to equal, they add 0.
        return psi(shares, self.tensor.expected)

    def out_of_range_ratio(self) -> float:
        return self.out_of_range_total / max(self.filled * self.tensor.features, 1)


@dataclass(frozen=True)
class TensorDrift:
    name: str
    psi: float  # mean over the tensor's features
    feature_psi: list[float]
    out_of_range_ratio: float | None  # None for a classes tensor


@dataclass(frozen=True)
class DriftSnapshot:
    rows: int
    inputs: list[TensorDrift]
    outputs: list[TensorDrift]

    @property
    def overall_psi(self) -> float:
        """Mean PSI over every input feature (what the drift alert watches)."""
        feats = [p for t in self.inputs for p in t.feature_psi]
        return float(np.mean(feats)) if feats else 0.0


class DriftMonitor:
    """Sliding-window drift of one loaded version against its reference profile."""

    def __init__(self, inputs: list[_Tensor], outputs: list[_Tensor], window: int = DEFAULT_WINDOW) -> None:
        self._inputs = {t.name: _Window(t, window) for t in inputs}
        self._outputs = {t.name: _Window(t, window) for t in outputs}
        self.window = window
        self._lock = threading.Lock()
        self._pending: deque[tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]] = deque()
        self._pending_rows = 0

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Queue one answered request (arrays are not modified after inference).

        Nothing is binned here: only the last ``window`` rows can be in the window, so
        older queued requests are dropped unbinned, and the scrape bins the rest. A
        request never pays for the statistics, whatever the traffic between scrapes.
        """
        rows = next(iter(feeds.values())).shape[0] if feeds else 0
        rows = max(rows, 1)
        with self._lock:
            self._pending.append((feeds, outputs, rows))
            self._pending_rows += rows
            while self._pending_rows - self._pending[0][2] >= self.window:
                self._pending_rows -= self._pending.popleft()[2]

    def _fold(self) -> None:
        pending, self._pending, self._pending_rows = self._pending, deque(), 0
        if not pending:
            return
        for windows, which in ((self._inputs, 0), (self._outputs, 1)):
            for name, win in windows.items():
                width = win.tensor.features
                # A row of another width (a dynamic dimension the profile did not see) is
                # left out: it cannot be binned, and it must never fail the request.
                parts = [
                    a.reshape(a.shape[0] if a.ndim else 1, -1)
                    for a in (np.asarray(p[which][name]) for p in pending if name in p[which])
                    if a.size and a.size == (a.shape[0] if a.ndim else 1) * width
                ]
                if parts:
                    win.add(np.concatenate(parts).astype(np.float64, copy=False))

    def snapshot(self) -> DriftSnapshot:
        with self._lock:
            self._fold()

            def describe(windows: dict[str, _Window], with_range: bool) -> list[TensorDrift]:
                out = []
                for name, win in windows.items():
                    fpsi = win.feature_psi()
                    ratio = win.out_of_range_ratio() if with_range and win.tensor.classes is None else None
                    out.append(TensorDrift(name, float(fpsi.mean()), [float(v) for v in fpsi], ratio))
                return out

            rows = min((w.filled for w in self._inputs.values()), default=0)
            return DriftSnapshot(rows, describe(self._inputs, True), describe(self._outputs, False))
