"""Health and readiness probes for containers: exit 0 when ready, 1 when not, 2 on bad usage.

Two forms:

    python -m edgeml_server.probe URL
        0 when URL answers 200 (quadlet HealthCmd=, the image's HEALTHCHECK).

    python -m edgeml_server.probe --answers URL_BASE BUNDLE_ROOT NAME
            [--timeout SECONDS] [--deadline SECONDS] [--require-expected]
        0 only when
          1. GET URL_BASE/v2/models/NAME/ready answers 200, naming the VERSION it serves;
          2. BUNDLE_ROOT/NAME/VERSION/model.json exists (name and version match it);
          3. every smoke vector of that manifest that carries ground truth (`expected`)
             gets, from URL_BASE/v2/models/NAME/versions/VERSION/infer, an answer of
             VERSION that matches it: same shape, integers/booleans/bytes equal, floating
             point within the manifest's smoke_tests.tolerance, by the rule of the
             server's self-test (bundle.run_smoke_tests).
        A manifest with no `expected` at all passes on 1 and 2 (the server's self-test
        against the recorded outputs is then all there is) and says so on stderr;
        --require-expected makes that a failure instead.
        Each request waits at most --timeout seconds (default 2) and the whole probe at
        most --deadline seconds (default 8): keep the deadline under the orchestrator's
        probe timeout, so that the probe, not a kill, says why it failed.

Every failure prints one line on stderr saying why (Kubernetes shows it in the pod's
events). A module, not a `python -c "..."` one-liner, so that healthcheck lines need no
nested quoting (quadlet's HealthCmd= and Containerfile HEALTHCHECK both mangle it easily).
Standard library only: it must start fast and run in any image with the server. So the
comparison below restates the server's rule in plain Python rather than importing
bundle.py (which pulls in numpy and onnxruntime); server/tests/test_probe.py checks that
both give the same verdicts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import re
import signal
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
# Same patterns as bundle.NAME_RE / bundle.VERSION_RE (not imported: numpy, onnxruntime).
_NAME_PATTERN = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
_VERSION_PATTERN = r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$"
_MAX_ANSWER_BYTES = 64 * 1024 * 1024
PROBE_REQUEST_ID = "edgeml-readiness-probe"


def probe(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


# --- answer check ----------------------------------------------------------------------


class NotReady(Exception):
    """The probe's verdict: not ready, with the one-line reason."""


def _round_to(datatype: str, value: float) -> float:
    """VALUE as the server holds it after np.asarray(..., dtype) (FP16/FP32 rounding)."""
    fmt = {"FP16": "<e", "FP32": "<f"}.get(datatype)
    if fmt is None:
        return value
    try:
        return struct.unpack(fmt, struct.pack(fmt, value))[0]
    except OverflowError:  # numpy turns an out-of-range value into infinity
        return float("inf") if value > 0 else float("-inf")


def first_mismatch(datatype: str, got: list[Any], want: list[Any], rtol: float, atol: float) -> int | None:
    """Flat index of the first element that differs, or None when all match.

    The server's self-test rule (bundle.run_smoke_tests): floating point passes when
    ``abs(got - want) <= atol + rtol * abs(want)``, NaN where both are NaN and infinity
    where both are the same infinity; every other datatype must be equal (BYTES as text).
    The caller checks that the lengths agree.
    """
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if datatype in _FLOAT_TYPES:
            if not isinstance(g, (int, float)) or not isinstance(w, (int, float)):
                return i
            h = float(g)
            e = _round_to(datatype, float(w))
            if abs(h - e) <= atol + rtol * abs(e):
                continue
            if (math.isnan(h) and math.isnan(e)) or (math.isinf(e) and h == e):
                continue
            return i
        if datatype == "BYTES":
            if str(g) != str(w):
                return i
        elif g != w:
            return i
    return None


def _short(data: list[Any], limit: int = 6) -> str:
    text = ", ".join(repr(x) for x in data[:limit])
    return f"[{text}{', ...' if len(data) > limit else ''}]"


class _Client:
    """One keep-alive HTTP connection to URL_BASE, every request bounded by the deadline."""

    def __init__(self, base: str, timeout: float, deadline: float) -> None:
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotReady(f"URL_BASE {base!r} is not an http:// or https:// URL")
        self.base = base.rstrip("/")
        self._prefix = parts.path.rstrip("/")
        self._timeout = timeout
        self._deadline = deadline
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        try:
            self._conn = cls(parts.hostname, parts.port, timeout=timeout)
        except ValueError as exc:
            raise NotReady(f"URL_BASE {base!r}: {exc}") from None

    def remaining(self) -> float:
        return self._deadline - time.monotonic()

    def request(self, method: str, path: str, doc: object = None) -> tuple[int, object]:
        left = self.remaining()
        if left <= 0:
            raise NotReady(f"probe deadline passed before {method} {path}")
        self._conn.timeout = min(self._timeout, left)
        if self._conn.sock is not None:
            self._conn.sock.settimeout(self._conn.timeout)
        body = None if doc is None else json.dumps(doc, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            self._conn.request(method, self._prefix + path, body=body, headers=headers)
            answer = self._conn.getresponse()
            raw = answer.read(_MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc or type(exc).__name__}"
            raise NotReady(f"{method} {self.base}{path} {what}") from None
        if len(raw) > _MAX_ANSWER_BYTES:
            raise NotReady(f"{method} {self.base}{path}: answer larger than {_MAX_ANSWER_BYTES} bytes")
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw[:200].decode("utf-8", "replace")
        return answer.status, parsed

    def close(self) -> None:
        self._conn.close()


def _error_of(doc: object) -> str:
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return doc["error"]
    return str(doc)[:200]


def _served_version(client: _Client, name: str) -> str:
    path = f"/v2/models/{name}/ready"
    status, doc = client.request("GET", path)
    if status != 200:
        raise NotReady(f"GET {path} answered {status}: {_error_of(doc)}")
    version = doc.get("version") if isinstance(doc, dict) else None
    if not isinstance(version, str) or not re.fullmatch(_VERSION_PATTERN, version) or version in (".", ".."):
        raise NotReady(f"GET {path} answered 200 but names no valid version: {str(doc)[:200]}")
    return version


def _load_manifest(root: str, name: str, version: str) -> dict[str, Any]:
    path = os.path.join(root, name, version, "model.json")
    try:
        with open(path, "rb") as fh:
            manifest = json.load(fh)
    except FileNotFoundError:
        raise NotReady(f"the server serves {name} {version} but there is no {path}") from None
    except (OSError, ValueError) as exc:
        raise NotReady(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise NotReady(f"{path} does not hold a JSON object")
    if manifest.get("name") != name or manifest.get("version") != version:
        raise NotReady(f"{path} is for {manifest.get('name')!r} {manifest.get('version')!r}, not {name!r} {version!r}")
    return manifest


def _expected_cases(manifest: dict[str, Any], where: str) -> tuple[list[tuple[int, list, list]], float, float]:
    smoke = manifest.get("smoke_tests")
    vectors = smoke.get("vectors") if isinstance(smoke, dict) else None
    if not isinstance(vectors, list):
        raise NotReady(f"{where}: smoke_tests.vectors is not a list")
    tol = smoke.get("tolerance") or {}
    try:
        rtol, atol = float(tol.get("rtol", 0.0)), float(tol.get("atol", 0.0))
    except (AttributeError, TypeError, ValueError):
        raise NotReady(f"{where}: smoke_tests.tolerance is not {{rtol, atol}} numbers") from None
    cases = []
    for index, vector in enumerate(vectors):
        expected = vector.get("expected") if isinstance(vector, dict) else None
        if not expected:
            continue
        inputs = vector.get("inputs")
        if not isinstance(expected, list) or not isinstance(inputs, list):
            raise NotReady(f"{where}: smoke vector {index} has malformed 'inputs' or 'expected'")
        for tensor in expected:
            if not (
                isinstance(tensor, dict)
                and isinstance(tensor.get("name"), str)
                and isinstance(tensor.get("shape"), list)
                and isinstance(tensor.get("data"), list)
            ):
                raise NotReady(f"{where}: smoke vector {index}: an expected tensor lacks name, shape or data")
        cases.append((index, inputs, expected))
    return cases, rtol, atol


def _check_output(
    where: str, got: dict[str, Any], want: dict[str, Any], datatype: str, *, rtol: float, atol: float
) -> str | None:
    """Why output GOT is wrong (WHERE names it), or None when it matches WANT."""
    if want.get("datatype") not in (None, datatype) or got.get("datatype") not in (None, datatype):
        return f"{where} is {got.get('datatype')}, expected {want.get('datatype')}"
    if list(got.get("shape") or []) != list(want["shape"]):
        return f"{where} has shape {got.get('shape')}, expected {want['shape']}"
    if len(got["data"]) != len(want["data"]):
        return f"{where} has {len(got['data'])} values, expected {len(want['data'])}"
    bad = first_mismatch(datatype, got["data"], want["data"], rtol, atol)
    if bad is None:
        return None
    tol = f" (rtol={rtol:g}, atol={atol:g})" if datatype in _FLOAT_TYPES else ""
    return f"{where} expected {_short(want['data'])}, got {_short(got['data'])}{tol}, first difference at index {bad}"


def _check_answer(
    index: int,
    answer: object,
    version: str,
    expected: list[dict[str, Any]],
    *,
    out_types: dict[str, str],
    rtol: float,
    atol: float,
) -> str | None:
    """Why vector INDEX's ANSWER is wrong, or None when it matches EXPECTED."""
    if not isinstance(answer, dict):
        return f"vector {index}: the answer is not a JSON object"
    if answer.get("model_version") != version:
        return f"vector {index}: answered by version {answer.get('model_version')!r}, not {version!r}"
    outputs = answer.get("outputs")
    by_name = {o.get("name"): o for o in outputs if isinstance(o, dict)} if isinstance(outputs, list) else {}
    for want in expected:
        oname = want["name"]
        got = by_name.get(oname)
        if got is None or not isinstance(got.get("data"), list):
            return f"vector {index}: the answer has no data for output {oname!r}"
        datatype = out_types.get(oname) or got.get("datatype") or want.get("datatype")
        why = _check_output(f"vector {index}: output {oname!r}", got, want, datatype, rtol=rtol, atol=atol)
        if why is not None:
            return why
    return None


def check_answers(
    base: str, root: str, name: str, *, timeout: float = 2.0, deadline: float = 8.0, require_expected: bool = False
) -> tuple[str, bool]:
    """Run checks 1-3 (module docstring); return (what passed, whether to say so anyway).

    Raise NotReady with the reason when the server is not ready by them.
    """
    if not re.fullmatch(_NAME_PATTERN, name):
        raise NotReady(f"invalid model name {name!r}")
    client = _Client(base, timeout, time.monotonic() + deadline)
    try:
        version = _served_version(client, name)
        manifest = _load_manifest(root, name, version)
        where = f"{name} {version} model.json"
        cases, rtol, atol = _expected_cases(manifest, where)
        if not cases:
            if require_expected:
                raise NotReady(f"{where} has no smoke vector with 'expected' (--require-expected)")
            return (
                f"ready: {name} {version} on its self-test only: its bundle has no smoke vector with "
                "'expected', so no answer was checked against ground truth",
                True,
            )
        signature = manifest.get("signature")
        specs = signature.get("outputs") if isinstance(signature, dict) else None
        out_types = {o.get("name"): o.get("datatype") for o in specs or [] if isinstance(o, dict)}
        path = f"/v2/models/{name}/versions/{version}/infer"
        wrong: list[str] = []
        for index, inputs, expected in cases:
            doc = {"id": PROBE_REQUEST_ID, "inputs": inputs, "outputs": [{"name": t["name"]} for t in expected]}
            status, answer = client.request("POST", path, doc)
            if status != 200:
                wrong.append(f"vector {index}: POST {path} answered {status}: {_error_of(answer)}")
                continue
            why = _check_answer(index, answer, version, expected, out_types=out_types, rtol=rtol, atol=atol)
            if why is not None:
                wrong.append(why)
        if wrong:
            more = "; ..." if len(wrong) > 3 else ""
            raise NotReady(
                f"{name} {version}: {len(wrong)} of {len(cases)} smoke vectors with 'expected' answered "
                f"wrongly: {'; '.join(wrong[:3])}{more}"
            )
        return f"ready: {name} {version}; {len(cases)} of {len(cases)} vectors with 'expected' answered right", False
    finally:
        client.close()


# --- command line ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edgeml_server.probe",
        usage="%(prog)s --answers URL_BASE BUNDLE_ROOT NAME [--timeout S] [--deadline S] [--require-expected]",
        description="Readiness with the answer check against the bundle's ground truth ('expected').",
    )
    parser.add_argument("--answers", action="store_true", required=True, help="this form (see the module doc)")
    parser.add_argument("url_base", metavar="URL_BASE", help="the server's own base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("bundle_root", metavar="BUNDLE_ROOT", help="directory holding NAME/VERSION/model.json")
    parser.add_argument("name", metavar="NAME", help="model name")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request (default 2)")
    parser.add_argument("--deadline", type=float, default=8.0, help="seconds for the whole probe (default 8)")
    parser.add_argument(
        "--require-expected", action="store_true", help="fail when the bundle has no smoke vector with 'expected'"
    )
    parser.add_argument("--verbose", action="store_true", help="say on stderr why it passed, too")
    return parser


def _answers_main(args: list[str]) -> int:
    parser = _parser()
    ns = parser.parse_args(args)
    if not (ns.timeout > 0 and ns.deadline > 0):
        parser.error("--timeout and --deadline must be > 0")

    def out_of_time(_signum: int, _frame: Any) -> None:
        raise NotReady(f"the probe's deadline of {ns.deadline:g} s passed")

    # A hard stop for the whole probe: socket timeouts bound each read, not a request.
    previous = signal.signal(signal.SIGALRM, out_of_time)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, ns.deadline)
            verdict, say = check_answers(
                ns.url_base,
                ns.bundle_root,
                ns.name,
                timeout=ns.timeout,
                deadline=ns.deadline,
                require_expected=ns.require_expected,
            )
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except NotReady as exc:
        print(f"not ready: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    if say or ns.verbose:
        print(verdict, file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--answers" in args:
        return _answers_main(args)
    if len(args) != 1:
        print(
            "usage: python -m edgeml_server.probe URL\n"
            "       python -m edgeml_server.probe --answers URL_BASE BUNDLE_ROOT NAME "
            "[--timeout S] [--deadline S] [--require-expected]",
            file=sys.stderr,
        )
        return 2
    return 0 if probe(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
