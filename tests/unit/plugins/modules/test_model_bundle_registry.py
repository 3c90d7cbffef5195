# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""model_bundle_push and model_bundle_pull without a registry: their arguments, and the
bundle image built and unpacked with the real podman of this machine. Pushing to and
pulling from real registries, on real lab hosts: tests/e2e/test_bundle_delivery.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_registry as registry
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import file_differences
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import bundle_files
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError
from ansible_collections.edgeml.fleet.plugins.modules import model_bundle_pull, model_bundle_push
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models

DIGEST = "sha256:" + "0" * 64


@pytest.fixture
def bundle(digits_bundle) -> Path:
    return digits_bundle


def test_differences_name_changed_added_and_missing_files():
    expected = {"model.json": "a", "model.onnx": "b", "profile.json": "c"}
    actual = {"model.json": "a", "model.onnx": "x", "extra.txt": "d"}
    assert file_differences(expected, actual) == ["model.onnx changed", "extra.txt added", "profile.json missing"]
    assert file_differences(expected, dict(expected)) == []


def test_the_same_bundle_always_makes_the_same_image_and_it_unpacks_to_the_verified_files(bundle, podman, tmp_path):
    client, tags = podman
    files = bundle_files(str(bundle), {})
    tag = f"localhost/edgeml-test-bundles/digits-{uuid.uuid4().hex[:8]}:1.0.0"
    tags.append(tag)
    first = registry.build_bundle_image(client, str(bundle), files, tag)
    for path in bundle.rglob("*"):  # new modification times, same content
        path.touch()
    assert registry.build_bundle_image(client, str(bundle), files, tag) == first
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    registry.unpack_bundle_image(client, tag, str(unpacked))
    assert bundle_files(str(unpacked), {}) == files
    # Another content makes another image: a tag holding it is told apart by the ID.
    (bundle / "model.json").write_text((bundle / "model.json").read_text() + " ")
    other = f"{tag}-other"
    tags.append(other)
    assert registry.build_bundle_image(client, str(bundle), bundle_files(str(bundle), {}), other) != first


def test_a_bundle_changed_after_it_was_verified_is_not_built(bundle, podman):
    client, _tags = podman
    files = bundle_files(str(bundle), {})
    (bundle / "model.json").unlink()
    (bundle / "labels.txt").write_text("0 1 2")
    with pytest.raises(EdgeMLError, match=r"changed after it was verified: labels\.txt added, model\.json missing"):
        registry.build_bundle_image(client, str(bundle), files, "localhost/edgeml-test-bundles/never:1")


def test_push_needs_a_registry(bundle, capsys):
    result = models.run_module(
        model_bundle_push.main,
        dict(
            path=str(bundle),
            files={"model.json": "a"},
            repository="edgeml-bundles/digits",
            version="1.0.0",
            registries=[],
        ),
        capsys,
    )
    assert result["failed"] and "No registry to push the bundle to" in result["msg"]


@pytest.mark.parametrize(
    ("ref", "files", "message"),
    [
        ("registry.example:5000/edgeml-bundles/digits:1.0.0", {"model.json": "a"}, "is not pinned by digest"),
        (f"registry.example:5000/edgeml-bundles/digits@{DIGEST}", {}, "files is empty"),
    ],
)
def test_pull_refuses_a_tag_or_nothing_to_check_against(tmp_path, capsys, ref, files, message):
    dest = tmp_path / "bundles" / "digits" / "1.0.0"
    result = models.run_module(model_bundle_pull.main, dict(ref=ref, dest=str(dest), files=files), capsys)
    assert result["failed"] and message in result["msg"]
    assert not dest.exists()


def test_pull_does_nothing_when_the_host_holds_the_verified_bundle(bundle, capsys):
    """Nothing is pulled (the registry named does not exist: a pull would fail)."""
    ref = f"registry.invalid:5000/edgeml-bundles/digits@{DIGEST}"
    files = bundle_files(str(bundle), {})
    for check in (True, False):
        args = dict(ref=ref, dest=str(bundle), files=files, _ansible_check_mode=check)
        result = models.run_module(model_bundle_pull.main, args, capsys)
        assert result["changed"] is False and not result.get("failed"), result


def test_pull_in_check_mode_says_what_differs_and_changes_nothing(bundle, capsys):
    files = bundle_files(str(bundle), {})
    (bundle / "model.onnx").write_bytes(b"not the model")
    before = bundle_files(str(bundle), {})
    ref = f"registry.invalid:5000/edgeml-bundles/digits@{DIGEST}"
    args = dict(ref=ref, dest=str(bundle), files=files, _ansible_check_mode=True)
    result = models.run_module(model_bundle_pull.main, args, capsys)
    assert result["changed"] is True and result["changes"] == ["model.onnx changed"]
    assert bundle_files(str(bundle), {}) == before
