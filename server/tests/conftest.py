"""Fixtures: real models (digits + skl2onnx), real bundles, a real server subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

HERE = Path(__file__).resolve().parent
SERVER_DIR = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(SERVER_DIR))

import bundlewriter as bw  # noqa: E402 - needs the sys.path entry above

# No silent skip (tests/skipcheck.py): the suite's skip summary and allow-list here too
# (server/pytest.ini, not the repository's pytest.ini, configures this suite).
sys.path.append(str(SERVER_DIR.parent / "tests"))
pytest_plugins = ["skipcheck"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProc:
    """The real server in a subprocess, on free 127.0.0.1 ports."""

    def __init__(
        self,
        root: Path,
        *,
        model: str = "digits",
        version: str | None = None,
        admin: bool = True,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        port: int | None = None,
        wait_live: str = "public",
    ) -> None:
        self.port = port or free_port()
        self.admin_port = free_port() if admin else 0
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_url = f"http://127.0.0.1:{self.admin_port}"
        args = [
            sys.executable,
            "-m",
            "edgeml_server",
            "--bundles",
            str(root),
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
        ]
        if version is not None:
            args += ["--version", version]
        args += extra or []
        self.log_path = (log_dir or root) / f"server-{self.port}-{self.admin_port}.log"
        self._log = open(self.log_path, "wb")
        full_env = {
            **os.environ,
            "PYTHONPATH": str(SERVER_DIR),
            "PYTHONDONTWRITEBYTECODE": "1",
            **(env or {}),
        }
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=str(root)
        )
        self.session = requests.Session()
        # "public", or "admin" (e.g. --bind-when-ready, whose public port opens late).
        self._wait_live(base=self.admin_url if wait_live == "admin" else self.url)

    def _wait_live(self, timeout: float = 20.0, base: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.logs()}")
            try:
                if requests.get((base or self.url) + "/v2/health/live", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not come up: {self.logs()}")

    def wait(self, predicate: Any, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout: float = 15.0) -> bool:
        return self.wait(lambda: self.get("/v2/health/ready").status_code == 200, timeout)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=10, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return self.session.post(self.url + path, timeout=10, **kw)

    def admin(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, self.admin_url + path, timeout=30, **kw)

    def serving(self) -> str | None:
        return self.get("/v2/models/digits/status").json()["serving_version"]

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"unparsed": line})
        return out

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.session.close()
        self._log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def models() -> dict[str, bytes]:
    """Two different digits MLPs: 'a' (served as version 1) and 'b' (version 2)."""
    return {"a": bw.make_mlp_onnx(seed=0), "b": bw.make_mlp_onnx(seed=1)}


@pytest.fixture(scope="session")
def rows() -> np.ndarray:
    return bw.digits_data()[0][:64]


@pytest.fixture()
def bundle_root(tmp_path: Path, models: dict[str, bytes]) -> Path:
    """v1 and v2 good bundles; pointer -> 1."""
    root = tmp_path / "bundles"
    bw.write_bundle(root, "digits", "1", models["a"], pointer=True)
    bw.write_bundle(root, "digits", "2", models["b"])
    return root


@pytest.fixture()
def make_server(tmp_path: Path) -> Iterator[Any]:
    started: list[ServerProc] = []

    def start(root: Path, **kw: Any) -> ServerProc:
        s = ServerProc(root, log_dir=tmp_path, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models: dict[str, bytes]) -> Iterator[ServerProc]:
    """One ready server on version 1, shared by the read-only endpoint tests."""
    root = tmp_path_factory.mktemp("shared") / "bundles"
    bw.write_bundle(root, "digits", "1", models["a"], pointer=True)
    bw.write_bundle(root, "digits", "2", models["b"])
    s = ServerProc(root, extra=["--max-body-bytes", "65536"])
    assert s.wait_ready(), s.logs()
    yield s
    s.stop()


def infer_body(rows: np.ndarray, **extra: Any) -> dict[str, Any]:
    doc = {
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.reshape(-1).tolist()}
        ]
    }
    doc.update(extra)
    return doc


class Hammer:
    """Client threads that send infer requests until stopped; bounded in count and time."""

    def __init__(
        self, url: str, body: bytes, threads: int = 4, max_requests: int = 20000, max_seconds: float = 30.0
    ) -> None:
        self.url = url
        self.body = body
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        # model_version of every answer, in the order the answers arrived.
        self.answers: list[str] = []
        self.max_requests = max_requests
        self.deadline = time.monotonic() + max_seconds
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Hammer:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)

    def _run(self) -> None:
        sess = requests.Session()
        while not self.stop_event.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.ok + len(self.failures) >= self.max_requests:
                    return
            try:
                r = sess.post(self.url, data=self.body, timeout=10)
                if r.status_code == 200:
                    v = r.json()["model_version"]
                    with self.lock:
                        self.ok += 1
                        self.versions[v] = self.versions.get(v, 0) + 1
                        self.answers.append(v)
                else:
                    with self.lock:
                        self.failures.append(f"{r.status_code} {r.text[:200]}")
            except Exception as exc:
                with self.lock:
                    self.failures.append(repr(exc))
        sess.close()

    def answers_since(self, mark: int) -> list[str]:
        with self.lock:
            return self.answers[mark:]

    def mark(self) -> int:
        with self.lock:
            return len(self.answers)

    def count(self) -> int:
        with self.lock:
            return self.ok + len(self.failures)

    def wait_for(self, n: int, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        start = self.count()
        while time.monotonic() < deadline:
            if self.count() - start >= n:
                return True
            time.sleep(0.01)
        return False
