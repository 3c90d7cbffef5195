"""In-place staging: a candidate judged on the admin listener before public traffic reaches it,
then promote (old kept as standby), revert (standby back) or commit (standby released)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import requests

import bundlewriter as bw

REPO = "/v2/repository/models/digits"
INFER = "/v2/models/digits/infer"


def _version(v: str) -> dict[str, Any]:
    return {"parameters": {"version": v}}


def _expected(model_bytes: bytes, row: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return sess.run(["probabilities"], {"X": row})[0]


class PhasedClient:
    """Public client threads that check every answer against the model of its version.

    ``phase`` is moved by the test around each admin call (odd: call in progress, even:
    call returned); each answer records the phase when its request started and ended.
    """

    def __init__(self, url: str, row: np.ndarray, expected: dict[str, np.ndarray], threads: int = 4) -> None:
        self.url = url
        self.body = json.dumps({"inputs": [bw._tensor("X", row)]}).encode()
        self.expected = expected
        self.phase = 0
        self.lock = threading.Lock()
        self.records: list[tuple[int, int, str]] = []
        self.failures: list[str] = []
        self.stop_event = threading.Event()
        self.deadline = time.monotonic() + 60
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> PhasedClient:
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
            started = self.phase
            try:
                r = sess.post(self.url, data=self.body, timeout=10)
                problem = self._check(r)
            except Exception as exc:
                problem = repr(exc)
            with self.lock:
                if problem:
                    self.failures.append(problem)
                else:
                    self.records.append((started, self.phase, r.json()["model_version"]))
        sess.close()

    def _check(self, r: requests.Response) -> str | None:
        if r.status_code != 200:
            return f"{r.status_code} {r.text[:200]}"
        doc = r.json()
        version = doc["model_version"]
        proba = next(o for o in doc["outputs"] if o["name"] == "probabilities")
        got = np.asarray(proba["data"], dtype=np.float32).reshape(proba["shape"])
        if version not in self.expected or not np.allclose(got, self.expected[version], rtol=1e-4, atol=1e-5):
            return f"answer labelled version {version} does not match that version's model"
        return None

    def admin_call(self, fn: Any) -> Any:
        """Run an admin call between two phases: odd while it runs, even once it returned."""
        self.phase += 1
        try:
            return fn()
        finally:
            self.phase += 1

    def wait_answers(self, n: int, timeout: float = 20.0) -> bool:
        with self.lock:
            target = len(self.records) + n
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.records) >= target:
                    return True
            time.sleep(0.01)
        return False

    def versions(self, started: tuple[int, int], ended: tuple[int, int]) -> set[str]:
        """Versions of the answers whose request started and ended within these phase ranges."""
        with self.lock:
            return {
                v for s, e, v in self.records if started[0] <= s <= started[1] and ended[0] <= e <= ended[1]
            }


def _metric_sum(text: str, name: str, *labels: str) -> float:
    """Sum of the samples of NAME that carry every one of LABELS (e.g. 'version="2"')."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(lab in line for lab in labels):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_staged_version_is_judged_before_public_traffic(
    make_server, bundle_root: Path, models: dict[str, bytes], rows: np.ndarray
) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    row = rows[5:6]
    expected = {"1": _expected(models["a"], row), "2": _expected(models["b"], row)}
    assert not np.allclose(expected["1"], expected["2"])  # the two versions are told apart
    body = {"inputs": [bw._tensor("X", row)]}
    with PhasedClient(s.url + INFER, row, expected) as c:
        assert c.wait_answers(100)
        # Phase 2: staged. Nothing public changes.
        r = c.admin_call(lambda: s.admin("POST", f"{REPO}/stage", json=_version("2")))
        assert r.status_code == 200 and r.json() == {"model": "digits", "version": "2", "status": "staged"}
        st = s.admin("GET", f"{REPO}/status").json()
        assert st["serving_version"] == "1" and st["candidate_version"] == "2" and st["standby_version"] is None
        # The candidate answers on the admin listener, by its version only.
        assert s.admin("GET", "/v2/models/digits/versions/2/ready").json() == {
            "name": "digits",
            "version": "2",
            "ready": True,
        }
        assert s.admin("GET", "/v2/models/digits/versions/2").json()["versions"] == ["2"]
        r = s.admin("POST", "/v2/models/digits/versions/2/infer", json=body)
        assert r.status_code == 200 and r.json()["model_version"] == "2"
        assert s.admin("POST", INFER, json=body).json()["model_version"] == "1"
        assert s.admin("GET", "/v2/models/digits").json()["versions"] == ["1"]
        # ... and never on the public listener.
        r = s.post("/v2/models/digits/versions/2/infer", json=body)
        assert r.status_code == 404 and "not loaded" in r.json()["error"]
        assert s.get("/v2/models/digits/versions/2/ready").status_code == 404
        assert s.get("/v2/models/digits/versions/2").status_code == 404
        assert c.wait_answers(200)
        # Phase 4: promoted.
        r = c.admin_call(lambda: s.admin("POST", f"{REPO}/promote", json=_version("2")))
        assert r.status_code == 200, r.text
        assert r.json() == {"model": "digits", "version": "2", "previous_version": "1", "status": "promoted"}
        assert c.wait_answers(200)
        st = s.admin("GET", f"{REPO}/status").json()
        assert st["serving_version"] == "2" and st["candidate_version"] is None and st["standby_version"] == "1"
        # The standby stays loaded and addressable on the admin listener only.
        r = s.admin("POST", "/v2/models/digits/versions/1/infer", json=body)
        assert r.status_code == 200 and r.json()["model_version"] == "1"
        assert s.post("/v2/models/digits/versions/1/infer", json=body).status_code == 404
        # Phase 6: reverted.
        r = c.admin_call(lambda: s.admin("POST", f"{REPO}/revert"))
        assert r.status_code == 200, r.text
        assert r.json() == {"model": "digits", "version": "1", "reverted_version": "2", "status": "reverted"}
        assert c.wait_answers(200)
    assert c.failures == [], c.failures[:5]
    # Answered before promote was called: the old version only, the candidate staged or not.
    assert c.versions((0, 2), (0, 2)) == {"1"}
    # Started after promote returned (and done before revert was called): the new one only.
    # Requests in flight while promote ran may be either.
    assert c.versions((4, 4), (4, 4)) == {"2"}
    # Started after revert returned: the old one again.
    assert c.versions((6, 6), (6, 6)) == {"1"}
    st = s.admin("GET", f"{REPO}/status").json()
    assert st["serving_version"] == "1" and st["standby_version"] is None and st["candidate_version"] is None
    assert s.wait(lambda: s.admin("GET", f"{REPO}/status").json()["draining_versions"] == [])
    assert s.admin("POST", f"{REPO}/revert").status_code == 409  # nothing left to revert to
    # Requests to the candidate were counted under its own version, latency included.
    text = s.get("/metrics").text
    infer_v2 = ('endpoint="infer"', 'version="2"')
    assert _metric_sum(text, "edgeml_requests_total", 'code="200"', *infer_v2) > 0
    assert _metric_sum(text, "edgeml_request_duration_seconds_count", *infer_v2) == _metric_sum(
        text, "edgeml_requests_total", *infer_v2
    )
    # Plain swaps were not involved.
    assert st["swaps"] == {"success": 0, "failure": 0}


def test_commit_releases_the_standby(make_server, bundle_root: Path) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    r = s.admin("POST", f"{REPO}/commit")
    assert r.status_code == 200 and r.json()["status"] == "nothing to commit"
    assert s.admin("POST", f"{REPO}/stage", json=_version("2")).status_code == 200
    assert s.admin("POST", f"{REPO}/promote", json=_version("2")).status_code == 200
    r = s.admin("POST", f"{REPO}/commit")
    assert r.status_code == 200
    assert r.json() == {"model": "digits", "version": "2", "released_version": "1", "status": "committed"}
    st = s.admin("GET", f"{REPO}/status").json()
    assert st["serving_version"] == "2" and st["standby_version"] is None and st["candidate_version"] is None
    assert s.wait(lambda: s.admin("GET", f"{REPO}/status").json()["draining_versions"] == [])
    assert s.admin("GET", "/v2/models/digits/versions/1/ready").status_code == 404  # really gone
    assert s.admin("POST", f"{REPO}/commit").json()["status"] == "nothing to commit"  # idempotent
    assert s.admin("POST", f"{REPO}/revert").status_code == 409
    assert "unloaded old version" in [rec.get("msg") for rec in s.log_records()]


def test_failed_and_refused_staging_leave_current_alone(
    make_server, bundle_root: Path, models: dict[str, bytes]
) -> None:
    bw.write_bundle(bundle_root, "digits", "4", models["b"], tamper_outputs=True)
    s = make_server(bundle_root)
    assert s.wait_ready()
    r = s.admin("POST", f"{REPO}/stage", json=_version("4"))
    assert r.status_code == 422 and "differs from the recorded value" in r.json()["error"]
    assert r.json()["serving_version"] == "1"
    r = s.admin("POST", f"{REPO}/stage", json=_version("99"))
    assert r.status_code == 404 and "does not exist" in r.json()["error"]
    r = s.admin("POST", f"{REPO}/stage", json=_version("1"))
    assert r.status_code == 409 and "already served" in r.json()["error"]
    assert s.admin("POST", f"{REPO}/stage").status_code == 400  # the version is required
    assert s.admin("POST", f"{REPO}/stage", json=_version("../x")).status_code == 422
    assert s.admin("GET", f"{REPO}/stage").status_code == 405
    st = s.admin("GET", f"{REPO}/status").json()
    assert st["serving_version"] == "1" and st["candidate_version"] is None
    assert st["last_stage"]["result"] == "failure" and st["last_stage"]["requested_version"] == "../x"
    assert st["swaps"] == {"success": 0, "failure": 0}
    # promote only what is staged, and say what is.
    r = s.admin("POST", f"{REPO}/promote", json=_version("2"))
    assert r.status_code == 409 and "nothing is staged" in r.json()["error"]
    assert s.admin("POST", f"{REPO}/stage", json=_version("2")).status_code == 200
    r = s.admin("POST", f"{REPO}/promote", json=_version("3"))
    assert r.status_code == 409 and "'2' is staged" in r.json()["error"] and r.json()["candidate_version"] == "2"
    assert s.admin("POST", f"{REPO}/promote").status_code == 400
    assert s.serving() == "1"
    # unstage drops the candidate; again is fine.
    r = s.admin("POST", f"{REPO}/unstage")
    assert r.status_code == 200 and r.json() == {"model": "digits", "version": "2", "status": "unstaged"}
    assert s.admin("POST", f"{REPO}/unstage").json()["status"] == "nothing staged"
    assert s.admin("GET", "/v2/models/digits/versions/2/ready").status_code == 404
    assert s.wait(lambda: s.admin("GET", f"{REPO}/status").json()["draining_versions"] == [])
    # None of it is on the public port.
    assert s.post(f"{REPO}/stage", json=_version("2")).status_code == 404


def test_plain_swap_ends_a_staged_deployment(make_server, bundle_root: Path, models: dict[str, bytes]) -> None:
    bw.write_bundle(bundle_root, "digits", "3", models["a"])
    s = make_server(bundle_root)
    assert s.wait_ready()
    assert s.admin("POST", f"{REPO}/stage", json=_version("2")).status_code == 200
    assert s.admin("POST", f"{REPO}/promote", json=_version("2")).status_code == 200
    assert s.admin("POST", f"{REPO}/stage", json=_version("3")).status_code == 200
    st = s.admin("GET", f"{REPO}/status").json()
    assert (st["serving_version"], st["standby_version"], st["candidate_version"]) == ("2", "1", "3")
    # The pointer still says 1: a SIGHUP swaps to it and drops both the candidate and the standby.
    s.hup()
    assert s.wait(lambda: s.serving() == "1"), s.logs()
    st = s.admin("GET", f"{REPO}/status").json()
    assert st["standby_version"] is None and st["candidate_version"] is None
    assert st["last_swap"]["previous_version"] == "2"
    assert s.wait(lambda: s.admin("GET", f"{REPO}/status").json()["draining_versions"] == [])
    assert s.admin("POST", f"{REPO}/revert").status_code == 409


def test_stage_and_promote_repair_an_instance_that_is_not_ready(
    make_server, bundle_root: Path, models: dict[str, bytes]
) -> None:
    bw.write_bundle(bundle_root, "digits", "9", models["b"], tamper_outputs=True)
    s = make_server(bundle_root, version="9")
    assert s.wait(lambda: "initial load failed" in str(s.get("/v2/models/digits/status").json()["error"]))
    assert s.admin("POST", f"{REPO}/stage", json=_version("2")).status_code == 200
    assert s.admin("GET", "/v2/models/digits/versions/2/ready").status_code == 200
    assert s.get("/v2/health/ready").status_code == 503  # the public side is still not ready
    r = s.admin("POST", f"{REPO}/promote", json=_version("2"))
    assert r.status_code == 200 and r.json()["previous_version"] is None
    assert s.get("/v2/health/ready").status_code == 200 and s.serving() == "2"
    assert s.admin("GET", f"{REPO}/status").json()["standby_version"] is None


def test_a_slow_candidate_on_the_admin_listener_does_not_hold_up_public_traffic(
    make_server, tmp_path: Path, models: dict[str, bytes], rows: np.ndarray
) -> None:
    """The gates' requests to a staged candidate run beside public traffic, not before it:
    public answers keep coming, from the serving version, while a candidate that takes
    about a second a request answers on the admin listener."""
    root = tmp_path / "bundles"
    bw.write_bundle(root, "digits", "1", models["a"], pointer=True)
    slow = bw.make_slow_onnx(models["a"], layers=150)
    bw.write_bundle(root, "digits", "2", slow, rows=rows[:1])
    s = make_server(root)
    assert s.wait_ready()
    assert s.admin("POST", f"{REPO}/stage", json=_version("2")).status_code == 200
    row = rows[:1]
    public: list[tuple[float, float, str]] = []
    stop = threading.Event()

    def public_client() -> None:
        body = {"inputs": [bw._tensor("X", row)]}
        with requests.Session() as sess:
            while not stop.is_set():
                started = time.monotonic()
                r = sess.post(s.url + INFER, json=body, timeout=30)
                assert r.status_code == 200, r.text
                public.append((started, time.monotonic(), r.json()["model_version"]))

    client = threading.Thread(target=public_client, daemon=True)
    client.start()
    try:
        body = {"inputs": [bw._tensor("X", row)]}
        for _attempt in range(3):
            began = time.monotonic()
            r = s.admin("POST", "/v2/models/digits/versions/2/infer", json=body)
            ended = time.monotonic()
            assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    finally:
        stop.set()
        client.join(timeout=30)
    # Answers to requests sent well after the candidate's request began (the server had it
    # by then) and answered before it was: none if the candidate's run held the event loop.
    meanwhile = [version for start, end, version in public if began + 0.2 < start and end < ended]
    assert len(meanwhile) >= 3, (ended - began, len(public))
    assert set(meanwhile) == {"1"}
