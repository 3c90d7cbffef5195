# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""model_release_export and model_release_import up to the registry: real bundles signed
with the real model-signing library, images built, saved and loaded by the real podman of
this machine. The server image here is a small image built FROM scratch (no registry or
network is reachable from this layer); the import into a real site registry and a
deployment from it on the lab fleet: tests/e2e/test_bundle_delivery.py."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_signing as signing
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import bundle_files
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.module_utils._release_archive import split_image_reference
from ansible_collections.edgeml.fleet.plugins.modules import model_release_export, model_release_import
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

# Never contacted by these tests: every refusal comes before the registry is read.
NO_REGISTRY = "registry.invalid:5000"


@pytest.fixture
def server_image(podman, tmp_path) -> str:
    """A small stand-in for the model server image, in this machine's podman storage."""
    client, images = podman
    context = tmp_path / "server-context"
    context.mkdir()
    (context / "server.txt").write_text(uuid.uuid4().hex)
    (context / "Containerfile").write_text("FROM scratch\nCOPY server.txt /server.txt\n")
    tag = f"localhost/edgeml-test-server-{uuid.uuid4().hex[:8]}:0.2.0"
    client.run("build", "--quiet", "-t", tag, str(context))
    images.append(tag)
    return tag


@pytest.fixture
def release(digits_bundle, keys, server_image, podman, tmp_path, capsys) -> dict:  # noqa: PLR0917 - fixtures
    """A release of a signed digits 1.0.0 and a server image, exported."""
    _client, images = podman
    signing.sign_bundle(str(digits_bundle), str(keys["release"][0]))
    repository = f"edgeml-test-bundles/digits-{uuid.uuid4().hex[:8]}"
    images.append(f"localhost/{repository}:1.0.0")
    args = dict(
        path=str(digits_bundle),
        files=bundle_files(str(digits_bundle), {}),
        name="digits",
        version="1.0.0",
        repository=repository,
        server_image=server_image,
        dest=str(tmp_path / "release"),
    )
    result = models.run_module(model_release_export.main, args, capsys)
    assert not result.get("failed"), result
    return {"args": args, "result": result, "dir": tmp_path / "release"}


@pytest.fixture
def at_site(release, podman) -> dict:
    """The release, with its images removed from this machine's storage: a site that never had them."""
    for part in ("bundle", "server_image"):
        podman[0].run("rmi", "--force", release["result"]["release"][part]["image_id"])
    return release


def _exists(podman, image: str) -> bool:
    return podman[0].run("image", "exists", image, check=False)[0] == 0


def test_export_writes_archives_with_their_digests_and_is_never_rewritten(release, podman, capsys):
    written = json.loads((release["dir"] / "release.json").read_text())
    assert written == release["result"]["release"]
    held = sorted(path.name for path in release["dir"].iterdir())
    assert held == ["bundle.oci.tar", "release.json", "server-image.oci.tar"]
    for part in ("bundle", "server_image"):
        archive = release["dir"] / written[part]["archive"]
        assert written[part]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert written[part]["image_id"].startswith("sha256:")
    assert written["bundle"]["files"] == release["args"]["files"] and "model.sig" in written["bundle"]["files"]
    assert (written["server_image"]["repository"], written["server_image"]["tag"]) == split_image_reference(
        release["args"]["server_image"]
    )
    # The same release again: nothing to do, in check mode too.
    for check in (True, False):
        again = models.run_module(model_release_export.main, dict(release["args"], _ansible_check_mode=check), capsys)
        assert again["changed"] is False and not again.get("failed"), again
    # Another build of the version into the same directory: refused, the release untouched.
    bundle = Path(release["args"]["path"])
    manifest = json.loads((bundle / "model.json").read_text())
    manifest["description"] = "another build"
    (bundle / "model.json").write_text(json.dumps(manifest))
    other = dict(release["args"], files=bundle_files(str(bundle), {}))
    refused = models.run_module(model_release_export.main, other, capsys)
    assert refused["failed"] and "holds another release of digits 1.0.0" in refused["msg"], refused
    assert json.loads((release["dir"] / "release.json").read_text()) == written


def test_export_in_check_mode_writes_nothing(digits_bundle, server_image, podman, tmp_path, capsys):
    repository = f"edgeml-test-bundles/digits-{uuid.uuid4().hex[:8]}"
    args = dict(
        path=str(digits_bundle), files=bundle_files(str(digits_bundle), {}), name="digits", version="1.0.0",
        repository=repository, server_image=server_image, dest=str(tmp_path / "release"), _ansible_check_mode=True,
    )  # fmt: skip
    result = models.run_module(model_release_export.main, args, capsys)
    assert result["changed"] is True and not result.get("failed"), result
    assert not (tmp_path / "release").exists()
    assert not _exists(podman, f"localhost/{repository}:1.0.0")  # built to know its ID, removed again


def _import(release: dict, capsys, **args) -> dict:
    args = {"src": str(release["dir"]), "registry": NO_REGISTRY, "tls_verify": False, **args}
    return models.run_module(model_release_import.main, args, capsys)


def test_a_corrupt_archive_is_refused_before_anything_is_loaded(at_site, keys, podman, capsys):
    archive = at_site["dir"] / "server-image.oci.tar"
    archive.write_bytes(archive.read_bytes() + b"\0")
    result = _import(at_site, capsys, trusted_keys=[str(keys["release"][1])])
    assert result["failed"] and "server-image.oci.tar is corrupt or was replaced" in result["msg"], result
    assert "Nothing was loaded or pushed" in result["msg"]
    written = at_site["result"]["release"]
    assert not any(_exists(podman, written[part]["image_id"]) for part in ("bundle", "server_image"))


def test_a_release_json_naming_another_image_is_refused(at_site, keys, capsys):
    manifest_path = at_site["dir"] / "release.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["server_image"]["image_id"] = "sha256:" + "1" * 64
    manifest_path.write_text(json.dumps(manifest))
    result = _import(at_site, capsys, trusted_keys=[str(keys["release"][1])])
    assert result["failed"] and "does not hold the image sha256:1111" in result["msg"], result


@pytest.mark.parametrize(
    ("trust", "words"),
    [
        ({"trusted_keys": "stranger"}, "which is not a trusted key"),
        ({}, "which is not a trusted key (trusted: none)"),
    ],
    ids=["untrusted-signer", "nothing-trusted"],
)
def test_a_bundle_the_site_does_not_trust_is_refused_before_the_registry(  # noqa: PLR0917 - fixtures
    at_site, keys, tmp_path, capsys, trust, words
):
    arguments = {"bundle_root": str(tmp_path / "site-bundles")}
    if "trusted_keys" in trust:
        arguments["trusted_keys"] = [str(keys[trust["trusted_keys"]][1])]
    result = _import(at_site, capsys, **arguments)
    assert result["failed"] and "The release in" in result["msg"] and "is refused" in result["msg"], result
    assert words in result["msg"] and f"Nothing was pushed to {NO_REGISTRY}" in result["msg"]
    assert not (tmp_path / "site-bundles").exists()


def test_a_trusted_release_gets_as_far_as_the_registry(at_site, keys, tmp_path, capsys):
    """Every check passed: the first thing it does beyond this machine is read the site registry."""
    result = _import(at_site, capsys, trusted_keys=[str(keys["release"][1])], bundle_root=str(tmp_path / "site"))
    assert result["failed"] and f"The registry {NO_REGISTRY} did not answer" in result["msg"], result
    assert not (tmp_path / "site").exists()


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("localhost/edgeml-model-server:0.2.0", ("edgeml-model-server", "0.2.0")),
        ("127.0.0.1:5000/edgeml-model-server:0.2.0", ("edgeml-model-server", "0.2.0")),
        ("registry.example/ml/edgeml-model-server:1", ("ml/edgeml-model-server", "1")),
        ("edgeml/model-server:1", ("edgeml/model-server", "1")),
    ],
)
def test_the_server_image_is_pushed_under_its_repository_and_tag(reference, expected):
    assert split_image_reference(reference) == expected


@pytest.mark.parametrize(
    ("reference", "words"),
    [("localhost/edgeml-model-server@sha256:" + "0" * 64, "pinned by digest"), ("127.0.0.1:5000/server", "no tag")],
)
def test_a_server_image_without_a_tag_is_refused(reference, words):
    with pytest.raises(EdgeMLError, match=words):
        split_image_reference(reference)


def test_a_missing_release_says_so(tmp_path, capsys):
    result = models.run_module(
        model_release_import.main, {"src": str(tmp_path / "nothing"), "registry": NO_REGISTRY}, capsys
    )
    assert result["failed"] and "release.json is missing" in result["msg"], result
