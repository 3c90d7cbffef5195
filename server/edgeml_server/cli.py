"""Command line: flags, each with an EDGEML_* environment variable equivalent.

Precedence: flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__, logs
from .bundle import valid_name, valid_version

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


def _env(name: str, default: str | None = None) -> str | None:
    v = os.environ.get(name)
    return v if v not in (None, "") else default


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
    p.add_argument("--server-version", action="version", version=f"edgeml-server {__version__}")
    return p


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
