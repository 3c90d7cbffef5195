"""Command line: flags, each with an EDGEML_* environment variable equivalent.

Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, logs
from .bundle import valid_name, valid_version
from .drift import DEFAULT_WINDOW, MAX_WINDOW
from .signing import DEFAULT_POLICY, DEFAULT_TRUSTED_KEYS, POLICIES, SignaturePolicy

log = logging.getLogger("edgeml_server")


@dataclass
class Settings:
    bundles: Path
    model: str
    version: str | None
    host: str
    port: int
    admin_port: int
    max_body_bytes: int
    log_level: str
    intra_op_threads: int
    reuse_port: bool = False
    bind_when_ready: bool = False
    public_hold: bool = False
    drain_seconds: float = 5.0
    drift_window: int = DEFAULT_WINDOW
    signatures: SignaturePolicy = field(default_factory=SignaturePolicy)


def _env(name: str, default: str | None = None) -> str | None:
    v = os.environ.get(name)
    return v if v not in (None, "") else default


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _env_bool(name: str) -> bool | str:
    """The boolean value of env NAME (unset/empty: False); the raw text when it is not a boolean."""
    v = (_env(name) or "false").strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return v


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgeml_server",
        description="Serve one ONNX model bundle over the Open Inference Protocol (KServe v2).",
    )
    p.add_argument(
        "--bundles",
        default=_env("EDGEML_BUNDLES"),
        help="bundle root holding NAME/VERSION/ (env EDGEML_BUNDLES)",
    )
    p.add_argument("--model", default=_env("EDGEML_MODEL"), help="model NAME to serve (env EDGEML_MODEL)")
    p.add_argument(
        "--version",
        default=_env("EDGEML_VERSION"),
        help="VERSION to serve; default: contents of BUNDLES/NAME/current (env EDGEML_VERSION)",
    )
    p.add_argument(
        "--host",
        default=_env("EDGEML_HOST", "0.0.0.0"),
        help="public listener address (env EDGEML_HOST, default 0.0.0.0)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("EDGEML_PORT", "8080") or 8080),
        help="public port (env EDGEML_PORT, default 8080)",
    )
    p.add_argument(
        "--admin-port",
        type=int,
        default=int(_env("EDGEML_ADMIN_PORT", "8081") or 8081),
        help="admin listener port on 127.0.0.1 only; 0 disables (env EDGEML_ADMIN_PORT, default 8081)",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=int(_env("EDGEML_MAX_BODY_BYTES", str(8 * 1024 * 1024)) or 0),
        help="largest accepted request body; larger gets 413 (env EDGEML_MAX_BODY_BYTES, default 8388608)",
    )
    p.add_argument(
        "--log-level",
        default=_env("EDGEML_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="env EDGEML_LOG_LEVEL, default info",
    )
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=int(_env("EDGEML_INTRA_OP_THREADS", "1") or 1),
        help="onnxruntime intra-op threads (env EDGEML_INTRA_OP_THREADS, default 1)",
    )
    p.add_argument(
        "--reuse-port",
        action="store_true",
        default=_env_bool("EDGEML_REUSE_PORT"),
        help="bind the public port with SO_REUSEPORT, so a second instance (the other slot of a "
        "blue/green deployment) can bind the same port on the same host (env EDGEML_REUSE_PORT=1)",
    )
    p.add_argument(
        "--bind-when-ready",
        action="store_true",
        default=_env_bool("EDGEML_BIND_WHEN_READY"),
        help="open the public port only once the model is loaded and its self-test passed; the "
        "admin port opens at once (env EDGEML_BIND_WHEN_READY=1)",
    )
    p.add_argument(
        "--public-hold",
        action="store_true",
        default=_env_bool("EDGEML_PUBLIC_HOLD"),
        help="load the model and open the admin port, but open the public port only when told to "
        "(POST /admin/public/open on the admin port), so a deployer can judge this instance before "
        "any public traffic reaches it; overrides --bind-when-ready (env EDGEML_PUBLIC_HOLD=1)",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=float(_env("EDGEML_DRAIN_SECONDS", "5") or 5),
        help="on SIGTERM or POST /admin/public/close, how long at most to let in-flight requests "
        "finish after the public port closed (env EDGEML_DRAIN_SECONDS, default 5)",
    )
    p.add_argument(
        "--drift-window",
        type=int,
        default=int(_env("EDGEML_DRIFT_WINDOW", str(DEFAULT_WINDOW)) or DEFAULT_WINDOW),
        help="compare the inputs and outputs of the last N answered rows with the bundle's reference "
        f"profile and export drift gauges; 0 switches drift off (env EDGEML_DRIFT_WINDOW, default "
        f"{DEFAULT_WINDOW})",
    )
    p.add_argument(
        "--signature-policy",
        default=_env("EDGEML_SIGNATURE_POLICY", DEFAULT_POLICY),
        choices=POLICIES,
        help="required: refuse a bundle without a valid model.sig; optional: load an unsigned bundle, "
        f"but a signed one only if its signature verifies (env EDGEML_SIGNATURE_POLICY, default {DEFAULT_POLICY})",
    )
    p.add_argument(
        "--trusted-keys",
        default=_env("EDGEML_TRUSTED_KEYS", str(DEFAULT_TRUSTED_KEYS)),
        help="directory of the signers this server trusts: PEM public keys (*.pub, *.pem) and CA "
        "certificates (*.crt); absent means none (env EDGEML_TRUSTED_KEYS, default "
        f"{DEFAULT_TRUSTED_KEYS})",
    )
    p.add_argument("--server-version", action="version", version=f"edgeml-server {__version__}")
    return p


def _check_booleans(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    for flag, value in (
        ("EDGEML_REUSE_PORT", a.reuse_port),
        ("EDGEML_BIND_WHEN_READY", a.bind_when_ready),
        ("EDGEML_PUBLIC_HOLD", a.public_hold),
    ):
        if not isinstance(value, bool):
            p.error(f"{flag}={value!r} is not a boolean; use 1/true/yes/on or 0/false/no/off")
    if a.public_hold and a.admin_port == 0:
        # Only the admin listener can open a held public listener: it would never open.
        p.error("--public-hold (EDGEML_PUBLIC_HOLD) needs the admin listener; --admin-port must not be 0")


def parse(argv: list[str] | None = None) -> Settings:
    p = build_parser()
    a = p.parse_args(argv)
    if not a.bundles:
        p.error("--bundles (or EDGEML_BUNDLES) is required")
    if not a.model:
        p.error("--model (or EDGEML_MODEL) is required")
    if not valid_name(a.model):
        p.error(f"--model {a.model!r} is not a valid bundle name")
    if a.version is not None and not valid_version(a.version):
        p.error(f"--version {a.version!r} is not a valid bundle version")
    if not 0 < a.port < 65536:
        p.error("--port must be 1..65535")
    if not 0 <= a.admin_port < 65536:
        p.error("--admin-port must be 0..65535")
    if a.admin_port == a.port:
        p.error("--admin-port must differ from --port")
    if a.max_body_bytes < 1024:
        p.error("--max-body-bytes must be at least 1024")
    if not 1 <= a.intra_op_threads <= 256:
        p.error("--intra-op-threads must be 1..256")
    _check_booleans(p, a)
    if a.signature_policy not in POLICIES:  # argparse checks the choices of flags, not of defaults
        p.error(f"EDGEML_SIGNATURE_POLICY={a.signature_policy!r} is not one of {', '.join(POLICIES)}")
    if not 0 <= a.drain_seconds <= 3600:
        p.error("--drain-seconds must be 0..3600")
    if not 0 <= a.drift_window <= MAX_WINDOW:
        p.error(f"--drift-window must be 0..{MAX_WINDOW} rows (0: no drift monitoring)")
    return Settings(
        bundles=Path(a.bundles),
        model=a.model,
        version=a.version,
        host=a.host,
        port=a.port,
        admin_port=a.admin_port,
        max_body_bytes=a.max_body_bytes,
        log_level=a.log_level,
        intra_op_threads=a.intra_op_threads,
        reuse_port=a.reuse_port,
        bind_when_ready=a.bind_when_ready,
        public_hold=a.public_hold,
        drain_seconds=a.drain_seconds,
        drift_window=a.drift_window,
        signatures=SignaturePolicy(a.signature_policy, Path(a.trusted_keys)),
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse(argv)
    logs.setup(settings.log_level)
    from .server import run  # noqa: PLC0415 - late: argument errors should not pay for onnxruntime

    try:
        return run(settings)
    except KeyboardInterrupt:
        return 0
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        code = exc.code if isinstance(exc.code, int) else 1
        if code:
            log.error("server stopped", extra={"fields": {"exit_code": code}})
        return code


if __name__ == "__main__":
    sys.exit(main())
