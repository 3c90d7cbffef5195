"""The probes: the one-URL healthcheck, and --answers (readiness with the answer check).

--answers runs as Kubernetes would run it: a subprocess against a real server with real
onnxruntime on 127.0.0.1, reading real bundles. The "wrong" model is really trained wrong
(on shifted labels), so its bundle records its own wrong answers, the server's self-test
passes and the server IS ready: only the ground truth (`expected`) can catch it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeml_server.bundle import BundleError, TensorSpec, run_smoke_tests
from edgeml_server.probe import PROBE_REQUEST_ID, first_mismatch

import bundlewriter as bw
from conftest import ServerProc

SERVER_SRC = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "edgeml_server.probe", *args]
    return subprocess.run(command, check=False, cwd=SERVER_SRC, capture_output=True, text=True, timeout=30)


def _probe(*args: str) -> int:
    return _run(*args).returncode


# --- the one-URL form (quadlet HealthCmd=, the image's HEALTHCHECK) ---------------------


def test_probe_follows_readiness(server):
    assert _probe(f"{server.url}/v2/health/ready") == 0
    assert _probe(f"{server.url}/v2/models/nosuchmodel/ready") == 1


def test_probe_fails_when_nothing_listens():
    assert _probe("http://127.0.0.1:9/v2/health/ready") == 1


def test_probe_needs_exactly_one_url():
    assert _probe("") == 1
    assert _probe() == 2


# --- --answers --------------------------------------------------------------------------


def _wrongly_trained_onnx() -> bytes:
    """A digits MLP trained on labels shifted by one: it confidently answers y+1."""
    from skl2onnx import to_onnx
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    x, y = bw.digits_data()
    clf = MLPClassifier(hidden_layer_sizes=(16,), max_iter=60, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, (y + 1) % 10)
    onx = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    return onx.SerializeToString()


def _label(value: int) -> dict[str, Any]:
    return {"name": "label", "datatype": "INT64", "shape": [1], "data": [int(value)]}


def _edit_manifest(bdir: Path, edit: Any) -> None:
    path = bdir / "model.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, sort_keys=True, indent=2) + "\n")


def _with_ground_truth(bdir: Path, labels: list[int]) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        for vector, label in zip(manifest["smoke_tests"]["vectors"], labels, strict=True):
            vector["expected"] = [_label(label)]

    _edit_manifest(bdir, edit)


def _variant(src_root: Path, dst_root: Path, version: str, edit: Any) -> Path:
    """A copy of SRC_ROOT/digits/VERSION under DST_ROOT, its model.json edited."""
    bdir = dst_root / "digits" / version
    shutil.copytree(src_root / "digits" / version, bdir)
    _edit_manifest(bdir, edit)
    return dst_root


@pytest.fixture(scope="module")
def truth(models: dict[str, bytes]) -> dict[str, Any]:
    """Four digits rows that model 'a' classifies right, and their true labels."""
    import onnxruntime as ort

    x, y = bw.digits_data()
    sess = ort.InferenceSession(models["a"], providers=["CPUExecutionProvider"])
    predicted = sess.run(["label"], {"X": x[:64]})[0]
    right = [i for i in range(64) if predicted[i] == y[i]][:4]
    assert len(right) == 4
    return {"rows": x[right], "labels": [int(v) for v in y[right]]}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory, models: dict[str, bytes], truth: dict[str, Any]) -> Path:
    """digits/1: a good model; digits/2: a wrongly trained one. Both with the true labels."""
    root = tmp_path_factory.mktemp("answers") / "bundles"
    good = bw.write_bundle(root, "digits", "1", models["a"], truth["rows"], pointer=True)
    wrong = bw.write_bundle(root, "digits", "2", _wrongly_trained_onnx(), truth["rows"])
    _with_ground_truth(good, truth["labels"])
    _with_ground_truth(wrong, truth["labels"])
    return root


def _serve(root: Path, version: str) -> Iterator[ServerProc]:
    s = ServerProc(root, version=version, admin=False)
    try:
        assert s.wait_ready(), s.logs()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def good_server(bundles: Path) -> Iterator[ServerProc]:
    yield from _serve(bundles, "1")


@pytest.fixture(scope="module")
def wrong_server(bundles: Path) -> Iterator[ServerProc]:
    yield from _serve(bundles, "2")


def _answers(server_url: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    return _run("--answers", server_url, str(root), "digits", *extra)


def test_right_answers_are_ready(good_server, bundles):
    result = _answers(good_server.url, bundles, "--verbose")
    assert result.returncode == 0, result.stderr
    assert "digits 1; 4 of 4 vectors with 'expected' answered right" in result.stderr
    # Without --verbose a pass says nothing.
    quiet = _answers(good_server.url, bundles)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_wrong_answers_are_not_ready_though_the_server_is(wrong_server, bundles, truth):
    # The server's own readiness (its self-test against the recorded outputs) passes ...
    ready = wrong_server.get("/v2/models/digits/ready")
    assert ready.status_code == 200 and ready.json()["version"] == "2"
    assert _probe(f"{wrong_server.url}/v2/models/digits/ready") == 0
    # ... the answer check does not, and says which vector answered what.
    result = _answers(wrong_server.url, bundles)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    first = truth["labels"][0]
    assert lines[0].startswith("not ready: digits 2: 4 of 4 smoke vectors with 'expected' answered wrongly: ")
    assert f"vector 0: output 'label' expected [{first}], got [{(first + 1) % 10}]" in lines[0]


def test_only_vectors_with_expected_are_checked(wrong_server, bundles, tmp_path, truth):
    """One vector with right ground truth, one wrong; the others have none."""
    answers = [(label + 1) % 10 for label in truth["labels"]]

    def edit(manifest: dict[str, Any]) -> None:
        vectors = manifest["smoke_tests"]["vectors"]
        for vector in vectors:
            del vector["expected"]
        vectors[1]["expected"] = [_label(answers[1])]
        vectors[3]["expected"] = [_label(answers[3] + 1)]

    root = _variant(bundles, tmp_path / "mixed", "2", edit)
    result = _answers(wrong_server.url, root)
    assert result.returncode == 1
    assert "1 of 2 smoke vectors with 'expected' answered wrongly: vector 3: output 'label'" in result.stderr


def test_floating_outputs_use_the_manifest_tolerance(good_server, bundles, tmp_path):
    """Expected probabilities: within atol + rtol*|expected| pass, beyond fail."""

    def nudge(by: float) -> Any:
        def edit(manifest: dict[str, Any]) -> None:
            vector = manifest["smoke_tests"]["vectors"][2]
            proba = next(t for t in vector["outputs"] if t["name"] == "probabilities")
            want = dict(proba, data=[v + by for v in proba["data"]])
            vector["expected"] = [*vector["expected"], want]

        return edit

    # tolerance is rtol 1e-4, atol 1e-5
    close = _variant(bundles, tmp_path / "close", "1", nudge(5e-6))
    assert _answers(good_server.url, close).returncode == 0
    far = _variant(bundles, tmp_path / "far", "1", nudge(1e-3))
    result = _answers(good_server.url, far)
    assert result.returncode == 1
    assert "vector 2: output 'probabilities' expected [" in result.stderr
    assert "(rtol=0.0001, atol=1e-05), first difference at index 0" in result.stderr


def test_a_bundle_without_expected_is_ready_on_the_self_test_and_says_so(good_server, bundles, tmp_path):
    def edit(manifest: dict[str, Any]) -> None:
        for vector in manifest["smoke_tests"]["vectors"]:
            del vector["expected"]

    root = _variant(bundles, tmp_path / "plain", "1", edit)
    result = _answers(good_server.url, root)
    assert result.returncode == 0
    assert "ready: digits 1 on its self-test only: its bundle has no smoke vector with 'expected'" in result.stderr
    strict = _answers(good_server.url, root, "--require-expected")
    assert strict.returncode == 1
    assert "has no smoke vector with 'expected' (--require-expected)" in strict.stderr


def test_the_served_version_needs_its_bundle(good_server, tmp_path):
    result = _answers(good_server.url, tmp_path / "empty")
    assert result.returncode == 1
    assert "the server serves digits 1 but there is no " in result.stderr
    assert str(tmp_path / "empty" / "digits" / "1" / "model.json") in result.stderr


def test_a_server_that_is_not_ready_fails(make_server, tmp_path, models, truth):
    root = tmp_path / "b"
    bdir = bw.write_bundle(root, "digits", "1", models["a"], truth["rows"], tamper_outputs=True, pointer=True)
    _with_ground_truth(bdir, truth["labels"])
    s = make_server(root, admin=False)
    assert s.wait(lambda: "initial load failed" in (s.get("/v2/health/ready").json().get("error") or ""))
    result = _answers(s.url, root)
    assert result.returncode == 1
    assert result.stderr.startswith("not ready: GET /v2/models/digits/ready answered 503: ")
    assert "differs from the recorded value" in result.stderr
    # and a model it does not serve
    other = _run("--answers", s.url, str(root), "other")
    assert other.returncode == 1 and "answered 404" in other.stderr


def test_no_answer_fails(bundles):
    refused = _answers("http://127.0.0.1:9", bundles)
    assert refused.returncode == 1
    assert refused.stderr.startswith("not ready: GET http://127.0.0.1:9/v2/models/digits/ready failed: ")


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    listener.close()


def test_a_silent_server_times_out(silent_port, bundles):
    url = f"http://127.0.0.1:{silent_port}"
    per_request = _answers(url, bundles, "--timeout", "0.3", "--deadline", "5")
    assert per_request.returncode == 1
    assert per_request.stderr.strip() == f"not ready: GET {url}/v2/models/digits/ready timed out"
    overall = _answers(url, bundles, "--timeout", "5", "--deadline", "0.3")
    assert overall.returncode == 1
    # the socket timeout (shortened to what is left) or the probe's alarm, whichever comes first
    assert overall.stderr.strip() in (
        f"not ready: GET {url}/v2/models/digits/ready timed out",
        "not ready: the probe's deadline of 0.3 s passed",
    )


def test_usage_errors_exit_2():
    assert _probe("--answers") == 2
    assert _probe("--answers", "http://127.0.0.1:9", "/nonexistent", "digits", "--deadline", "0") == 2
    bad_url = _run("--answers", "ftp://x", "/nonexistent", "digits")
    assert bad_url.returncode == 1 and "is not an http:// or https:// URL" in bad_url.stderr
    bad_name = _run("--answers", "http://127.0.0.1:9", "/nonexistent", "../etc")
    assert bad_name.returncode == 1 and "invalid model name" in bad_name.stderr


def test_probe_requests_are_marked(good_server, bundles):
    """The probe's inference requests carry an id, so they can be told apart in answers."""
    body = {"id": PROBE_REQUEST_ID, "inputs": [bw._tensor("X", bw.digits_data()[0][:1])]}
    assert good_server.post("/v2/models/digits/infer", json=body).json()["id"] == PROBE_REQUEST_ID


# --- the comparison is the server's -----------------------------------------------------


class _FakeSession:
    def __init__(self, answer: np.ndarray) -> None:
        self.answer = answer

    def run(self, _names: list[str], _feeds: dict[str, Any]) -> list[np.ndarray]:
        return [self.answer]


def _server_says_match(datatype: str, got: list[Any], want: list[Any], rtol: float, atol: float) -> bool:
    """bundle.run_smoke_tests' verdict on one output (numpy, as at load)."""
    dtype = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_,
             "BYTES": object}
    smoke = {
        "tolerance": {"rtol": rtol, "atol": atol},
        "vectors": [
            {
                "inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [0.0]}],
                "outputs": [{"name": "y", "datatype": datatype, "shape": [len(want)], "data": want}],
            }
        ],
    }
    session = _FakeSession(np.asarray(got, dtype=dtype[datatype]))
    try:
        run_smoke_tests(session, smoke, [TensorSpec("X", "FP32", (1,))], [TensorSpec("y", datatype, (-1,))])
    except BundleError:
        return False
    return True


INF, NAN = float("inf"), float("nan")
CASES = [
    ("FP32", [0.1, 0.2], [0.1, 0.2], 0.0, 0.0),  # float32 rounding of the recorded value
    ("FP32", [0.1], [0.1 + 1e-9], 0.0, 0.0),
    ("FP32", [1.0], [1.0 + 2e-5], 0.0, 1e-5),
    ("FP32", [1.0], [1.0 + 5e-6], 0.0, 1e-5),
    ("FP32", [100.0], [100.009], 1e-4, 0.0),
    ("FP32", [100.0], [100.011], 1e-4, 0.0),
    ("FP64", [1.0], [1.0 + 1e-12], 0.0, 0.0),
    ("FP64", [NAN], [NAN], 0.0, 0.0),
    ("FP64", [1.0], [NAN], 1.0, 1.0),
    ("FP64", [INF], [INF], 0.0, 0.0),
    ("FP64", [-INF], [INF], 0.0, 0.0),
    ("FP64", [5.0], [INF], 0.0, 0.0),
    ("FP64", [5.0], [INF], 1e-4, 0.0),
    ("FP16", [0.1], [0.1], 0.0, 0.0),
    ("FP16", [0.1], [0.1001], 0.0, 0.0),
    ("FP32", [float(np.finfo(np.float32).max)], [1e39], 0.0, 0.0),
    ("INT64", [3, 4], [3, 4], 1.0, 1.0),
    ("INT64", [3, 4], [3, 5], 1.0, 1.0),
    ("INT64", [3], [3.0], 0.0, 0.0),
    ("BOOL", [True, False], [True, False], 0.0, 0.0),
    ("BOOL", [True, False], [True, True], 0.0, 0.0),
    ("BYTES", ["cat", "dog"], ["cat", "dog"], 0.0, 0.0),
    ("BYTES", ["cat", "dog"], ["cat", "cow"], 1.0, 1.0),
]


@pytest.mark.parametrize(("datatype", "got", "want", "rtol", "atol"), CASES)
def test_comparison_agrees_with_the_server_self_test(datatype, got, want, rtol, atol):
    # The server answers what numpy holds; the probe sees it through JSON, as Python floats.
    answered = np.asarray(got, dtype={"FP16": np.float16, "FP32": np.float32}.get(datatype)).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf, inf - inf
        server = _server_says_match(datatype, got, want, rtol, atol)
    probe = first_mismatch(datatype, answered, want, rtol, atol) is None
    assert probe == server
