"""Health probe for container healthchecks: exit 0 when a URL answers 200, else 1.

    python -m edgeml_server.probe http://127.0.0.1:8081/v2/models/NAME/ready

A module, not a `python -c "..."` one-liner, so that healthcheck lines need no nested
quoting (quadlet's HealthCmd= and Containerfile HEALTHCHECK both mangle it easily).
Standard library only: it must start fast and run in any image with the server.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request


def probe(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m edgeml_server.probe URL", file=sys.stderr)
        return 2
    return 0 if probe(args[0]) else 1


if __name__ == "__main__":
    sys.exit(main())
