"""Request routing and handling.

``Service.handle`` is transport-agnostic and synchronous: it takes a method, path,
the binary-header value and the body, and returns (status, body, extra headers).
The ASGI adapters below put it on uvicorn; bench/http_stacks.py puts the very same
function on other HTTP stacks so the stack comparison measures only the stack.

Inference runs inline on the event loop: for the small models this server is for
(tens of microseconds) a hop to a thread pool costs more than the inference.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from . import __version__
from .bundle import LoadedModel
from .codec import RequestError, decode_request, encode_response, split_body
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .probe import PROBE_REQUEST_ID
from .swap import ModelManager

log = logging.getLogger("edgeml_server.app")

JSON = "application/json"
Response = tuple[int, bytes, str, list[tuple[str, str]]]
UNKNOWN = "_unknown"


def _json(status: int, doc: Any, headers: list[tuple[str, str]] | None = None) -> Response:
    return status, json.dumps(doc, separators=(",", ":")).encode(), JSON, headers or []


class Service:
    """The Open Inference Protocol for one model.

    With ``staged_versions`` (the admin listener's instance only), a path naming a
    version (``/v2/models/NAME/versions/V/...``) reaches the staged candidate or the
    standby of that version, so a deployer can judge a version no public client sees.

    The input statistics and the drift window describe live traffic only: not the admin
    listener's (``live_traffic=False``: the deployment gates' smoke vectors and latency
    requests), nor a readiness probe's request (its id), wherever it arrives. A window
    that began with the gates' few repeated inputs would report drift after every deploy.
    """

    def __init__(
        self,
        manager: ModelManager,
        metrics: Metrics,
        max_body_bytes: int,
        *,
        staged_versions: bool = False,
        live_traffic: bool = True,
    ) -> None:
        self.manager = manager
        self.metrics = metrics
        self.name = manager.name
        self.max_body_bytes = max_body_bytes
        self.staged_versions = staged_versions
        self.live_traffic = live_traffic

    # --- helpers ------------------------------------------------------------------
    def error(
        self, status: int, kind: str, message: str, model: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        self.metrics.error(model, kind)
        return _json(status, {"error": message}, headers)

    def too_large(self, size: int | None) -> Response:
        what = f"{size} bytes" if size is not None else "the body"
        resp = self.error(
            413,
            "body_too_large",
            f"request body of {what} exceeds the limit of {self.max_body_bytes} bytes",
            UNKNOWN,
        )
        self.metrics.observe(UNKNOWN, "", "other", 413, 0.0)
        return resp

    def _not_ready(self) -> str:
        return f"model {self.name!r} is not ready: {self.manager.not_ready_reason}"

    # --- entry point ----------------------------------------------------------------
    def handle(self, method: str, path: str, header_len: str | None, body: bytes) -> Response:
        t0 = time.perf_counter()
        endpoint, model, version, resp = self._route(method, path, header_len, body)
        self.metrics.observe(model, version, endpoint, resp[0], time.perf_counter() - t0)
        return resp

    def _route(  # noqa: PLR0911 - a flat router reads best as one return per route
        self, method: str, path: str, header_len: str | None, body: bytes
    ) -> tuple[str, str, str, Response]:
        parts = path.split("/")
        n = len(parts)
        # parts[0] == "" because paths start with "/".
        if n >= 4 and parts[1] == "v2" and parts[2] == "models":
            name = parts[3]
            if n == 5 and parts[4] == "infer":
                return self._infer_route(method, name, None, header_len, body)
            if n == 7 and parts[4] == "versions" and parts[6] == "infer":
                return self._infer_route(method, name, parts[5], header_len, body)
            if n == 4:
                return self._get(method, "model_metadata", name, None, self._metadata)
            if n == 5 and parts[4] == "ready":
                return self._get(method, "model_ready", name, None, self._model_ready)
            if n == 5 and parts[4] == "status":
                return self._get(method, "model_status", name, None, self._model_status)
            if n == 6 and parts[4] == "versions":
                return self._get(method, "model_metadata", name, parts[5], self._metadata)
            if n == 7 and parts[4] == "versions" and parts[6] == "ready":
                return self._get(method, "model_ready", name, parts[5], self._model_ready)
        elif path == "/v2/health/live":
            return self._simple(method, "server_live", lambda: _json(200, {"live": True}))
        elif path == "/v2/health/ready":
            return self._simple(method, "server_ready", self._server_ready)
        elif path in {"/v2", "/v2/"}:
            return self._simple(method, "server_metadata", self._server_metadata)
        elif path == "/metrics":
            return self._simple(
                method, "metrics", lambda: (200, self.metrics.render(), METRICS_CONTENT_TYPE, [])
            )
        return "other", UNKNOWN, "", self.error(404, "not_found", f"no such endpoint: {path}", UNKNOWN)

    def _method_not_allowed(self, method: str, allowed: str, model: str) -> Response:
        return self.error(
            405,
            "method_not_allowed",
            f"method {method} is not allowed here; use {allowed}",
            model,
            [("allow", allowed)],
        )

    def _simple(self, method: str, endpoint: str, fn: Any) -> tuple[str, str, str, Response]:
        if method not in ("GET", "HEAD"):
            return endpoint, UNKNOWN, "", self._method_not_allowed(method, "GET", UNKNOWN)
        return endpoint, self.name, self._served_version(), fn()

    def _served_version(self) -> str:
        cur = self.manager.current
        return cur.version if cur else ""

    def _get(
        self, method: str, endpoint: str, name: str, version: str | None, fn: Any
    ) -> tuple[str, str, str, Response]:
        if name != self.name:
            return (
                endpoint,
                UNKNOWN,
                "",
                self.error(
                    404, "unknown_model", f"unknown model {name!r}; this server serves {self.name!r}", UNKNOWN
                ),
            )
        label = self._version_label(version)
        if method not in ("GET", "HEAD"):
            return endpoint, self.name, label, self._method_not_allowed(method, "GET", self.name)
        return endpoint, self.name, label, fn(version)

    def _named(self, version: str | None) -> LoadedModel | None:
        """The model a request names: current, or (admin listener) the staged one of VERSION.

        Falls back to current when nothing matches, so the caller reports the mismatch.
        """
        cur = self.manager.current
        if version is None or not self.staged_versions or (cur is not None and cur.version == version):
            return cur
        return self.manager.staged(version) or cur

    def _version_label(self, version: str | None) -> str:
        m = self._named(version)
        return m.version if m else ""

    def _acquire(self, version: str | None) -> LoadedModel | None:
        if version is not None and self.staged_versions:
            cur = self.manager.current
            if cur is None or cur.version != version:
                staged = self.manager.acquire_staged(version)
                if staged is not None:
                    return staged
        return self.manager.acquire()

    # --- health and metadata ----------------------------------------------------------
    def _server_ready(self) -> Response:
        if self.manager.current is not None:
            return _json(200, {"ready": True})
        return _json(503, {"ready": False, "error": self._not_ready()})

    def _server_metadata(self) -> Response:
        return _json(
            200, {"name": "edgeml-server", "version": __version__, "extensions": ["binary_tensor_data"]}
        )

    def _version_mismatch(self, version: str, serving: str) -> str:
        return f"model {self.name!r} version {version!r} is not loaded (serving {serving!r})"

    def _metadata(self, version: str | None) -> Response:
        cur = self._named(version)
        if cur is None:
            return self.error(503, "not_ready", self._not_ready(), self.name)
        if version is not None and version != cur.version:
            return self.error(404, "unknown_version", self._version_mismatch(version, cur.version), self.name)
        return _json(200, cur.metadata())

    def _model_ready(self, version: str | None) -> Response:
        cur = self._named(version)
        if cur is None:
            return _json(503, {"name": self.name, "ready": False, "error": self._not_ready()})
        if version is not None and version != cur.version:
            return _json(
                404,
                {"name": self.name, "ready": False, "error": self._version_mismatch(version, cur.version)},
            )
        return _json(200, {"name": self.name, "version": cur.version, "ready": True})

    def _model_status(self, _version: str | None) -> Response:
        return _json(200, self.manager.status())

    # --- inference ------------------------------------------------------------------
    def _infer_route(
        self, method: str, name: str, version: str | None, header_len: str | None, body: bytes
    ) -> tuple[str, str, str, Response]:
        if name != self.name:
            return (
                "infer",
                UNKNOWN,
                "",
                self.error(
                    404, "unknown_model", f"unknown model {name!r}; this server serves {self.name!r}", UNKNOWN
                ),
            )
        if method != "POST":
            return (
                "infer",
                self.name,
                self._served_version(),
                self._method_not_allowed(method, "POST", self.name),
            )
        model = self._acquire(version)
        if model is None:
            return "infer", self.name, "", self.error(503, "not_ready", self._not_ready(), self.name)
        try:
            if version is not None and version != model.version:
                return (
                    "infer",
                    self.name,
                    model.version,
                    self.error(
                        404, "unknown_version", self._version_mismatch(version, model.version), self.name
                    ),
                )
            return "infer", self.name, model.version, self._infer(model, header_len, body)
        finally:
            model.release()

    def _infer(self, model: Any, header_len: str | None, body: bytes) -> Response:  # noqa: PLR0911
        try:
            doc, binary = split_body(body, header_len)
            req = decode_request(doc, binary, model)
        except RequestError as exc:
            return self.error(exc.status, exc.kind, exc.message, self.name)
        except Exception as exc:
            return self.error(400, "bad_input", f"cannot decode request: {exc}", self.name)
        names = req.outputs or model.output_names
        try:
            arrays = model.session.run(names, req.feeds)
        except InvalidArgument as exc:
            return self.error(400, "bad_input", f"the model rejected the input: {exc}", self.name)
        except Exception as exc:
            log.error(
                "inference failed",
                extra={"fields": {"model": model.name, "version": model.version, "error": str(exc)}},
            )
            return self.error(500, "inference_failed", f"inference failed: {exc}", self.name)
        if self.live_traffic and req.id != PROBE_REQUEST_ID:
            for iname, arr in req.feeds.items():
                st = model.stats.get(iname)
                if st is not None:
                    st.observe(arr)
            if model.drift is not None:
                model.drift.observe(req.feeds, dict(zip(names, arrays, strict=True)))
        try:
            out, hlen = encode_response(model, req.id, names, arrays, req.binary_outputs)
        except Exception as exc:
            log.error("cannot encode response", extra={"fields": {"model": model.name, "error": str(exc)}})
            return self.error(500, "encode_failed", f"cannot encode the response: {exc}", self.name)
        if hlen is None:
            return 200, out, JSON, []
        return 200, out, "application/octet-stream", [("inference-header-content-length", str(hlen))]


# --- ASGI adapters ----------------------------------------------------------------------


async def _read_body(receive: Any, limit: int) -> bytes | None:
    """Read the body; None if it grew past LIMIT. Raises ConnectionError on disconnect."""
    msg = await receive()
    if msg["type"] == "http.disconnect":
        raise ConnectionError
    body = msg.get("body", b"")
    if not msg.get("more_body", False):
        return body if len(body) <= limit else None
    chunks = [body]
    size = len(body)
    while True:
        if size > limit:
            return None
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionError
        chunk = msg.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if not msg.get("more_body", False):
            break
    return b"".join(chunks) if size <= limit else None


async def _send(send: Any, resp: Response, head_only: bool = False) -> None:
    status, body, ctype, extra = resp
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode())]
    for k, v in extra:
        headers.append((k.encode(), v.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


def _headers(scope: dict[str, Any]) -> tuple[int | None, str | None]:
    clen: int | None = None
    hlen: str | None = None
    for k, v in scope["headers"]:
        if k == b"content-length":
            try:
                clen = int(v)
            except ValueError:
                clen = None
        elif k == b"inference-header-content-length":
            hlen = v.decode("latin-1")
    return clen, hlen


class PublicASGI:
    """The public API over a Service. With ``offload`` (the admin listener's copy), each
    request is handled in a worker thread: the gates' requests to a staged candidate must
    not hold the event loop that the same process's public listener answers on (a
    candidate taking seconds a request stalled public traffic for as long). The public
    listener stays on the loop: no thread hop for a model that answers in microseconds."""

    def __init__(self, service: Service, offload: bool = False) -> None:
        self.service = service
        self.offload = offload
        # Set on SIGTERM: every response then carries "Connection: close", so keep-alive
        # clients reconnect, and land on the other instance sharing the port.
        self.draining = False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        svc = self.service
        clen, hlen = _headers(scope)
        if clen is not None and clen > svc.max_body_bytes:
            # Refuse before reading: a huge body never lands in memory.
            await _send(send, svc.too_large(clen))
            return
        try:
            body = await _read_body(receive, svc.max_body_bytes)
        except ConnectionError:
            return
        if body is None:
            await _send(send, svc.too_large(None))
            return
        method = scope["method"]
        try:
            if self.offload:
                resp = await asyncio.to_thread(svc.handle, method, scope["path"], hlen, body)
            else:
                resp = svc.handle(method, scope["path"], hlen, body)
        except Exception as exc:  # last line of defence: one request never takes the server down
            log.exception("unhandled error")
            resp = _json(500, {"error": f"internal error: {exc!r}"})
        if self.draining:
            resp = (*resp[:3], [*resp[3], ("connection", "close")])
        await _send(send, resp, head_only=method == "HEAD")


ADMIN_MAX_BODY = 64 * 1024

# Repository actions under /v2/repository/models/NAME/: the KServe/Triton ones (load,
# unload, status) and the staged deployment (stage .. commit).
REPOSITORY_ACTIONS = ("load", "unload", "status", "stage", "promote", "revert", "commit", "unstage")


class PublicControl(Protocol):
    """Opens and closes the public listener on request (implemented in server.py)."""

    async def open(self) -> tuple[int, dict[str, Any]]: ...

    async def close(self) -> tuple[int, dict[str, Any]]: ...

    def describe(self) -> dict[str, Any]: ...


def _method(method: str, allowed: str) -> Response | None:
    """A 405 unless METHOD is ALLOWED."""
    if method == allowed:
        return None
    return _json(405, {"error": f"use {allowed}"}, [("allow", allowed)])


def _version_param(body: bytes) -> tuple[str | None, Response | None]:
    """parameters.version from a JSON body (None when absent), or the 400 to answer."""
    if not body.strip():
        return None, None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return None, _json(400, {"error": f"request body is not valid JSON: {exc}"})
    params = doc.get("parameters") if isinstance(doc, dict) else None
    if params is not None and not isinstance(params, dict):
        return None, _json(400, {"error": "'parameters' must be an object"})
    v = (params or {}).get("version")
    if v is not None and not isinstance(v, str):
        return None, _json(400, {"error": "parameters.version must be a string"})
    return v, None


class AdminASGI:
    """Model repository extension and listener control on the loopback-only admin listener.

    With a ``public`` app, every other path (health, metadata, ready, infer, status,
    metrics) is served as on the public port, so a deployer can probe and gate this one
    instance while two instances share the public port (SO_REUSEPORT). That app's
    Service should resolve staged versions (``staged_versions=True``): the public one
    must not.
    """

    def __init__(
        self, manager: ModelManager, public: PublicASGI | None = None, listener: PublicControl | None = None
    ) -> None:
        self.manager = manager
        self.public = public
        self.listener = listener

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        path = scope["path"]
        if self.public is not None and not path.startswith(("/v2/repository/", "/admin/")):
            await self.public(scope, receive, send)
            return
        try:
            body = await _read_body(receive, ADMIN_MAX_BODY)
        except ConnectionError:
            return
        if body is None:
            await _send(send, _json(413, {"error": f"admin request body exceeds {ADMIN_MAX_BODY} bytes"}))
            return
        try:
            resp = await self._route(scope["method"], path, body)
        except Exception as exc:
            log.exception("unhandled admin error")
            resp = _json(500, {"error": f"internal error: {exc!r}"})
        await _send(send, resp)

    async def _route(self, method: str, path: str, body: bytes) -> Response:
        parts = path.split("/")
        if path == "/v2/health/live":
            return _method(method, "GET") or _json(200, {"live": True})
        if path == "/v2/repository/index":
            return self._index(method)
        if len(parts) == 6 and parts[1:4] == ["v2", "repository", "models"] and parts[5] in REPOSITORY_ACTIONS:
            return await self._repository(method, parts[4], parts[5], body)
        if parts[1:3] == ["admin", "public"] and len(parts) <= 4 and self.listener is not None:
            return await self._public(method, parts[3] if len(parts) == 4 else "")
        return _json(404, {"error": f"no such admin endpoint: {path}"})

    def _index(self, method: str) -> Response:
        if method not in ("GET", "POST"):
            return _json(405, {"error": "use POST or GET"}, [("allow", "GET, POST")])
        mgr = self.manager
        cur = mgr.current
        entry = {
            "name": mgr.name,
            "version": cur.version if cur else "",
            "state": "READY" if cur else "UNAVAILABLE",
            "reason": mgr.not_ready_reason or "",
        }
        return _json(200, [entry])

    async def _repository(self, method: str, name: str, action: str, body: bytes) -> Response:  # noqa: PLR0911 - flat router
        mgr = self.manager
        if name != mgr.name:
            return _json(404, {"error": f"unknown model {name!r}; this server serves {mgr.name!r}"})
        if action == "status":
            return _method(method, "GET") or _json(200, mgr.status())
        refused = _method(method, "POST")
        if refused is not None:
            return refused
        if action == "unload":
            return _json(
                400,
                {
                    "error": "unload is not supported: the server always serves one version; "
                    "load another version instead"
                },
            )
        if action in ("revert", "commit", "unstage"):
            # Instant: no loading, no lock (a revert must not wait behind a slow load).
            return _json(*getattr(mgr, action)())
        version, bad = _version_param(body)
        if bad is not None:
            return bad
        if action == "load":
            return _json(*await mgr.swap(version, "admin"))
        if version is None:
            return _json(400, {"error": f"{action} needs {{\"parameters\": {{\"version\": \"V\"}}}}"})
        if action == "stage":
            return _json(*await mgr.stage(version))
        return _json(*mgr.promote(version))

    async def _public(self, method: str, action: str) -> Response:
        assert self.listener is not None  # checked by the router
        if action == "":
            return _method(method, "GET") or _json(200, self.listener.describe())
        if action not in ("open", "close"):
            return _json(404, {"error": f"no such admin endpoint: /admin/public/{action}"})
        refused = _method(method, "POST")
        if refused is not None:
            return refused
        if action == "open":
            return _json(*await self.listener.open())
        return _json(*await self.listener.close())
