"""Serve edgeml-server's request handler (the very same ``Service``) on a chosen HTTP stack.

Used by server_bench.py to compare HTTP stacks: everything but the transport is
identical, so the differences are the stack's own cost.

    python bench/stack_server.py --stack uvicorn-httptools-uvloop --bundles DIR --port 9000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import uvicorn
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from edgeml_server.app import PublicASGI, Service
from edgeml_server.bundle import load_bundle
from edgeml_server.metrics import Metrics
from edgeml_server.swap import ModelManager

STACKS = ("uvicorn-httptools-uvloop", "uvicorn-h11-asyncio", "aiohttp-uvloop", "stdlib-threading")


def build(bundles: Path, model: str, version: str) -> Service:
    manager: ModelManager | None = None
    metrics = Metrics(model, lambda: manager.current if manager else None)
    manager = ModelManager(bundles, model, version, 1, metrics)
    manager._install(load_bundle(bundles, model, version))
    return Service(manager, metrics, 8 * 1024 * 1024)


def run_uvicorn(service: Service, port: int, http: str, loop: str) -> None:
    uvicorn.run(
        PublicASGI(service),
        host="127.0.0.1",
        port=port,
        http=http,
        loop=loop,
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        date_header=False,
    )


def run_aiohttp(service: Service, port: int) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        body = await request.read()
        status, out, ctype, extra = service.handle(
            request.method, request.path, request.headers.get("Inference-Header-Content-Length"), body
        )
        return web.Response(status=status, body=out, content_type=ctype.split(";")[0], headers=dict(extra))

    async def main() -> None:
        server = web.Server(handler, access_log=None)
        runner = web.ServerRunner(server, handle_signals=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    uvloop.run(main())


def run_stdlib(service: Service, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the other stacks
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle plus the
        # client's delayed ACK adds ~40 ms to every response.
        disable_nagle_algorithm = True

        def _do(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n) if n else b""
            status, out, ctype, extra = service.handle(
                self.command,
                self.path.split("?", 1)[0],
                self.headers.get("Inference-Header-Content-Length"),
                body,
            )
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(out)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(out)

        do_GET = do_POST = _do

        def log_message(self, *args: object) -> None:  # silence per-request logging
            pass

    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stack", choices=STACKS, required=True)
    p.add_argument("--bundles", type=Path, required=True)
    p.add_argument("--model", default="digits")
    p.add_argument("--version", default="1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    service = build(a.bundles, a.model, a.version)
    if a.stack == "uvicorn-httptools-uvloop":
        run_uvicorn(service, a.port, "httptools", "uvloop")
    elif a.stack == "uvicorn-h11-asyncio":
        run_uvicorn(service, a.port, "h11", "asyncio")
    elif a.stack == "aiohttp-uvloop":
        run_aiohttp(service, a.port)
    else:
        run_stdlib(service, a.port)


if __name__ == "__main__":
    main()
