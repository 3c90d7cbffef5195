# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The model_deployment module through AnsibleModule (argument spec, validation messages,
check mode, diff, the result shape of docs/deployment-result.md).

Only ``HostClient`` (systemctl/journalctl/podman) is replaced, by ``FakeHost``: this
control node has no systemd/podman service manager. The servers it starts are real.
"""

from __future__ import annotations

from unittest import mock

import pytest
from ansible_collections.edgeml.fleet.plugins.module_utils import _deploy_runner
from ansible_collections.edgeml.fleet.plugins.modules import model_deployment
from ansible_collections.edgeml.fleet.tests.unit.plugins import bundle_models as models
from ansible_collections.edgeml.fleet.tests.unit.plugins.module_utils import test__deploy_fakes as fx

RESULT_KEYS = {
    "changed",
    "target",
    "outcome",
    "model",
    "image",
    "gates",
    "failed_gate",
    "rollback",
    "log_tail",
    "history",
    "actions",
}


@pytest.fixture
def env(tmp_path):
    root = tmp_path / "bundles"
    sha = {
        "1": fx.write_bundle(root, "1", expected=[0, 0, 0, 0]),
        "2": fx.write_bundle(root, "2", models.digits_model(permuted=True), expected=[0, 0, 0, 0]),
        "3": fx.write_bundle(root, "3", expected=[1, 1, 0, 0]),
    }
    port, blue, green = fx.free_port(), fx.free_port(), fx.free_port()
    host = fx.FakeHost(tmp_path / "units", root, tmp_path)
    args = {
        "name": "digits",
        "version": "1",
        "bundle_sha256": sha["1"],
        "bundle_root": str(root),
        "image": fx.IMAGE,
        "image_digest": fx.IMAGE_DIGEST,
        "port": port,
        "slots": {
            "blue": {"admin_port": blue, "unit": fx.unit("blue", port, blue)},
            "green": {"admin_port": green, "unit": fx.unit("green", port, green)},
        },
        "unit_dir": str(tmp_path / "units"),
        "state_dir": str(tmp_path / "state"),
        "gates": {"readiness_timeout": 20, "latency": {"requests": 3}, "error_rate": {"soak_seconds": 0.2}},
    }
    with mock.patch.object(_deploy_runner, "HostClient", lambda module: host):
        yield {"args": args, "sha": sha, "host": host, "tmp": tmp_path, "root": root}
    host.stop_all()


def run(args, capsys, check=False, diff=False):
    # None = omitted (as with "{{ omit }}" in a task)
    args = {k: v for k, v in args.items() if v is not None}
    args.update(_ansible_check_mode=check, _ansible_diff=diff)
    return models.run_module(model_deployment.main, args, capsys)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"version": None}, "one of the following is required: version, rollback"),
        ({"rollback": "previous"}, "parameters are mutually exclusive: version|rollback"),
        ({"bundle_sha256": None}, "bundle_sha256 is None; deploying a version needs the sha256"),
        ({"bundle_sha256": "ABC"}, "64 lowercase hex digits"),
        ({"version": "1.0/x"}, "Invalid bundle version"),
        ({"name": "Digits"}, "Invalid bundle name"),
        ({"image": None}, "image is required when deploying a version"),
        ({"image_digest": "latest"}, "image_digest is 'latest'"),
        ({"port": 70000}, "port is 70000; it must be a TCP port"),
        ({"slots": {"blue": {"admin_port": 1}}}, "missing required arguments: green"),
        ({"gates": {"smoke": {"source": "truth"}}}, "value of source must be one of: expected, recorded"),
        ({"gates": {"smoke": {"min_pass_ratio": 2}}}, "gates.smoke.min_pass_ratio is 2"),
        ({"gates": {"readiness_timeout": 0}}, "gates.readiness_timeout is 0"),
    ],
)
def test_argument_errors(env, capsys, change, words):
    args = dict(env["args"], **change)
    if change.get("rollback"):
        args["version"] = "1"
    result = run(args, capsys)
    assert result["failed"] is True and words in result["msg"], result["msg"]
    assert env["host"].calls == []


def test_unit_errors(env, capsys):
    args = env["args"]
    slots = {**args["slots"], "green": {"admin_port": args["slots"]["green"]["admin_port"], "unit": "[Unit]\n"}}
    result = run(dict(args, slots=slots), capsys)
    assert result["failed"] and "slots.green.unit is not a quadlet .container unit" in result["msg"]
    other = fx.unit("green", args["port"], args["slots"]["green"]["admin_port"], image=fx.IMAGE2)
    slots["green"]["unit"] = other
    result = run(dict(args, slots=slots), capsys)
    assert f"runs Image={fx.IMAGE2}, but image is {fx.IMAGE}" in result["msg"]
    same = {"blue": args["slots"]["blue"], "green": dict(args["slots"]["blue"])}
    result = run(dict(args, slots=same), capsys)
    assert "admin ports must all differ" in result["msg"]


def test_refused_on_sha_mismatch_changes_nothing(env, capsys):
    before = models.tree(env["tmp"])
    result = run(dict(env["args"], bundle_sha256="f" * 64), capsys)
    assert result["failed"] is True and result["changed"] is False
    assert result["outcome"] == "refused" and result["failed_gate"] is None
    assert "Checksum mismatch" in result["msg"] and "Nothing was changed" in result["msg"]
    assert RESULT_KEYS <= set(result)
    assert models.tree(env["tmp"]) == before
    # Only what reads: podman's version and the image.
    assert [c for c in env["host"].calls if not c.startswith(("podman version", "podman image inspect"))] == []


def test_check_mode_plans_then_the_run_does_it_then_idempotent(env, capsys):
    args = env["args"]
    predicted = run(args, capsys, check=True, diff=True)
    assert predicted["changed"] is True and predicted["outcome"] == "deployed" and predicted["plan"] == "bluegreen"
    assert predicted["slot"] == "blue" and predicted["model"]["previous_version"] is None
    assert env["host"].running() == [] and not (env["tmp"] / "units").exists()
    assert not (env["root"] / "digits" / "current").exists()
    pointer, unit = predicted["diff"][0], predicted["diff"][1]
    assert pointer["before"] == "" and pointer["after"] == "1\n" and pointer["before_header"] == "(absent)"
    assert unit["after"] == args["slots"]["blue"]["unit"]

    real = run(args, capsys)
    assert real["changed"] is True and real["outcome"] == "deployed" and not real.get("failed")
    assert RESULT_KEYS <= set(real)
    assert real["model"] == {
        "name": "digits",
        "version": "1",
        "previous_version": None,
        "serving_version": "1",
        "sha256": env["sha"]["1"],
    }
    assert real["image"] == {"ref": fx.IMAGE, "digest": fx.IMAGE_DIGEST}
    assert [g["name"] for g in real["gates"]] == ["readiness", "smoke", "latency", "error_rate", "live"]
    assert real["actions"] == predicted["actions"]  # check mode predicted what the run did
    assert real["history"][0]["version"] == "1" and real["history"][0]["outcome"] == "deployed"

    again = run(args, capsys)
    assert again["changed"] is False and again["outcome"] == "unchanged" and again["actions"] == []
    assert run(args, capsys, check=True)["changed"] is False

    # A new version only: check mode predicts the in-place swap, with the pointer diff.
    v2 = dict(args, version="2", bundle_sha256=env["sha"]["2"])
    predicted = run(v2, capsys, check=True, diff=True)
    assert predicted["plan"] == "swap" and predicted["changed"] is True
    assert predicted["diff"][0]["before"] == "1\n" and predicted["diff"][0]["after"] == "2\n"
    real = run(v2, capsys)
    assert real["actions"] == predicted["actions"]
    assert real["outcome"] == "deployed" and real["model"]["previous_version"] == "1"
    assert real["model"]["serving_version"] == "2"


def test_check_mode_predicts_over_a_delivery_the_check_run_only_predicted(env, capsys):
    """A check run of the role predicts the bundle's copy and the image's pull without making
    them: with pending_delivery the module predicts the switch all the same; without it, or in
    a real run, what is missing on the host is refused."""
    args = env["args"]
    run(args, capsys)
    before = models.tree(env["tmp"])
    absent = dict(args, version="9", bundle_sha256="9" * 64)  # a bundle not on the host

    refused = run(absent, capsys, check=True)
    assert refused["failed"] is True and refused["outcome"] == "refused"
    assert "The bundle digits 9 is incomplete on this host" in refused["msg"]

    predicted = run(dict(absent, pending_delivery=["bundle"]), capsys, check=True)
    assert not predicted.get("failed") and predicted["changed"] is True and predicted["outcome"] == "deployed"
    assert predicted["plan"] == "swap" and predicted["gates"] == []
    assert predicted["model"]["previous_version"] == "1" and predicted["model"]["serving_version"] == "9"

    # An image the check run would pull: not verified, and a new image means a new slot.
    new_image = dict(
        absent,
        pending_delivery=["bundle", "image"],
        image="localhost/edgeml-model-server:next",
        image_digest=None,
        slots={
            slot: {**spec, "unit": spec["unit"].replace(fx.IMAGE, "localhost/edgeml-model-server:next")}
            for slot, spec in args["slots"].items()
        },
    )
    predicted = run(new_image, capsys, check=True)
    assert not predicted.get("failed") and predicted["plan"] == "bluegreen" and predicted["slot"] == "green"
    assert models.tree(env["tmp"]) == before  # nothing changed on the host
    assert len(env["host"].running()) == 1  # version 1's slot, still the only one

    # Outside check mode the module always verifies: pending_delivery changes nothing.
    real = run(dict(absent, pending_delivery=["bundle"]), capsys)
    assert real["failed"] is True and real["outcome"] == "refused" and "incomplete on this host" in real["msg"]
    assert models.tree(env["tmp"]) == before


def test_failed_gate_result_shape(env, capsys):
    args = env["args"]
    run(args, capsys)
    result = run(dict(args, version="3", bundle_sha256=env["sha"]["3"]), capsys)
    assert result["failed"] is True and result["changed"] is True
    assert result["outcome"] == "rolled_back" and result["failed_gate"] == "smoke"
    assert result["rollback"]["performed"] is True and result["rollback"]["restored_version"] == "1"
    assert result["rollback"]["seconds"] >= 0
    assert result["rollback"]["reason"].startswith("smoke gate: 2 of 4 vectors wrong")
    assert result["model"]["serving_version"] == "1" and result["model"]["version"] == "3"
    assert result["gates"][-1]["name"] == "smoke" and result["gates"][-1]["passed"] is False
    assert result["log_tail"] and result["last_failure"]["gate"] == "smoke"
    assert "failed the smoke gate" in result["msg"] and "rolled back: serving 1" in result["msg"]
    # The reason survives: a later (unchanged) run still reports it from the state file.
    again = run(args, capsys)
    assert again["outcome"] == "unchanged" and again["last_failure"]["version"] == "3"
    assert [h["outcome"] for h in again["history"]] == ["rolled_back", "deployed"]
