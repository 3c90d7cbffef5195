# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Clients of model_deployment (private): the model server's HTTP API, the service
manager and container engine (systemctl, journalctl, podman), and files on the host.

Stdlib and ansible imports only: this runs on edge hosts with a bare /usr/bin/python3.
HTTP goes through ``ansible.module_utils.urls.open_url`` (never curl), commands through
``AnsibleModule.run_command`` (argument lists, no shell). Nothing here decides anything;
the service and runner layers do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import typing as t
from urllib.error import HTTPError, URLError

from ansible.module_utils.urls import open_url
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._podman_support import PODMAN_VERSION_ARGS

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


class HttpAnswer:
    """One HTTP answer: status (0 when no connection), parsed JSON (or None), raw text."""

    def __init__(self, status: int, text: str, seconds: float, error: str | None = None) -> None:
        self.status = status
        self.text = text
        self.seconds = seconds
        self.error = error
        try:
            self.json: t.Any = json.loads(text) if text else None
        except ValueError:
            self.json = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def reason(self) -> str:
        """A short human reason for a failed answer."""
        if self.status == 0:
            return self.error or "no connection"
        if isinstance(self.json, dict) and self.json.get("error"):
            return f"HTTP {self.status}: {self.json['error']}"
        return f"HTTP {self.status}: {self.text[:200]}"


class ServerClient:
    """The model server of ONE slot, through its loopback admin port.

    The admin port serves the repository (load) API and, since server 0.2, the whole
    public read/infer API of that one instance, so gates measure exactly the slot under
    test even while two slots share the public port.
    """

    def __init__(self, admin_port: int, name: str, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
        self.base = f"http://{host}:{admin_port}"
        self.name = name
        self.timeout = timeout

    def request(self, method: str, path: str, doc: t.Any = None, timeout: float | None = None) -> HttpAnswer:
        data = None if doc is None else json.dumps(doc, separators=(",", ":"))
        started = time.monotonic()
        try:
            resp = open_url(
                self.base + path,
                method=method,
                data=data,
                headers=JSON_HEADERS,
                timeout=timeout or self.timeout,
                use_proxy=False,  # loopback: never through an HTTP proxy from the environment
                follow_redirects="none",
                validate_certs=False,
            )
            body = resp.read()
            status = resp.getcode()
        except HTTPError as exc:
            body = exc.read() if hasattr(exc, "read") else b""
            status = exc.code
        except (URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return HttpAnswer(0, "", time.monotonic() - started, f"cannot connect to {self.base}: {reason}")
        return HttpAnswer(status, body.decode("utf-8", "replace"), time.monotonic() - started)

    # --- the endpoints the deployer uses ----------------------------------------------
    def status(self) -> HttpAnswer:
        return self.request("GET", f"/v2/models/{self.name}/status")

    def version_ready(self, version: str) -> HttpAnswer:
        return self.request("GET", f"/v2/models/{self.name}/versions/{version}/ready")

    def _repository(self, action: str, version: str | None = None, timeout: float | None = None) -> HttpAnswer:
        doc = {"parameters": {"version": version}} if version else {}
        return self.request("POST", f"/v2/repository/models/{self.name}/{action}", doc, timeout=timeout)

    def load(self, version: str, timeout: float) -> HttpAnswer:
        """Swap to VERSION at once (public traffic included): repairs and restores only."""
        return self._repository("load", version, timeout)

    # A staged deployment on one server: stage (candidate loaded, reachable only here by
    # its version), promote (public traffic moves to it, the old version kept loaded),
    # then commit (old version released) or revert (old version back at once).
    def stage(self, version: str, timeout: float) -> HttpAnswer:
        return self._repository("stage", version, timeout)

    def unstage(self) -> HttpAnswer:
        return self._repository("unstage")

    def promote(self, version: str) -> HttpAnswer:
        return self._repository("promote", version)

    def revert(self) -> HttpAnswer:
        return self._repository("revert")

    def commit(self) -> HttpAnswer:
        return self._repository("commit")

    def public(self, state: str) -> HttpAnswer:
        """Open or close this server's public listener (blue/green switch): "open" | "close"."""
        return self.request("POST", f"/admin/public/{state}", {})

    def infer(
        self, inputs: list[dict[str, t.Any]], version: str | None = None, timeout: float | None = None
    ) -> HttpAnswer:
        """Infer; with VERSION, addressed to that version (a staged candidate included)."""
        path = f"/v2/models/{self.name}/versions/{version}/infer" if version else f"/v2/models/{self.name}/infer"
        return self.request("POST", path, {"inputs": inputs}, timeout=timeout)

    def metrics(self) -> HttpAnswer:
        return self.request("GET", "/metrics")


class HostClient:
    """systemctl, journalctl and podman through ``run_command``.

    This is the boundary the unit tests replace (the control node running them has no
    systemd/podman service manager to drive); the lab's end-to-end tests cover it for real.
    """

    def __init__(self, module: t.Any) -> None:
        self.module = module

    def _run(self, args: list[str], check: bool = True) -> tuple[int, str, str]:
        binary = self.module.get_bin_path(args[0], required=False)
        if binary is None:
            raise EdgeMLError(
                f"{args[0]} is not installed on this host.",
                "model_deployment needs systemd, journalctl and podman with quadlet (podman >= 5.0).",
            )
        rc, out, err = self.module.run_command([binary, *args[1:]])
        if check and rc != 0:
            raise EdgeMLError(
                f"'{' '.join(args)}' failed with exit code {rc}: {(err or out).strip()[:500]}",
                "Check the host's systemd and podman state (journalctl -xe).",
            )
        return rc, out, err

    def podman_version(self) -> str:
        """The podman client's version as it prints it ("5.4.2")."""
        return self._run(["podman", *PODMAN_VERSION_ARGS])[1].strip()

    def image_inspect(self, ref: str) -> dict[str, t.Any] | None:
        """Id, Digest and RepoDigests of a local image, or None when it is not there."""
        rc, out = self._run(["podman", "image", "inspect", "--format", "json", ref], check=False)[:2]
        if rc != 0:
            return None
        try:
            data = json.loads(out)
        except ValueError:
            return None
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return data[0]
        return None

    def daemon_reload(self) -> None:
        self._run(["systemctl", "daemon-reload"])

    def start(self, service: str) -> None:
        # --no-block: the readiness gate waits with its own timeout and watches the service.
        self._run(["systemctl", "start", "--no-block", service])

    def stop(self, service: str) -> None:
        self._run(["systemctl", "stop", service], check=False)

    def service_state(self, service: str) -> dict[str, str]:
        out = self._run(
            ["systemctl", "show", "-p", "LoadState,ActiveState,SubState,Result,NRestarts", service],
            check=False,
        )[1]
        state = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                state[key.strip()] = value.strip()
        return state

    def log_tail(self, service: str, container: str, lines: int) -> list[str]:
        journal = ["journalctl", "-u", service, "-n", str(lines), "--no-pager", "-o", "cat"]
        rc, out = self._run(journal, check=False)[:2]
        if rc == 0 and out.strip() and "-- No entries --" not in out:
            return out.splitlines()[-lines:]
        rc, out, err = self._run(["podman", "logs", "--tail", str(lines), container], check=False)
        return (out + err).splitlines()[-lines:] if rc == 0 else []


# --- files --------------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


class Files:
    """Atomic writes (a temporary file in the same directory, fsync, rename) and removals.

    Not ``AnsibleModule.atomic_move``: on failure it ends the module at once (fail_json),
    which would skip the restore of the previous version. A failed write here raises
    OSError, which the deploy path catches. The temporary file is created in the target's
    directory, so it takes that directory's SELinux context as atomic_move would.
    """

    def __init__(self, mover: t.Callable[[str, str], t.Any] | None = None) -> None:
        self.mover = mover or os.replace

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".edgeml-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            self.mover(tmp, path)
            os.chmod(path, mode)  # atomic_move gives a new file the umask's mode
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
