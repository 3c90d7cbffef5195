"""Which version is served, and swapping it in place.

A swap is: load the new bundle (sha256, manifest, self-test) in a worker thread while
the old version keeps serving; then switch ``current`` with one attribute assignment
(atomic under the GIL); then retire the old version, which drops its onnxruntime
session once the requests that already hold it have finished. A failed load never
touches ``current``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

from .bundle import BundleError, LoadedModel, load_bundle, read_pointer, valid_version
from .metrics import Metrics

log = logging.getLogger("edgeml_server.swap")


class ModelManager:
    def __init__(
        self, root: Path, name: str, version: str | None, intra_op_threads: int, metrics: Metrics
    ) -> None:
        self.root = root
        self.name = name
        self.initial_version = version
        self.intra_op_threads = intra_op_threads
        self.metrics = metrics
        self.current: LoadedModel | None = None
        # Why the model is not ready; None once something serves.
        self.not_ready_reason: str | None = "loading: self-test has not passed yet"
        self.last_swap: dict[str, Any] | None = None
        self.swap_counts = {"success": 0, "failure": 0}
        self._draining: set[LoadedModel] = set()
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

    # --- loading ----------------------------------------------------------------
    def _on_unload(self, model: LoadedModel) -> None:
        self._draining.discard(model)
        self.metrics.inflight_old.labels(self.name).set(len(self._draining))
        log.info("unloaded old version", extra={"fields": {"model": self.name, "version": model.version}})

    def _load(self, version: str) -> LoadedModel:
        return load_bundle(self.root, self.name, version, self.intra_op_threads)

    def _install(self, new: LoadedModel) -> LoadedModel | None:
        new.on_unload = self._on_unload
        old = self.current
        self.current = new  # the atomic switch
        self.not_ready_reason = None
        self.metrics.set_serving(new)
        if old is not None:
            self._draining.add(old)
            self.metrics.inflight_old.labels(self.name).set(len(self._draining))
            old.retire()
        return old

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
                reason = str(exc) if isinstance(exc, BundleError) else f"internal error: {exc!r}"
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
                status = 404 if "does not exist" in reason else 422
                return status, {
                    "error": f"swap to version {version!r} failed: {reason}",
                    "serving_version": previous,
                }
            self._install(new)
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
        }
