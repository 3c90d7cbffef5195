"""Process wiring: two uvicorn listeners on one event loop, signals, initial load.

By default the public listener opens first so liveness answers while the model loads;
readiness turns true only when the initial load's self-test has passed. With
``--bind-when-ready`` the admin listener opens at once and the public one only once the
model is ready, so with ``--reuse-port`` a second instance on the same port takes public
traffic only when it can answer it (blue/green on one host).

With ``--public-hold`` the public listener opens only on ``POST /admin/public/open`` (admin
listener), so a deployer judges a new instance before any public traffic reaches it;
``POST /admin/public/close`` closes it again (draining, as below) while the process,
its admin listener and its model stay up. Each opening is a fresh uvicorn server.

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
from dataclasses import dataclass, field
from typing import Any

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


class ListenerStartError(Exception):
    """The public listener could not start (uvicorn logged why)."""


async def _serve(server: _Server, sockets: list[socket.socket] | None) -> None:
    try:
        await server.serve(sockets=sockets)
    except SystemExit as exc:
        # uvicorn exits this way when it cannot bind; inside a task a SystemExit would end
        # the whole event loop, which an admin "open" must not do.
        raise ListenerStartError(f"the public listener stopped at start (exit code {exc.code})") from None


async def _wait_started(server: _Server, task: asyncio.Future[Any]) -> bool:
    while not server.started:
        if task.done():
            return False
        await asyncio.sleep(0.01)
    return True


def _stop_accepting(server: _Server, app: PublicASGI) -> None:
    """Close the listening sockets at once; open connections stay, told to close."""
    app.draining = True  # every later response carries "Connection: close"
    for srv in getattr(server, "servers", []):
        srv.close()


async def _drain_connections(server: _Server, limit: float) -> None:
    """Let in-flight requests finish (bounded by LIMIT), then stop SERVER."""
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


@dataclass
class _Opening:
    """One opening of the public listener: its own uvicorn server and app."""

    server: _Server
    app: PublicASGI
    task: asyncio.Future[Any] | None = None
    closing: bool = False  # set when we close it: its end is then not a crash


@dataclass
class PublicListener:
    """The public listener, opened and closed on demand (admin API, start-up, SIGTERM).

    States: "held" (not opened yet), "open", "closed" (closed on request or at stop).
    open() returns once the listener accepts; close() once it no longer accepts, its
    drain going on in the background. A listener that ends without being closed sets
    ``crashed``, which stops the process.
    """

    settings: Settings
    service: Service
    manager: ModelManager
    state: str = "held"
    crashed: asyncio.Event = field(default_factory=asyncio.Event)
    crash_reason: str = ""
    _current: _Opening | None = None
    _drains: set[asyncio.Task[None]] = field(default_factory=set)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _stopping: bool = False

    def _set_state(self, state: str) -> None:
        self.state = state
        self.manager.public_state = state

    def describe(self) -> dict[str, Any]:
        return {
            "public": self.state,
            "host": self.settings.host,
            "port": self.settings.port,
            "reuse_port": self.settings.reuse_port,
            "draining_listeners": len(self._drains),
        }

    async def open(self) -> tuple[int, dict[str, Any]]:
        """Admin open: only with a model ready to answer; idempotent."""
        async with self._lock:
            if self._current is not None:
                return 200, self.describe()
            if self._stopping:
                return 503, {**self.describe(), "error": "the server is stopping"}
            if self.manager.current is None:
                return 409, {
                    **self.describe(),
                    "error": f"no model is ready, refusing to open the public listener: "
                    f"{self.manager.not_ready_reason}",
                }
            error = await self._start()
        if error is not None:
            return 500, {**self.describe(), "error": f"cannot open the public listener: {error}"}
        return 200, self.describe()

    async def start(self) -> str | None:
        """Open whatever the model's state (start-up); None when open, else why not."""
        async with self._lock:
            if self._current is not None:
                return None
            return await self._start()

    async def _start(self) -> str | None:
        settings = self.settings
        sockets = None
        if settings.reuse_port:
            try:
                sockets = [_reuse_port_socket(settings.host, settings.port)]
            except OSError as exc:
                log.error(
                    "cannot bind the public port",
                    extra={"fields": {"host": settings.host, "port": settings.port, "error": str(exc)}},
                )
                return str(exc)
        # A fresh app per opening: the previous one may still be draining ("Connection: close").
        app = PublicASGI(self.service)
        opening = _Opening(_Server(_config(app, settings.host, settings.port, 64 * 1024, settings.drain_seconds)), app)
        task = opening.task = asyncio.ensure_future(_serve(opening.server, sockets))
        if not await _wait_started(opening.server, task):
            exc = task.exception()
            for sock in sockets or []:
                sock.close()
            reason = str(exc) if exc else "the public listener stopped at start"
            log.error("cannot open the public listener", extra={"fields": {"port": settings.port, "error": reason}})
            return reason
        task.add_done_callback(lambda t: self._ended(opening, t))
        self._current = opening
        self._set_state("open")
        log.info(
            "public listener open",
            extra={"fields": {"host": settings.host, "port": settings.port, "reuse_port": settings.reuse_port}},
        )
        return None

    def _ended(self, opening: _Opening, task: asyncio.Future[Any]) -> None:
        if opening.closing:
            return
        exc = None if task.cancelled() else task.exception()
        self.crash_reason = repr(exc) if exc else "the public listener stopped unexpectedly"
        if self._current is opening:
            self._current = None
            self._set_state("closed")
        self.crashed.set()

    async def close(self) -> tuple[int, dict[str, Any]]:
        """Stop accepting now, drain in the background; idempotent."""
        async with self._lock:
            self._close()
        return 200, self.describe()

    def _close(self) -> None:
        opening = self._current
        if opening is None:
            if self.state == "held":
                self._set_state("closed")  # a deliberate close also cancels any automatic opening
            return
        self._current = None
        opening.closing = True
        _stop_accepting(opening.server, opening.app)
        self._set_state("closed")
        log.info("public listener closed", extra={"fields": {"port": self.settings.port}})
        drain = asyncio.ensure_future(self._drain(opening))
        self._drains.add(drain)
        drain.add_done_callback(self._drains.discard)

    async def _drain(self, opening: _Opening) -> None:
        await _drain_connections(opening.server, self.settings.drain_seconds)
        if opening.task is not None:
            await asyncio.gather(opening.task, return_exceptions=True)

    async def stop(self) -> None:
        """At process stop: close what is open and wait for every drain to finish."""
        async with self._lock:
            self._stopping = True
            self._close()
        await asyncio.gather(*list(self._drains), return_exceptions=True)


async def serve(settings: Settings) -> int:
    manager: ModelManager | None = None

    def current():  # late-bound: the collector needs the manager created below
        return manager.current if manager else None

    metrics = Metrics(settings.model, current)
    manager = ModelManager(
        settings.bundles,
        settings.model,
        settings.version,
        settings.intra_op_threads,
        metrics,
        settings.drift_window,
        settings.signatures,
    )
    listener = PublicListener(settings, Service(manager, metrics, settings.max_body_bytes), manager)
    admin = _admin_server(settings, manager, metrics, listener)

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()
    stopping = asyncio.Event()

    def stop(signame: str) -> None:
        log.info("stopping", extra={"fields": {"signal": signame}})
        stopping.set()

    def background(coro: Any) -> None:
        t = loop.create_task(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    def hup() -> None:
        log.info("SIGHUP: re-reading the pointer file", extra={"fields": {"model": settings.model}})
        background(manager.swap(None, "sighup"))

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
                "public_hold": settings.public_hold,
                "signature_policy": settings.signatures.policy,
                "trusted_keys": str(settings.signatures.trusted_keys),
                "pid": os.getpid(),
            }
        },
    )

    admin_task: asyncio.Future[Any] | None = None
    ok = True
    if admin is not None:
        admin_task = asyncio.ensure_future(admin.serve())
        ok = await _wait_started(admin, admin_task)
    if ok:
        ok = await _open_at_start(
            settings, manager, listener, stopping=stopping, admin_task=admin_task, background=background
        )

    exit_code = await _run_until_stopped(stopping, listener, admin_task) if ok else 1
    await listener.stop()
    if admin is not None and admin_task is not None:
        admin.should_exit = True
        result = (await asyncio.gather(admin_task, return_exceptions=True))[0]
        if isinstance(result, SystemExit):
            return result.code if isinstance(result.code, int) else 1
        if isinstance(result, BaseException):
            log.error("listener crashed", extra={"fields": {"error": repr(result)}})
            return 1
    return exit_code


def _admin_server(
    settings: Settings, manager: ModelManager, metrics: Metrics, listener: PublicListener
) -> _Server | None:
    if not settings.admin_port:
        return None
    # The admin listener swaps models: loopback only, never configurable. It also serves
    # the public read/infer API for this one instance and, there only, the staged
    # candidate and the standby by their versions.
    service = Service(manager, metrics, settings.max_body_bytes, staged_versions=True, live_traffic=False)
    app = AdminASGI(manager, PublicASGI(service, offload=True), listener)
    return _Server(_config(app, "127.0.0.1", settings.admin_port, 64 * 1024, settings.drain_seconds))


async def _run_until_stopped(
    stopping: asyncio.Event, listener: PublicListener, admin_task: asyncio.Future[Any] | None
) -> int:
    """Wait for SIGTERM/SIGINT (0) or a listener that ended on its own (1).

    A public listener closed through the admin API is no reason to stop: the process
    stays up to open it again.
    """
    waiter = asyncio.ensure_future(stopping.wait())
    crash = asyncio.ensure_future(listener.crashed.wait())
    watched = [waiter, crash, *([admin_task] if admin_task else [])]
    await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    crash.cancel()
    if listener.crashed.is_set():
        log.error("listener crashed", extra={"fields": {"error": listener.crash_reason}})
        return 1
    return 0


async def _open_at_start(
    settings: Settings,
    manager: ModelManager,
    listener: PublicListener,
    *,
    stopping: asyncio.Event,
    admin_task: asyncio.Future[Any] | None,
    background: Any,
) -> bool:
    """Open the public listener as the flags say, start the initial load; False on failure."""
    if settings.public_hold:
        background(manager.initial_load())  # the admin API opens the public listener, later
        return True
    if not settings.bind_when_ready:
        if await listener.start() is not None:
            return False
        # Load only once the listeners are up, so /v2/health/live answers at once.
        background(manager.initial_load())
        return True
    background(manager.initial_load())
    # Never before the self-test passed; also after a later successful swap (SIGHUP or
    # admin load), which is how a live-but-not-ready instance is repaired in place.
    while manager.current is None and not stopping.is_set():
        if admin_task is not None and admin_task.done():
            return False
        await asyncio.sleep(0.02)
    if stopping.is_set() or listener.state != "held":
        return True  # stopping, or the admin API already opened or closed it
    return await listener.start() is None


def run(settings: Settings) -> int:
    try:
        import uvloop  # noqa: PLC0415 - optional speed-up, probed at run time
    except ImportError:  # pure-asyncio fallback keeps the server usable without it
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))
