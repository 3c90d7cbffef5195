# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The clients of model_deployment: files, HTTP answers, and the command lines of
HostClient (run_command is replaced: no systemd/podman service manager here)."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_client import (
    Files,
    HostClient,
    HttpAnswer,
    ServerClient,
    read_text,
    sha256_file,
)
from ansible_collections.edgeml.fleet.tests.unit.plugins.module_utils import test__deploy_fakes as fx


class FakeModule:
    """Records run_command argument lists; answers from a table keyed by the command."""

    def __init__(self, answers=None, missing=()):
        self.answers = answers or {}
        self.missing = set(missing)
        self.commands = []

    def get_bin_path(self, name, required=False):
        return None if name in self.missing else f"/usr/bin/{name}"

    def run_command(self, args):
        self.commands.append(args)
        key = " ".join(a.rsplit("/", 1)[-1] if i == 0 else a for i, a in enumerate(args))
        for prefix, answer in self.answers.items():
            if key.startswith(prefix):
                return answer
        return 0, "", ""


def test_files_write_is_atomic_with_mode(tmp_path):
    files = Files()
    path = tmp_path / "a" / "b.json"
    files.write(str(path), "one\n", mode=0o600)
    files.write(str(path), "two\n", mode=0o600)
    assert path.read_text() == "two\n" and oct(path.stat().st_mode)[-3:] == "600"
    assert os.listdir(path.parent) == ["b.json"]  # no temporary file left
    files.remove(str(path))
    files.remove(str(path))  # absent: fine
    assert read_text(str(path)) is None


def test_sha256_file(tmp_path):
    (tmp_path / "x").write_bytes(b"abc")
    assert sha256_file(str(tmp_path / "x")) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_http_answer_reason():
    assert HttpAnswer(503, json.dumps({"error": "loading"}), 0.1).reason() == "HTTP 503: loading"
    assert HttpAnswer(0, "", 0.1, "cannot connect").reason() == "cannot connect"
    assert not HttpAnswer(404, "nope", 0.1).ok and HttpAnswer(204, "", 0.1).ok


def test_server_client_without_a_server():
    answer = ServerClient(fx.free_port(), "digits", timeout=2).status()
    assert answer.status == 0 and "cannot connect to http://127.0.0.1:" in answer.reason()


def test_host_client_commands():
    inspect = [{"Id": "ab" * 32, "Digest": "sha256:" + "d" * 64, "RepoDigests": []}]
    module = FakeModule(
        {
            "podman image inspect --format json good": (0, json.dumps(inspect), ""),
            "podman image inspect": (125, "", "no such image"),
            "systemctl show": (0, "LoadState=loaded\nActiveState=active\nNRestarts=2\n", ""),
            "journalctl": (0, "-- No entries --\n", ""),
            "podman logs": (0, "line1\nline2\n", "err\n"),
        }
    )
    host = HostClient(module)
    assert host.image_inspect("good")["Id"] == "ab" * 32
    assert host.image_inspect("bad") is None
    host.daemon_reload()
    host.start("edgeml-digits-blue.service")
    host.stop("edgeml-digits-blue.service")
    assert host.service_state("x.service") == {"LoadState": "loaded", "ActiveState": "active", "NRestarts": "2"}
    assert host.log_tail("x.service", "edgeml-digits-blue", 2) == ["line2", "err"]
    names = [" ".join(c[1:]) for c in module.commands]
    assert "daemon-reload" in names and "start --no-block edgeml-digits-blue.service" in names
    assert "stop edgeml-digits-blue.service" in names
    assert "-u x.service -n 2 --no-pager -o cat" in names and "logs --tail 2 edgeml-digits-blue" in names


def test_host_client_failures():
    host = HostClient(FakeModule({"systemctl daemon-reload": (1, "", "Access denied")}))
    with pytest.raises(EdgeMLError, match="'systemctl daemon-reload' failed with exit code 1: Access denied"):
        host.daemon_reload()
    with pytest.raises(EdgeMLError, match="podman is not installed"):
        HostClient(FakeModule(missing={"podman"})).image_inspect("x")
