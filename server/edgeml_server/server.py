"""Process wiring: two uvicorn listeners on one event loop, signals, initial load.

By default the public listener opens first so liveness answers while the model loads;
readiness turns true only when the initial load's self-test has passed. With
``--bind-when-ready`` the admin listener opens at once and the public one only once the
model is ready, so with ``--reuse-port`` a second instance on the same port takes public
traffic only when it can answer it (blue/green on one host).

SIGTERM drains: the public listener closes first (new connections go to the other
instance sharing the port), in-flight requests finish and every response carries
"Connection: close" for up to ``--drain-seconds``; then the admin listener stops and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
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


def _config(app: object, host: str, port: int, limit: int, drain: float = 10.0) -> uvicorn.Config:
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
        timeout_graceful_shutdown=max(drain, 0.1),
        h11_max_incomplete_event_size=limit,
    )


def _reuse_port_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket with SO_REUSEADDR and SO_REUSEPORT."""
    family, kind, proto, _unused1, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(addr)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


async def _wait_started(server: _Server, task: asyncio.Future[object]) -> bool:
    while not server.started:
        if task.done():
            return False
        await asyncio.sleep(0.01)
    return True


async def _drain(server: _Server, app: PublicASGI, limit: float) -> None:
    """Close the public listener, let in-flight requests finish (bounded), then stop it."""
    app.draining = True
    for srv in getattr(server, "servers", []):
        srv.close()  # stop accepting; open connections stay
    started = time.monotonic()
    grace = min(1.0, limit)  # time for busy keep-alive clients to get their "Connection: close"
    state = server.server_state
    while time.monotonic() - started < limit:
        if not state.connections:
            break
        if time.monotonic() - started >= grace and not state.tasks:
            break  # only idle keep-alive connections remain
        await asyncio.sleep(0.01)
    log.info(
        "public listener drained",
        extra={
            "fields": {
                "seconds": round(time.monotonic() - started, 3),
                "open_connections": len(state.connections),
                "in_flight": len(state.tasks),
            }
        },
    )
    server.config.timeout_graceful_shutdown = max(0.1, limit - (time.monotonic() - started))
    server.should_exit = True


async def serve(settings: Settings) -> int:  # noqa: PLR0912, PLR0915 - the process life cycle, in order
    manager: ModelManager | None = None

    def current():  # late-bound: the collector needs the manager created below
        return manager.current if manager else None

    metrics = Metrics(settings.model, current)
    manager = ModelManager(
        settings.bundles, settings.model, settings.version, settings.intra_op_threads, metrics
    )
    service = Service(manager, metrics, settings.max_body_bytes)
    drain = settings.drain_seconds

    public_app = PublicASGI(service)
    public = _Server(_config(public_app, settings.host, settings.port, 64 * 1024, drain))
    admin: _Server | None = None
    if settings.admin_port:
        # The admin listener swaps models: loopback only, never configurable. It also
        # serves the public read/infer API for this one instance.
        admin = _Server(
            _config(
                AdminASGI(manager, PublicASGI(service)), "127.0.0.1", settings.admin_port, 64 * 1024, drain
            )
        )

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[object]] = set()
    stopping = asyncio.Event()

    def stop(signame: str) -> None:
        log.info("stopping", extra={"fields": {"signal": signame}})
        stopping.set()

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
                "reuse_port": settings.reuse_port,
                "bind_when_ready": settings.bind_when_ready,
                "pid": os.getpid(),
            }
        },
    )

    def start_load() -> None:
        load = loop.create_task(manager.initial_load())
        tasks.add(load)
        load.add_done_callback(tasks.discard)

    running: list[asyncio.Future[object]] = []
    public_task: asyncio.Future[object] | None = None

    async def open_public() -> bool:
        nonlocal public_task
        sockets = None
        if settings.reuse_port:
            try:
                sockets = [_reuse_port_socket(settings.host, settings.port)]
            except OSError as exc:
                log.error(
                    "cannot bind the public port",
                    extra={"fields": {"host": settings.host, "port": settings.port, "error": str(exc)}},
                )
                return False
        public_task = asyncio.ensure_future(public.serve(sockets=sockets))
        running.append(public_task)
        if not await _wait_started(public, public_task):
            return False
        log.info(
            "public listener open",
            extra={
                "fields": {"host": settings.host, "port": settings.port, "reuse_port": settings.reuse_port}
            },
        )
        return True

    ok = True
    if admin is not None:
        admin_task = asyncio.ensure_future(admin.serve())
        running.append(admin_task)
        ok = await _wait_started(admin, admin_task)
    if ok and not settings.bind_when_ready:
        ok = await open_public()
        if ok:  # load only once the listeners are up, so /v2/health/live answers at once
            start_load()
    elif ok:
        start_load()
        # Never before the self-test passed; also after a later successful swap (SIGHUP or
        # admin load), which is how a live-but-not-ready instance is repaired in place.
        while manager.current is None and not stopping.is_set():
            if any(t.done() for t in running):
                ok = False
                break
            await asyncio.sleep(0.02)
        if ok and not stopping.is_set():
            ok = await open_public()
    if not ok:
        exit_code = 1
        stopping.set()
    else:
        exit_code = 0
        waiter = asyncio.ensure_future(stopping.wait())
        await asyncio.wait([waiter, *running], return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    if public_task is not None and public.started:
        await _drain(public, public_app, drain)
    else:
        public.should_exit = True
    if public_task is not None:
        await asyncio.gather(public_task, return_exceptions=True)
    if admin is not None:
        admin.should_exit = True
    results = await asyncio.gather(*running, return_exceptions=True)
    for r in results:
        if isinstance(r, SystemExit):
            return r.code if isinstance(r.code, int) else 1
        if isinstance(r, BaseException):
            log.error("listener crashed", extra={"fields": {"error": repr(r)}})
            return 1
    return exit_code


def run(settings: Settings) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, probed at run time
    except ImportError:  # pure-asyncio fallback keeps the server usable without it
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
