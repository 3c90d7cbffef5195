"""Which version is served, and swapping it in place.

A swap is: load the new bundle (sha256, manifest, self-test) in a worker thread while
the old version keeps serving; then switch ``current`` with one attribute assignment
(atomic under the GIL); then retire the old version, which drops its onnxruntime
session once the requests that already hold it have finished. A failed load never
touches ``current``.

Staging splits a swap in two so that a version is judged before public traffic reaches
it: ``stage`` loads a CANDIDATE beside ``current`` (only the admin listener can address
it, by its version); ``promote`` makes it current and keeps the previous version loaded
as STANDBY; ``revert`` switches back to the standby at once (nothing to load) and
``commit`` releases it. Promote, revert, commit and unstage never load anything and never
wait for the lock, so a revert is instant even while another load runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from .bundle import BundleError, LoadedModel, load_bundle, read_pointer, valid_version
from .drift import DEFAULT_WINDOW
from .metrics import Metrics
from .signing import SignaturePolicy

log = logging.getLogger("edgeml_server.swap")


def _load_failure(exc: Exception) -> tuple[str, int]:
    """Why a load (swap or stage) failed, and its HTTP status: 404 for a version that does
    not exist, 422 for one that failed its checks; a loader bug is an internal error."""
    reason = str(exc) if isinstance(exc, BundleError) else f"internal error: {exc!r}"
    return reason, 404 if "does not exist" in reason else 422


class ModelManager:
    def __init__(  # noqa: PLR0917 - built in one place (server.py), from the settings
        self,
        root: Path,
        name: str,
        version: str | None,
        intra_op_threads: int,
        metrics: Metrics,
        drift_window: int = DEFAULT_WINDOW,
        signatures: SignaturePolicy | None = None,
    ) -> None:
        self.root = root
        self.name = name
        self.initial_version = version
        self.intra_op_threads = intra_op_threads
        self.drift_window = drift_window
        self.signatures = signatures or SignaturePolicy()
        self.metrics = metrics
        self.current: LoadedModel | None = None
        # Why the model is not ready; None once something serves.
        self.not_ready_reason: str | None = "loading: self-test has not passed yet"
        self.last_swap: dict[str, Any] | None = None
        self.swap_counts = {"success": 0, "failure": 0}
        self._draining: set[LoadedModel] = set()
        # Staged deployment: loaded beside current, reachable only on the admin listener.
        self.candidate: LoadedModel | None = None
        self.standby: LoadedModel | None = None
        self.last_stage: dict[str, Any] | None = None
        # Public listener state, written by the process wiring (server.py) for status().
        self.public_state = "held"
        # Serialises the initial load and every swap (asyncio.Lock binds its loop lazily).
        self._lock = asyncio.Lock()

    # --- request side (any thread) --------------------------------------------
    def acquire(self) -> LoadedModel | None:
        """Return the serving model with an in-flight reference held, or None."""
        for _unused1 in range(8):
            m = self.current
            if m is None:
                return None
            if m.try_acquire():
                return m
            # Lost a race with a swap that already unloaded m: current is newer now.
        return None

    def staged(self, version: str) -> LoadedModel | None:
        """The candidate or standby of VERSION, if one is loaded (admin listener only)."""
        for m in (self.candidate, self.standby):
            if m is not None and m.version == version:
                return m
        return None

    def acquire_staged(self, version: str) -> LoadedModel | None:
        """Like acquire(), for the candidate or standby of VERSION; None if there is none."""
        m = self.staged(version)
        if m is not None and m.try_acquire():
            return m
        return None

    # --- loading ----------------------------------------------------------------
    def _on_unload(self, model: LoadedModel) -> None:
        self._draining.discard(model)
        self.metrics.inflight_old.labels(self.name).set(len(self._draining))
        log.info("unloaded old version", extra={"fields": {"model": self.name, "version": model.version}})

    def _retire(self, model: LoadedModel) -> None:
        """Release MODEL's session once the requests holding it are done (counted as draining)."""
        self._draining.add(model)
        self.metrics.inflight_old.labels(self.name).set(len(self._draining))
        model.retire()

    def _switch(self, new: LoadedModel) -> LoadedModel | None:
        """Make NEW current (the atomic switch) without retiring the old one; return the old one."""
        old = self.current
        self.current = new
        self.not_ready_reason = None
        self.metrics.set_serving(new)
        return old

    def _load(self, version: str) -> LoadedModel:
        return load_bundle(self.root, self.name, version, self.intra_op_threads, self.drift_window, self.signatures)

    def _install(self, new: LoadedModel) -> LoadedModel | None:
        new.on_unload = self._on_unload
        old = self._switch(new)
        if old is not None:
            self._retire(old)
        return old

    def _end_staged_deployment(self, why: str) -> None:
        """Drop the candidate and retire the standby: a plain swap supersedes both."""
        dropped = [m for m in (self.candidate, self.standby) if m is not None]
        self.candidate = self.standby = None
        for m in dropped:
            self._retire(m)
        if dropped:
            log.info(
                "staged deployment ended",
                extra={"fields": {"model": self.name, "why": why, "released": [m.version for m in dropped]}},
            )

    async def initial_load(self) -> None:
        async with self._lock:
            # A SIGHUP that arrived first has already loaded what the pointer names.
            if self.current is None:
                await self._initial_load()

    async def _initial_load(self) -> None:
        try:
            version = self.initial_version or read_pointer(self.root, self.name)
            model = await asyncio.to_thread(self._load, version)
        except BundleError as exc:
            self.not_ready_reason = f"initial load failed: {exc}"
            log.error(
                "initial load failed; live but NOT ready",
                extra={"fields": {"model": self.name, "reason": str(exc)}},
            )
            return
        except Exception as exc:  # never let a loader bug kill the process
            self.not_ready_reason = f"initial load failed: internal error: {exc!r}"
            log.exception("initial load crashed", extra={"fields": {"model": self.name}})
            return
        self._install(model)
        log.info(
            "model ready",
            extra={
                "fields": {
                    "model": self.name,
                    "version": model.version,
                    "sha256": model.sha256,
                    "signed_by": model.signed_by,
                    "load_seconds": round(model.load_seconds, 4),
                }
            },
        )

    async def swap(self, version: str | None, trigger: str) -> tuple[int, dict[str, Any]]:
        """Swap to VERSION (None = read the pointer file). Return (http_status, body)."""
        async with self._lock:  # one swap at a time; later triggers queue up
            started = time.time()
            previous = self.current.version if self.current else None
            try:
                if version is None:
                    version = read_pointer(self.root, self.name)
                elif not valid_version(version):
                    raise BundleError(f"invalid version {version!r}")
                if self.current is not None and self.current.version == version:
                    log.info(
                        "swap requested to the version already served; nothing to do",
                        extra={"fields": {"model": self.name, "version": version, "trigger": trigger}},
                    )
                    return 200, {"model": self.name, "version": version, "status": "unchanged"}
                log.info(
                    "swap started",
                    extra={
                        "fields": {"model": self.name, "from": previous, "to": version, "trigger": trigger}
                    },
                )
                new = await asyncio.to_thread(self._load, version)
            except Exception as exc:
                reason, status = _load_failure(exc)
                self.last_swap = {
                    "trigger": trigger,
                    "requested_version": version,
                    "previous_version": previous,
                    "result": "failure",
                    "reason": reason,
                    "time": started,
                }
                self.swap_counts["failure"] += 1
                self.metrics.swap_result(False, started)
                log.error(
                    "swap failed; still serving the previous version",
                    extra={
                        "fields": {
                            "model": self.name,
                            "requested_version": version,
                            "serving_version": previous,
                            "trigger": trigger,
                            "reason": reason,
                        }
                    },
                )
                return status, {
                    "error": f"swap to version {version!r} failed: {reason}",
                    "serving_version": previous,
                }
            replaced = self._install(new)
            previous = replaced.version if replaced else None
            self._end_staged_deployment(f"swap ({trigger}) to {version}")
            self.last_swap = {
                "trigger": trigger,
                "requested_version": version,
                "previous_version": previous,
                "result": "success",
                "reason": None,
                "time": started,
            }
            self.swap_counts["success"] += 1
            self.metrics.swap_result(True, started)
            log.info(
                "swap done; now serving",
                extra={
                    "fields": {
                        "model": self.name,
                        "version": version,
                        "previous_version": previous,
                        "sha256": new.sha256,
                        "signed_by": new.signed_by,
                        "trigger": trigger,
                        "load_seconds": round(new.load_seconds, 4),
                    }
                },
            )
            return 200, {
                "model": self.name,
                "version": version,
                "previous_version": previous,
                "status": "swapped",
            }

    # --- staged deployment -----------------------------------------------------------
    async def stage(self, version: str) -> tuple[int, dict[str, Any]]:
        """Load VERSION as the candidate; current is never touched. Return (http_status, body)."""
        async with self._lock:  # loads are serialised with swaps
            if not valid_version(version):
                return self._stage_failed(version, f"invalid version {version!r}", 422)
            if self._serves(version):
                return self._stage_conflict(version)
            log.info("stage started", extra={"fields": {"model": self.name, "version": version}})
            try:
                new = await asyncio.to_thread(self._load, version)
            except Exception as exc:
                return self._stage_failed(version, *_load_failure(exc))
            new.on_unload = self._on_unload
            if self._serves(version):  # a revert during the load restored this very version
                self._retire(new)
                return self._stage_conflict(version)
            if self.candidate is not None:
                self._retire(self.candidate)
            self.candidate = new
            self.last_stage = {"requested_version": version, "result": "success", "reason": None, "time": time.time()}
            log.info(
                "staged; public traffic still goes to the serving version",
                extra={
                    "fields": {
                        "model": self.name,
                        "version": version,
                        "serving_version": self._serving_version(),
                        "sha256": new.sha256,
                        "signed_by": new.signed_by,
                        "load_seconds": round(new.load_seconds, 4),
                    }
                },
            )
            return 200, {"model": self.name, "version": version, "status": "staged"}

    def _serves(self, version: str) -> bool:
        return self.current is not None and self.current.version == version

    def _serving_version(self) -> str | None:
        return self.current.version if self.current else None

    def _stage_conflict(self, version: str) -> tuple[int, dict[str, Any]]:
        return 409, {
            "error": f"version {version!r} is already served; stage a different version",
            "serving_version": version,
        }

    def _stage_failed(self, version: str, reason: str, status: int) -> tuple[int, dict[str, Any]]:
        self.last_stage = {"requested_version": version, "result": "failure", "reason": reason, "time": time.time()}
        log.error(
            "stage failed; nothing changed",
            extra={
                "fields": {
                    "model": self.name,
                    "requested_version": version,
                    "serving_version": self._serving_version(),
                    "reason": reason,
                }
            },
        )
        return status, {
            "error": f"staging version {version!r} failed: {reason}",
            "serving_version": self._serving_version(),
        }

    def promote(self, version: str) -> tuple[int, dict[str, Any]]:
        """Make the candidate VERSION current; keep the previous current loaded as standby."""
        cand = self.candidate
        if cand is None or cand.version != version:
            staged = repr(cand.version) if cand else "nothing"
            return 409, {
                "error": f"version {version!r} is not the staged candidate ({staged} is staged)",
                "candidate_version": cand.version if cand else None,
                "serving_version": self._serving_version(),
            }
        previous = self._switch(cand)  # the atomic switch: public requests now get the candidate
        self.candidate = None
        if self.standby is not None:  # only one step back is kept
            self._retire(self.standby)
        self.standby = previous
        prev_version = previous.version if previous else None
        log.info(
            "promoted; previous version kept as standby",
            extra={"fields": {"model": self.name, "version": version, "standby_version": prev_version}},
        )
        return 200, {"model": self.name, "version": version, "previous_version": prev_version, "status": "promoted"}

    def revert(self) -> tuple[int, dict[str, Any]]:
        """Switch back to the standby (no loading) and retire the version reverted from."""
        standby = self.standby
        if standby is None:
            return 409, {
                "error": "nothing to revert to: no standby version (promote first)",
                "serving_version": self._serving_version(),
            }
        reverted = self._switch(standby)
        self.standby = None
        if reverted is not None:
            self._retire(reverted)
        reverted_version = reverted.version if reverted else None
        log.info(
            "reverted to the standby version",
            extra={"fields": {"model": self.name, "version": standby.version, "reverted_version": reverted_version}},
        )
        return 200, {
            "model": self.name,
            "version": standby.version,
            "reverted_version": reverted_version,
            "status": "reverted",
        }

    def commit(self) -> tuple[int, dict[str, Any]]:
        """Release the standby: the promoted version stays, with no way back but a new load."""
        standby = self.standby
        body: dict[str, Any] = {"model": self.name, "version": self._serving_version()}
        if standby is None:
            return 200, {**body, "status": "nothing to commit"}
        self.standby = None
        self._retire(standby)
        log.info(
            "committed; standby released",
            extra={"fields": {"model": self.name, "version": body["version"], "released_version": standby.version}},
        )
        return 200, {**body, "released_version": standby.version, "status": "committed"}

    def unstage(self) -> tuple[int, dict[str, Any]]:
        """Drop the candidate, if any."""
        cand = self.candidate
        if cand is None:
            return 200, {"model": self.name, "version": None, "status": "nothing staged"}
        self.candidate = None
        self._retire(cand)
        log.info("unstaged", extra={"fields": {"model": self.name, "version": cand.version}})
        return 200, {"model": self.name, "version": cand.version, "status": "unstaged"}

    def status(self) -> dict[str, Any]:
        cur = self.current
        return {
            "model": self.name,
            "ready": cur is not None,
            "serving_version": cur.version if cur else None,
            "sha256": cur.sha256 if cur else None,
            "loaded_at": cur.loaded_at if cur else None,
            "error": self.not_ready_reason,
            "last_swap": self.last_swap,
            "swaps": dict(self.swap_counts),
            "draining_versions": sorted(m.version for m in self._draining),
            "candidate_version": self.candidate.version if self.candidate else None,
            "standby_version": self.standby.version if self.standby else None,
            "last_stage": self.last_stage,
            "public": self.public_state,
        }
