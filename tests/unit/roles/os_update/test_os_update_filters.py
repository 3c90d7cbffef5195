"""os_update: the command lines a host runs and how its status is read, without bootc or rpm-ostree.

The role builds every command with these filters (plugins/filter/os_update.py), so the argv
asserted here is exactly what runs on a host.
"""

from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.edgeml.fleet.plugins.filter.os_update import (
    FilterModule,
    composer_body,
    os_update_command,
    os_update_outcome,
    os_update_status,
)

IMAGE = "registry.example.internal:5000/edgeml-os-bootc@sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("tool", "action", "kwargs", "argv"),
    [
        ("bootc", "status", {}, ["bootc", "status", "--json"]),
        ("bootc", "upgrade", {}, ["bootc", "upgrade"]),
        ("bootc", "upgrade", {"check": True}, ["bootc", "upgrade", "--check"]),
        ("bootc", "rollback", {}, ["bootc", "rollback"]),
        ("bootc", "switch", {"image": IMAGE}, ["bootc", "switch", IMAGE]),
        (
            "bootc",
            "switch",
            {"image": IMAGE, "enforce_signature_policy": True},
            ["bootc", "switch", "--enforce-container-sigpolicy", IMAGE],
        ),
        (
            "bootc",
            "switch",
            {"image": "/srv/os.oci.tar", "transport": "oci-archive"},
            ["bootc", "switch", "--transport", "oci-archive", "/srv/os.oci.tar"],
        ),
        ("rpm-ostree", "status", {}, ["rpm-ostree", "status", "--json"]),
        ("rpm-ostree", "upgrade", {}, ["rpm-ostree", "upgrade", "--unchanged-exit-77"]),
        ("rpm-ostree", "upgrade", {"check": True}, ["rpm-ostree", "upgrade", "--check"]),
        ("rpm-ostree", "rollback", {}, ["rpm-ostree", "rollback"]),
        ("rpm-ostree", "switch", {"image": IMAGE}, ["rpm-ostree", "rebase", f"ostree-unverified-registry:{IMAGE}"]),
        (
            "rpm-ostree",
            "switch",
            {"image": IMAGE, "enforce_signature_policy": True},
            ["rpm-ostree", "rebase", f"ostree-image-signed:docker://{IMAGE}"],
        ),
        (
            "rpm-ostree",
            "switch",
            {"image": "/srv/os.oci.tar", "transport": "oci-archive"},
            ["rpm-ostree", "rebase", "ostree-unverified-image:oci-archive:/srv/os.oci.tar"],
        ),
        (
            "rpm-ostree",
            "switch",
            {"ostree_remote": "edge", "ostree_ref": "rhel/9/x86_64/edge"},
            ["rpm-ostree", "rebase", "edge:rhel/9/x86_64/edge"],
        ),
    ],
)
def test_commands(tool, action, kwargs, argv):
    image = kwargs.pop("image", "")
    assert os_update_command(tool, action, image, **kwargs) == argv


@pytest.mark.parametrize(
    ("tool", "action", "image", "message"),
    [
        ("dnf", "upgrade", "", "unknown tool"),
        ("bootc", "rebase", "", "unknown action"),
        ("bootc", "switch", "", "needs os_update_image"),
        ("bootc", "switch", "--help", "must not start"),
    ],
)
def test_bad_commands(tool, action, image, message):
    with pytest.raises(AnsibleFilterError, match=message):
        os_update_command(tool, action, image)


def test_bad_transport():
    with pytest.raises(AnsibleFilterError, match="unknown transport"):
        os_update_command("bootc", "switch", IMAGE, transport="ftp")


def _bootc(image: str, digest: str) -> dict:
    return {"image": {"image": {"image": image, "transport": "registry"}, "imageDigest": digest, "version": "1.0"}}


BOOTC_STATUS = {
    "apiVersion": "org.containers.bootc/v1",
    "kind": "BootcHost",
    "status": {
        "booted": _bootc("reg/os:1", "sha256:old"),
        "staged": _bootc("reg/os:2", "sha256:new"),
        "rollback": None,
    },
}

RPM_OSTREE_STATUS = {
    "deployments": [
        {
            "staged": True,
            "booted": False,
            "checksum": "c2",
            "container-image-reference": "ostree-unverified-registry:reg/os:2",
        },
        {
            "booted": True,
            "checksum": "c1",
            "container-image-reference": "ostree-unverified-registry:reg/os:1",
            "version": "9.6",
        },
        {"booted": False, "checksum": "c0", "origin": "edge:rhel/9/x86_64/edge"},
    ]
}


def test_bootc_status():
    status = os_update_status(json.dumps(BOOTC_STATUS), "bootc")
    assert status["booted"] == {"image": "reg/os:1", "digest": "sha256:old", "version": "1.0", "id": "sha256:old"}
    assert status["staged"]["image"] == "reg/os:2"
    assert status["rollback"] is None


def test_rpm_ostree_status():
    status = os_update_status(json.dumps(RPM_OSTREE_STATUS), "rpm-ostree")
    assert status["booted"]["id"] == "c1"
    assert status["booted"]["version"] == "9.6"
    assert status["staged"]["id"] == "c2"
    assert status["rollback"]["image"] == "edge:rhel/9/x86_64/edge"


def test_status_not_json():
    with pytest.raises(AnsibleFilterError, match="not JSON"):
        os_update_status("Error: not booted", "bootc")


def _entry(image_id: str | None) -> dict | None:
    return {"image": f"reg/os@{image_id}", "id": image_id} if image_id else None


def _state(booted: str | None, staged: str | None = None) -> dict:
    return {"booted": _entry(booted), "staged": _entry(staged), "rollback": None}


@pytest.mark.parametrize(
    ("before", "staged", "after", "result", "rolled_back"),
    [
        (_state("old"), _state("old", "new"), _state("new"), "updated", False),
        (_state("old"), _state("old", "new"), _state("old"), "rolled_back", True),
        (_state("old"), _state("old"), _state("old"), "unchanged", False),
        (_state("old"), _state("old", "new"), _state("other"), "unexpected", False),
    ],
)
def test_outcome(before, staged, after, result, rolled_back):
    outcome = os_update_outcome(before, staged, after)
    assert outcome["result"] == result
    assert outcome["rolled_back"] is rolled_back
    if rolled_back:
        assert "greenboot" in outcome["reason"] and "reg/os@new" in outcome["reason"]


@pytest.mark.parametrize(
    "stdout",
    [
        json.dumps(
            [{"method": "POST", "path": "/compose", "status": 200, "body": {"build_id": "b-1", "status": True}}]
        ),
        json.dumps({"build_id": "b-1", "status": True}),
    ],
)
def test_composer_body(stdout):
    assert composer_body(stdout)["build_id"] == "b-1"


def test_composer_body_not_json():
    with pytest.raises(AnsibleFilterError, match="did not answer JSON"):
        composer_body("ERROR: blueprint not found")


def test_filters_registered():
    assert set(FilterModule().filters()) == {
        "os_update_command",
        "os_update_status",
        "os_update_outcome",
        "composer_body",
    }
