"""bundle_copy_plan: what makes a host's copy of a bundle exactly the verified bundle.

The host's copy is described as ansible.builtin.find describes it (path, isdir, isreg,
mode, pw_name, gr_name, checksum); the e2e layer runs it against real hosts
(tests/e2e/test_signatures.py)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.bundle import bundle_copy_plan

HOST_DIR = "/var/lib/edgeml/bundles/digits/3.0.0"
VERIFIED = {"model.json": "a" * 64, "model.onnx": "b" * 64}


def _file(name: str, checksum: str, mode: str = "0644", owner: str = "root") -> dict:
    return {"path": f"{HOST_DIR}/{name}", "isdir": False, "isreg": True, "mode": mode,
            "pw_name": owner, "gr_name": owner, "checksum": checksum}


def _dir(name: str, mode: str = "0755") -> dict:
    return {"path": f"{HOST_DIR}/{name}", "isdir": True, "isreg": False, "mode": mode,
            "pw_name": "root", "gr_name": "root"}


def _as_verified(verified: dict) -> list[dict]:
    return [_file(name, checksum) for name, checksum in verified.items()]


def test_a_host_holding_exactly_the_bundle_needs_nothing():
    assert bundle_copy_plan(_as_verified(VERIFIED), HOST_DIR, VERIFIED) == {"remove": [], "copy_needed": False}


def test_an_empty_host_gets_a_copy():
    assert bundle_copy_plan([], HOST_DIR, VERIFIED) == {"remove": [], "copy_needed": True}


def test_a_file_of_another_build_is_copied_again():
    on_host = [_file("model.json", "c" * 64), _file("model.onnx", "b" * 64)]
    assert bundle_copy_plan(on_host, HOST_DIR, VERIFIED) == {"remove": [], "copy_needed": True}


def test_a_stale_signature_of_another_build_is_removed():
    """The case CI met: the host held a signed build of 3.0.0; the verified bundle is an
    unsigned rebuild. copy alone left model.sig beside it and the server refused it."""
    on_host = [*_as_verified(VERIFIED), _file("model.sig", "d" * 64), _file("profile.json", "e" * 64)]
    plan = bundle_copy_plan(on_host, HOST_DIR, VERIFIED)
    assert plan == {"remove": [f"{HOST_DIR}/model.sig", f"{HOST_DIR}/profile.json"], "copy_needed": False}


def test_a_directory_beyond_the_bundle_is_removed_whole():
    on_host = [*_as_verified(VERIFIED), _dir("notes"), _dir("notes/old"), _file("notes/old/a.txt", "f" * 64)]
    assert bundle_copy_plan(on_host, HOST_DIR, VERIFIED)["remove"] == [f"{HOST_DIR}/notes"]


def test_directories_the_bundle_needs_stay():
    verified = {**VERIFIED, "extra/deep/vocab.txt": "9" * 64}
    on_host = [*_as_verified(verified), _dir("extra"), _dir("extra/deep"), _file("extra/deep/stale.txt", "8" * 64)]
    assert bundle_copy_plan(on_host, HOST_DIR, verified) == {
        "remove": [f"{HOST_DIR}/extra/deep/stale.txt"],
        "copy_needed": False,
    }


def test_something_not_a_regular_file_where_a_file_belongs_is_removed():
    link = {**_file("model.onnx", None), "isreg": False, "islnk": True}
    on_host = [_file("model.json", "a" * 64), link]
    assert bundle_copy_plan(on_host, HOST_DIR, VERIFIED) == {"remove": [f"{HOST_DIR}/model.onnx"], "copy_needed": True}


def test_a_directory_where_a_file_belongs_is_removed():
    on_host = [_file("model.json", "a" * 64), _dir("model.onnx"), _file("model.onnx/x", "1" * 64)]
    assert bundle_copy_plan(on_host, HOST_DIR, VERIFIED) == {"remove": [f"{HOST_DIR}/model.onnx"], "copy_needed": True}


@pytest.mark.parametrize(
    "entry",
    [_file("model.json", "a" * 64, mode="0600"), _file("model.json", "a" * 64, owner="edgeml")],
    ids=["mode", "owner"],
)
def test_a_file_not_as_the_role_writes_it_is_copied_again(entry):
    on_host = [entry, _file("model.onnx", "b" * 64)]
    assert bundle_copy_plan(on_host, HOST_DIR, VERIFIED) == {"remove": [], "copy_needed": True}


def test_wrong_input_is_an_error():
    with pytest.raises(AnsibleFilterError, match="find's files"):
        bundle_copy_plan({"files": []}, HOST_DIR, VERIFIED)
