"""Helpers of the rulebook tests: free ports, the JDK ansible-rulebook needs, waiting for a listener."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def java_home() -> str:
    java = shutil.which("java")
    assert java, "java is missing: `make setup` installs Debian's openjdk-17-jre-headless"
    return os.environ.get("JAVA_HOME") or str(Path(os.path.realpath(java)).parents[1])


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} after {timeout}s:\n{log.read_text()}")
