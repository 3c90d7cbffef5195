# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Shared helpers of the model_deployment tests (no tests here).

- Real bundles (server/tests/bundlewriter.py, with the digits models of bundle_models.py)
  and the REAL model server (``python -m edgeml_server`` from server/, on free 127.0.0.1
  ports): every HTTP exchange and gate in these tests is real.
- ``FakeHost`` replaces ONLY the systemctl/journalctl/podman boundary (``HostClient``): the
  control node running the unit tests has no systemd/podman service manager to drive.
  "Starting" a slot's service runs the real server with the EDGEML_* environment of the
  slot's unit file (as quadlet would), its bundle root mapped to the test's. The real
  systemd/podman path is covered by the lab's end-to-end tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import numpy as np
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[4]
SERVER_DIR = REPO / "server"
sys.path.insert(0, str(SERVER_DIR / "tests"))

import bundlewriter as bw  # noqa: E402 - needs the sys.path entry above

IMAGE = "localhost/edgeml-model-server:test"
IMAGE_ID = "sha256:" + "a" * 64
IMAGE_DIGEST = "sha256:" + "d" * 64
IMAGE2 = "localhost/edgeml-model-server:test2"
IMAGE2_ID = "sha256:" + "b" * 64
BROKEN_IMAGE = "localhost/edgeml-model-server:broken"  # its "container" exits at once


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rows(count: int = 4) -> np.ndarray:
    return models.digits_split()[1][:count]


def reshape_model() -> bytes:
    """Answers batch 1, fails inside onnxruntime (HTTP 500) on batch 2: a runtime bug."""
    w = numpy_helper.from_array(np.full((64, 10), 0.01, dtype=np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, 64], dtype=np.int64), "S")
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["X", "S"], ["R"]),
            helper.make_node("MatMul", ["R", "W"], ["M"]),
            helper.make_node("Softmax", ["M"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["n"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["n", 10]),
        ],
        initializer=[w, shape],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto.SerializeToString()


def write_bundle(
    root: Path,
    version: str,
    model: bytes | None = None,
    expected: list[int | None] | None = None,
    name: str = "digits",
) -> str:
    """A real bundle ROOT/NAME/VERSION (4 smoke vectors); return its sha256.

    EXPECTED gives per vector the ground truth as an offset from the label the model
    answers: 0 = right, 1 = wrong, None = no ground truth for that vector.
    """
    model = model if model is not None else models.digits_model()
    bdir = bw.write_bundle(root, name, version, model, rows())
    manifest_path = bdir / "model.json"
    manifest = json.loads(manifest_path.read_text())
    for vector, offset in zip(manifest["smoke_tests"]["vectors"], expected or []):
        if offset is not None:
            label = (vector["outputs"][0]["data"][0] + offset) % 10
            vector["expected"] = [{"name": "label", "datatype": "INT64", "shape": [1], "data": [label]}]
    manifest_path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")
    return manifest["model"]["sha256"]


def set_pointer(root: Path, version: str, name: str = "digits") -> None:
    bw.set_pointer(root, name, version)


def unit(slot: str, port: int, admin_port: int, image: str = IMAGE, name: str = "digits") -> str:
    """A quadlet unit as the role renders it (the FakeHost reads its Environment= lines)."""
    ready = f"http://127.0.0.1:{admin_port}/v2/models/{name}/ready"
    health = f"/opt/edgeml-server/venv/bin/python -c \"import urllib.request as u; u.urlopen('{ready}', timeout=2)\""
    return f"""[Unit]
Description=edgeml model server {name} ({slot})

[Container]
Image={image}
ContainerName=edgeml-{name}-{slot}
Network=host
User=10001
ReadOnly=true
Volume=/var/lib/edgeml/bundles:/models:ro
Environment=EDGEML_BUNDLES=/models EDGEML_MODEL={name} EDGEML_PORT={port}
Environment=EDGEML_ADMIN_PORT={admin_port} EDGEML_REUSE_PORT=1 EDGEML_BIND_WHEN_READY=1
Environment=EDGEML_DRAIN_SECONDS=1
Notify=healthy
HealthCmd={health}
HealthInterval=2s

[Install]
WantedBy=multi-user.target
"""


class FakeHost:
    """systemctl/journalctl/podman stand-in: services are real server processes."""

    def __init__(self, unit_dir: Path, bundle_root: Path, log_dir: Path) -> None:
        self.unit_dir = unit_dir
        self.bundle_root = bundle_root
        self.log_dir = log_dir
        self.images: dict[str, dict[str, t.Any]] = {
            IMAGE: {"Id": IMAGE_ID[7:], "Digest": IMAGE_DIGEST, "RepoDigests": [f"localhost/x@{IMAGE_DIGEST}"]},
            IMAGE2: {"Id": IMAGE2_ID[7:], "Digest": "sha256:" + "e" * 64, "RepoDigests": []},
            BROKEN_IMAGE: {"Id": "c" * 64, "Digest": "sha256:" + "f" * 64, "RepoDigests": []},
        }
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.calls: list[str] = []
        self.podman = "5.4.2"  # what `podman version --format {{.Client.Version}}` prints

    # --- the HostClient interface -------------------------------------------------------
    def podman_version(self) -> str:
        self.calls.append("podman version")
        return self.podman

    def image_inspect(self, ref: str) -> dict[str, t.Any] | None:
        self.calls.append(f"podman image inspect {ref}")
        return self.images.get(ref)

    def daemon_reload(self) -> None:
        self.calls.append("systemctl daemon-reload")

    def _unit_file(self, service: str) -> Path:
        return self.unit_dir / service.replace(".service", ".container")

    def start(self, service: str) -> None:
        self.calls.append(f"systemctl start {service}")
        text = self._unit_file(service).read_text()
        env = dict(os.environ, PYTHONPATH=str(SERVER_DIR), PYTHONDONTWRITEBYTECODE="1")
        for line in text.splitlines():
            if line.startswith("Environment="):
                for pair in line[len("Environment=") :].split():
                    key, _unused1, value = pair.partition("=")
                    env[key] = value
        env["EDGEML_BUNDLES"] = str(self.bundle_root)  # the unit's /models mount
        env["EDGEML_HOST"] = "127.0.0.1"
        if f"Image={BROKEN_IMAGE}" in text:
            env["EDGEML_MODEL"] = "Not A Name"  # the process exits with status 2 at once
        log = self.log_dir / f"{service}-{len(self.calls)}.log"
        self.logs[service] = log
        with open(log, "wb") as handle:
            self.procs[service] = subprocess.Popen(
                [sys.executable, "-m", "edgeml_server"], stdout=handle, stderr=subprocess.STDOUT, env=env
            )

    def stop(self, service: str) -> None:
        self.calls.append(f"systemctl stop {service}")
        proc = self.procs.pop(service, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def service_state(self, service: str) -> dict[str, str]:
        if not self._unit_file(service).exists() and service not in self.procs:
            return {"LoadState": "not-found", "ActiveState": "inactive", "NRestarts": "0"}
        proc = self.procs.get(service)
        if proc is None:
            active = "inactive"
        else:
            active = "active" if proc.poll() is None else "failed"
        return {"LoadState": "loaded", "ActiveState": active, "Result": "exit-code", "NRestarts": "0"}

    def log_tail(self, service: str, container: str, lines: int) -> list[str]:
        log = self.logs.get(service)
        return log.read_text(errors="replace").splitlines()[-lines:] if log else []

    # --- test helpers -------------------------------------------------------------------
    def stop_all(self) -> None:
        for service in list(self.procs):
            self.stop(service)

    def running(self) -> list[str]:
        return sorted(s for s, p in self.procs.items() if p.poll() is None)


def wait_for(predicate: t.Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def start_server(
    root: Path, log: Path, version: str | None = None, admin_port: int | None = None
) -> tuple[subprocess.Popen[bytes], int, int]:
    """One real server (no systemd involved): (process, public port, admin port)."""
    port, admin = free_port(), admin_port or free_port()
    args = [
        sys.executable, "-m", "edgeml_server", "--bundles", str(root), "--model", "digits",
        "--host", "127.0.0.1", "--port", str(port), "--admin-port", str(admin),
    ]  # fmt: skip
    if version:
        args += ["--version", version]
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            args,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONPATH=str(SERVER_DIR), PYTHONDONTWRITEBYTECODE="1"),
        )
    return proc, port, admin


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
