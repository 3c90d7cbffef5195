"""The "gated model release" workflow (extensions/aap/controller_config.yml), walked node
by node as AWX's workflow engine walks it (aapjobs.walk_workflow): every job in the lab
EE, each node's extra variables from the workflow's survey answers, its own extra data
and the artifacts of the nodes before it.
"""

from __future__ import annotations

import pytest
from aapjobs import launch, walk_workflow
from labtools import podman, serving_versions

WORKFLOW = "edgeml - gated model release"


def _server_containers(lab_containers: dict[str, str]) -> dict[str, str]:
    """Per host, the IDs of its model server containers (inside the lab host)."""
    return {
        host: podman("exec", container, "podman", "ps", "--filter", "name=edgeml-digits", "--format", "{{.ID}}").strip()
        for host, container in lab_containers.items()
    }


@pytest.fixture
def fleet_on(runner, config, fleet):
    """Bring the fleet to a version with the deploy job (only when it is not there)."""

    def bring(version: str) -> None:
        if set(serving_versions(fleet).values()) != {version}:
            job = launch(config, runner, "edgeml - deploy a model", {"model_version": version})
            assert job.status == "successful", job.stdout[-3000:]
        assert serving_versions(fleet) == dict.fromkeys(fleet, version)

    return bring


@pytest.fixture
def release(runner, config, bundle_answers):
    """Launch the workflow for a version of the example models; `approve` decides the approval."""
    return lambda version, approve: walk_workflow(config, runner, WORKFLOW, bundle_answers(version), approve)


def _path(walked) -> list[tuple[str, bool]]:
    return [(node.identifier, node.succeeded) for node in walked]


# In this order, each starts where the one before left the fleet (on 1.0.0): no deploy between.
def test_a_denied_approval_touches_nothing_beyond_the_canary(release, fleet, fleet_on, canary, lab_containers):
    fleet_on("1.0.0")
    before = _server_containers(lab_containers)
    walked = release("3.0.0", lambda artifacts: False)

    assert _path(walked) == [
        ("bundle", True),
        ("canary", True),
        ("approve", False),
        ("rollback canary", True),
        ("status", True),
    ], _failures(walked)
    assert walked[1].job.artifacts["edgeml_rollout"]["outcomes"] == {canary: "deployed"}
    assert walked[3].job.extra_vars["rollback_hosts"] == "canary"
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")
    # The rollback node rolled back the canary only; beyond it, the very same server
    # containers still run (the canary's old slot was kept running: blue/green).
    assert set(walked[3].job.artifacts["edgeml_rollout"]["outcomes"]) == {canary}
    after = _server_containers(lab_containers)
    assert {h: c for h, c in after.items() if h != canary} == {h: c for h, c in before.items() if h != canary}


def test_a_wrong_answer_version_is_rolled_back_by_the_workflow(release, fleet, fleet_on):
    fleet_on("1.0.0")
    walked = release("2.0.0", lambda artifacts: True)

    assert _path(walked) == [("bundle", True), ("canary", False), ("rollback fleet", True), ("status", True)], (
        _failures(walked)
    )
    rollout = walked[1].job.artifacts["edgeml_rollout"]
    assert rollout["completed"] is False
    assert "rolled_back" in rollout["outcomes"].values()
    # The rollback node went back to the version the deploy job recorded, not "previous".
    assert walked[2].job.extra_vars["rollback_to"] == "1.0.0"
    # The rollback node's own result is in its artifacts, and the status node's.
    rolled_back = walked[2].job.artifacts["edgeml_rollout"]
    assert rolled_back["completed"] is True and set(rolled_back["outcomes"]) == set(fleet)
    assert walked[3].job.artifacts["edgeml_fleet_status"] == dict.fromkeys(fleet, "1.0.0")
    assert serving_versions(fleet) == dict.fromkeys(fleet, "1.0.0")


def test_a_good_version_goes_through_every_node(release, fleet, fleet_on):
    fleet_on("1.0.0")
    seen_at_approval = {}

    def approve(artifacts):
        seen_at_approval.update(versions=serving_versions(fleet), artifacts=artifacts)
        return True

    walked = release("3.0.0", approve)

    assert _path(walked) == [
        ("bundle", True),
        ("canary", True),
        ("approve", True),
        ("remaining rings", True),
        ("status", True),
    ], _failures(walked)
    # The approver saw the canary, and only the canary, on the new version.
    assert sorted(seen_at_approval["versions"].values()) == ["1.0.0", "1.0.0", "3.0.0"]
    assert seen_at_approval["artifacts"]["model_version"] == "3.0.0"
    assert seen_at_approval["artifacts"]["rollback_to"] == "1.0.0"
    assert serving_versions(fleet) == dict.fromkeys(fleet, "3.0.0")
    assert walked[-1].job.artifacts["edgeml_fleet_status"] == dict.fromkeys(fleet, "3.0.0")


def _failures(walked) -> str:
    return "\n".join(f"{n.identifier}: {n.job.stdout[-2500:]}" for n in walked if n.job and not n.succeeded)
