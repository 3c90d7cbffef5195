"""Process wiring: two uvicorn listeners on one event loop, signals, initial load.

The public listener opens first so liveness answers while the model loads;
readiness turns true only when the initial load's self-test has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator

import uvicorn

from .app import AdminASGI, PublicASGI, Service
from .cli import Settings
from .metrics import Metrics
from .swap import ModelManager

log = logging.getLogger("edgeml_server")


class _Server(uvicorn.Server):
    # uvicorn installs its own SIGINT/SIGTERM handlers per server and restores them
    # on exit; with two servers on one loop plus SIGHUP we own the signals instead.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: object, host: str, port: int, limit: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http="auto",  # httptools when installed (it is, per requirements.txt), else h11
        loop="none",  # we create the loop ourselves (uvloop when installed)
        lifespan="off",
        access_log=False,  # per-request logs cost more than the inference
        log_config=None,
        server_header=False,
        date_header=False,
        timeout_graceful_shutdown=10,
        h11_max_incomplete_event_size=limit,
    )


async def serve(settings: Settings) -> int:
    manager: ModelManager | None = None

    def current():  # late-bound: the collector needs the manager created below
        return manager.current if manager else None

    metrics = Metrics(settings.model, current)
    manager = ModelManager(
        settings.bundles, settings.model, settings.version, settings.intra_op_threads, metrics
    )
    service = Service(manager, metrics, settings.max_body_bytes)

    servers = [_Server(_config(PublicASGI(service), settings.host, settings.port, 64 * 1024))]
    if settings.admin_port:
        # The admin listener swaps models: loopback only, never configurable.
        servers.append(_Server(_config(AdminASGI(manager), "127.0.0.1", settings.admin_port, 64 * 1024)))

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()

    def stop(signame: str) -> None:
        log.info("stopping", extra={"fields": {"signal": signame}})
        for s in servers:
            s.should_exit = True

    def hup() -> None:
        log.info("SIGHUP: re-reading the pointer file", extra={"fields": {"model": settings.model}})
        t = loop.create_task(manager.swap(None, "sighup"))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, stop, "SIGTERM")
    loop.add_signal_handler(signal.SIGINT, stop, "SIGINT")
    loop.add_signal_handler(signal.SIGHUP, hup)

    log.info(
        "starting",
        extra={
            "fields": {
                "model": settings.model,
                "version": settings.version or "(pointer file)",
                "bundles": str(settings.bundles),
                "port": settings.port,
                "admin_port": settings.admin_port,
                "pid": os.getpid(),
            }
        },
    )
    run_tasks = [asyncio.ensure_future(s.serve()) for s in servers]
    # Start loading only once the listeners are up, so /v2/health/live answers at once.
    while not all(s.started for s in servers):
        if any(t.done() for t in run_tasks):
            break
        await asyncio.sleep(0.01)
    if all(s.started for s in servers):
        load = loop.create_task(manager.initial_load())
        tasks.add(load)
        load.add_done_callback(tasks.discard)
    else:
        for s in servers:  # one listener failed to bind: stop the other too
            s.should_exit = True
    results = await asyncio.gather(*run_tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, SystemExit):
            return r.code if isinstance(r.code, int) else 1
        if isinstance(r, BaseException):
            log.error("listener crashed", extra={"fields": {"error": repr(r)}})
            return 1
    return 0


def run(settings: Settings) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, probed at run time
    except ImportError:  # pure-asyncio fallback keeps the server usable without it
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
