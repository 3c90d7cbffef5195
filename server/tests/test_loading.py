"""Loading: sha256 before onnxruntime, manifest checks, self-test gates readiness."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeml_server.bundle import BundleError, load_bundle, read_pointer

import bundlewriter as bw
from conftest import ServerProc


def _assert_not_ready(s: ServerProc, words: str) -> None:
    """Live, not ready, and the reason is on every readiness/metadata endpoint."""
    assert s.get("/v2/health/live").status_code == 200
    for path in ("/v2/health/ready", "/v2/models/digits/ready", "/v2/models/digits"):
        r = s.get(path)
        assert r.status_code == 503, (path, r.text)
        assert words in r.json()["error"], (path, r.text)
    r = s.post("/v2/models/digits/infer", json={"inputs": []})
    assert r.status_code == 503 and words in r.json()["error"]
    st = s.get("/v2/models/digits/status").json()
    assert st["ready"] is False and st["serving_version"] is None and words in st["error"]
    assert 'edgeml_model_ready{model="digits"} 0.0' in s.get("/metrics").text


def test_sha256_mismatch_is_refused(make_server, tmp_path: Path, models: dict[str, bytes]) -> None:
    root = tmp_path / "b"
    bw.write_bundle(root, "digits", "1", models["a"], sha256="0" * 64, pointer=True)
    with pytest.raises(BundleError, match=r"sha256 mismatch .* refusing to load"):
        load_bundle(root, "digits", "1")
    s = make_server(root)
    assert s.wait(lambda: "initial load failed" in (s.get("/v2/health/ready").json().get("error") or ""))
    _assert_not_ready(s, "sha256 mismatch")
    assert any(
        r.get("level") == "error" and "sha256 mismatch" in r.get("reason", "") for r in s.log_records()
    )


def test_tampered_model_bytes_are_refused(tmp_path: Path, models: dict[str, bytes]) -> None:
    root = tmp_path / "b"
    bdir = bw.write_bundle(root, "digits", "1", models["a"])
    blob = bytearray((bdir / "model.onnx").read_bytes())
    blob[-1] ^= 0xFF  # same size, different content
    (bdir / "model.onnx").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(root, "digits", "1")


def test_smoke_vector_failure_means_not_ready(make_server, tmp_path: Path, models: dict[str, bytes]) -> None:
    root = tmp_path / "b"
    bw.write_bundle(root, "digits", "1", models["a"], tamper_outputs=True, pointer=True)
    s = make_server(root)
    assert s.wait(lambda: "initial load failed" in (s.get("/v2/health/ready").json().get("error") or ""))
    _assert_not_ready(s, "differs from the recorded value")


def test_missing_pointer_file_means_not_ready(make_server, tmp_path: Path, models: dict[str, bytes]) -> None:
    root = tmp_path / "b"
    bw.write_bundle(root, "digits", "1", models["a"])
    s = make_server(root)
    assert s.wait(lambda: "initial load failed" in (s.get("/v2/health/ready").json().get("error") or ""))
    _assert_not_ready(s, "pointer file")
    # The operator fixes it (writes the pointer) and sends SIGHUP: the server becomes ready.
    bw.set_pointer(root, "digits", "1")
    s.hup()
    assert s.wait_ready(), s.logs()
    assert s.serving() == "1"


def test_pointer_file_and_explicit_version(make_server, bundle_root: Path) -> None:
    assert read_pointer(bundle_root, "digits") == "1"
    s = make_server(bundle_root, version="2")  # --version wins over the pointer
    assert s.wait_ready()
    assert s.get("/v2/models/digits").json()["versions"] == ["2"]


def test_unknown_version_dir(make_server, bundle_root: Path) -> None:
    s = make_server(bundle_root, version="7")
    assert s.wait(
        lambda: (
            s.get("/v2/health/ready").status_code == 503
            and "does not exist" in s.get("/v2/health/ready").text
        )
    )
    _assert_not_ready(s, "bundle directory")


@pytest.mark.parametrize(
    "mutate,words",
    [
        (lambda m: m.update(schema_version=2), "unsupported schema_version"),
        (lambda m: m.update(name="other"), "does not match bundle directory"),
        (lambda m: m.update(version="9"), "does not match bundle directory"),
        (lambda m: m["model"].update(size=1), "model.json says 1"),
        (lambda m: m["model"].update(file="../x.onnx"), "plain file name"),
        (lambda m: m["signature"]["inputs"][0].update(datatype="FP64"), "signature says inputs 'X' is FP64"),
        (lambda m: m["signature"]["inputs"][0].update(name="Z"), "do not match the model's"),
        (lambda m: m["signature"]["outputs"][1].update(shape=[-1, 11]), "contradicts the model's"),
        (lambda m: m["smoke_tests"].update(vectors=[]), "non-empty list"),
        (
            lambda m: m["smoke_tests"]["vectors"][0]["outputs"][0].update(data=[11]),
            "not equal to the recorded value",
        ),
    ],
)
def test_manifest_checks(tmp_path: Path, models: dict[str, bytes], mutate, words: str) -> None:
    root = tmp_path / "b"
    bdir = bw.write_bundle(root, "digits", "1", models["a"])
    manifest = json.loads((bdir / "model.json").read_text())
    mutate(manifest)
    (bdir / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=words.replace("(", r"\(").replace("[", r"\[")):
        load_bundle(root, "digits", "1")


def test_good_bundle_loads_and_server_writes_nothing(make_server, bundle_root: Path) -> None:
    before = sorted(str(p) for p in bundle_root.rglob("*"))
    s = make_server(bundle_root)
    assert s.wait_ready()
    assert (
        s.post(
            "/v2/models/digits/infer",
            json={"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * 64}]},
        ).status_code
        == 200
    )
    assert sorted(str(p) for p in bundle_root.rglob("*") if "server-" not in p.name) == before
