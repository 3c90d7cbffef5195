"""Automation Platform's jobs without Automation Platform: ansible-runner, as its execution
nodes run every job, and its workflow engine's rules for walking a workflow.

AWX itself cannot run here (it needs Kubernetes and images from registries). What it does
around a job is small and documented, and done here the same way:
- a job is `ansible_runner.run` with process isolation in the job template's execution
  environment (podman), on a private data directory holding the project, the inventory,
  the machine credential's key (env/ssh_key, which ansible-runner hands to an ssh-agent in
  the container) and the extra variables;
- a job's extra variables are, lowest first: the template's survey defaults (for questions
  not answered otherwise), the workflow node's extra data, the artifacts (set_stats) of
  every ancestor node, then the workflow's own extra variables and survey answers, as
  awx/main/models/workflow.py (WorkflowJobNode.get_job_kwargs) merges them;
- a node runs once all its parents are decided, if any parent's edge to it fires (success,
  failure, always); otherwise it is marked "do not run" (all_parents_must_converge false).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import ansible_runner
import jinja2
import yaml
from labtools import ROOT

CONFIG = ROOT / "extensions" / "aap" / "controller_config.yml"
PROJECT = ROOT / "extensions" / "aap" / "project"
EE_IMAGE = "localhost/edgeml-fleet-ee:" + yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
# Where the bundle job writes bundles and the deploy jobs read them: storage shared by the
# jobs' containers (Automation Platform: "Paths to expose to isolated jobs").
SHARED_BUNDLES = "/var/lib/edgeml/bundles"


def controller_config() -> dict[str, Any]:
    """controller_config.yml with its own variables (edgeml_aap_*) filled in."""
    raw = yaml.safe_load(CONFIG.read_text())
    defaults = {k: v for k, v in raw.items() if k.startswith("edgeml_aap_")}
    rendered = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(CONFIG.read_text()).render(defaults)
    return yaml.safe_load(rendered)


@dataclass
class Job:
    template: str
    playbook: str
    extra_vars: dict[str, Any]
    status: str
    rc: int
    events: list[dict[str, Any]]
    stdout: str

    @property
    def artifacts(self) -> dict[str, Any]:
        """What the playbook passed on with set_stats (AWX: the job's artifacts)."""
        stats = [e for e in self.events if e.get("event") == "playbook_on_stats"]
        return stats[-1]["event_data"].get("artifact_data", {}) if stats else {}

    def host_results(self, task: str) -> dict[str, str]:
        """Per host, how a task ended (ok, changed, failed, skipped, unreachable)."""
        results = {}
        for event in self.events:
            data = event.get("event_data", {})
            if data.get("task") != task or not event["event"].startswith("runner_on_"):
                continue
            outcome = event["event"].removeprefix("runner_on_")
            if outcome == "ok" and data.get("res", {}).get("changed"):
                outcome = "changed"
            results[data["host"]] = outcome
        return results


@dataclass
class JobRunner:
    """Runs job templates of controller_config.yml in the lab EE against an inventory."""

    work_dir: Path
    inventory: Path
    ssh_key: Path
    bundles_dir: Path
    project_files: dict[str, Path] = field(default_factory=dict)
    runs: int = 0

    def private_data_dir(self) -> Path:
        """A fresh private data directory, as AWX makes one per job."""
        self.runs += 1
        private = self.work_dir / f"job-{self.runs}"
        shutil.copytree(PROJECT, private / "project", ignore=shutil.ignore_patterns("inventory"))
        for name, source in self.project_files.items():
            shutil.copy(source, private / "project" / name)
        (private / "inventory").mkdir()
        shutil.copy(self.inventory, private / "inventory" / "hosts.yml")
        # The project's inventory variables (the registry login from its credential).
        shutil.copytree(PROJECT / "inventory" / "group_vars", private / "inventory" / "group_vars")
        (private / "env").mkdir()
        shutil.copy(self.ssh_key, private / "env" / "ssh_key")
        # What AWX sets for every job (settings AWX_TASK_ENV, ANSIBLE_HOST_KEY_CHECKING off).
        (private / "env" / "envvars").write_text(
            json.dumps({"ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_FORCE_COLOR": "0"})
        )
        return private

    def container_options(self) -> dict[str, Any]:
        return {
            "process_isolation": True,
            "process_isolation_executable": "podman",
            "container_image": EE_IMAGE,
            # The lab's hosts and registry listen on the control node's 127.0.0.1. An
            # execution node runs podman rootless, where the container's root is the node's
            # job user, owner of the private data directory; podman runs as root here.
            "container_options": ["--network=host", "--pull=never", "--user=0"],
            "container_volume_mounts": [f"{self.bundles_dir}:{SHARED_BUNDLES}:Z"],
        }

    def run(self, template: dict[str, Any], extra_vars: dict[str, Any], **job_options: Any) -> Job:
        """Run a job; job_options are what a job template or its slice sets (forks, limit)."""
        private = self.private_data_dir()
        result = ansible_runner.run(
            private_data_dir=str(private),
            playbook=template["playbook"],
            inventory=str(private / "inventory" / "hosts.yml"),
            extravars=extra_vars,
            quiet=True,
            # Without one, ansible-runner takes SIGTERM for itself (to cancel the job) and
            # the test run goes on: the suite stops a lane with SIGTERM.
            cancel_callback=lambda: False,
            **self.container_options(),
            **job_options,
        )
        stdout = result.stdout.read() if result.stdout else ""
        return Job(
            template["name"], template["playbook"], extra_vars, result.status, result.rc, list(result.events), stdout
        )


def job_inventory(lab_inventory: Path, destination: Path, latency_budget_ms: int) -> Path:
    """A lab inventory as an Automation Platform inventory holds it: no path of this checkout
    (the key is the machine credential's, bundles are on the jobs' shared storage, reports
    beside the inventory in the job's private data directory)."""
    inventory = yaml.safe_load(lab_inventory.read_text())
    checkout_paths = ("model_deployment_bundle_src", "rollout_report_dir", "edgeml_trusted_keys")
    for name in ("ansible_ssh_private_key_file", *checkout_paths):
        inventory["all"]["vars"].pop(name, None)
    # The "bundle a model" job signs nothing yet (no signing credential in the Automation
    # Platform content), as the project's inventory says; the hosts still check the signed
    # example bundles against the key the lab installed.
    inventory["all"]["vars"]["edgeml_signature_policy"] = "optional"
    # The lab registry is plain HTTP.
    inventory["all"]["vars"]["model_deployment_registry_tls_verify"] = False
    inventory["all"]["vars"]["model_deployment_gates"]["latency"]["p95_ms"] = latency_budget_ms
    destination.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return destination


def survey_defaults(survey: dict[str, Any] | None) -> dict[str, Any]:
    return {q["variable"]: q["default"] for q in (survey or {}).get("spec", []) if "default" in q}


def launch(config: dict[str, Any], runner: JobRunner, name: str, answers: dict[str, Any]) -> Job:
    """Launch a job template by name with survey answers (its defaults for the rest)."""
    template = next(t for t in config["controller_templates"] if t["name"] == name)
    extra_vars = {**survey_defaults(template.get("survey_spec")), **(template.get("extra_vars") or {}), **answers}
    return runner.run(template, extra_vars)


@dataclass
class NodeRun:
    identifier: str
    kind: str  # job_template or workflow_approval
    succeeded: bool
    job: Job | None = None


def walk_workflow(
    config: dict[str, Any],
    runner: JobRunner,
    name: str,
    answers: dict[str, Any],
    approve: Callable[[dict[str, Any]], bool],
) -> list[NodeRun]:
    """Run a workflow of controller_config.yml node by node, as AWX's workflow engine does.

    `approve` decides an approval node, given the artifacts it would pass on.
    """
    workflow = next(w for w in config["controller_workflows"] if w["name"] == name)
    workflow_vars = {**survey_defaults(workflow.get("survey_spec")), **answers}
    nodes = {node["identifier"]: node for node in workflow["workflow_nodes"]}
    edges: list[tuple[str, str, str]] = [
        (parent, kind.removesuffix("_nodes"), child["identifier"])
        for parent, node in nodes.items()
        for kind, children in (node.get("related") or {}).items()
        for child in children
    ]
    decided: dict[str, NodeRun | None] = {}  # None: do not run
    inherited: dict[str, dict[str, Any]] = {}  # each node's ancestor artifacts
    walked: list[NodeRun] = []
    while len(decided) < len(nodes):
        ready = [n for n in nodes if n not in decided and all(p in decided for p, _, c in edges if c == n)]
        assert ready, f"the workflow {name} has a cycle or an unreachable node"
        for identifier in ready:
            parents = [(p, kind) for p, kind, c in edges if c == identifier]
            fires = not parents or any(
                decided[p] is not None and (kind == "always" or (kind == "success") == decided[p].succeeded)
                for p, kind in parents
            )
            if not fires:
                decided[identifier] = None
                continue
            artifacts: dict[str, Any] = {}
            for parent, _ in parents:
                if decided[parent] is not None:
                    artifacts.update(inherited.get(parent, {}))
                    if decided[parent].job:
                        artifacts.update(decided[parent].job.artifacts)
            inherited[identifier] = artifacts
            ujt = nodes[identifier]["unified_job_template"]
            if ujt.get("type") == "workflow_approval":
                node_run = NodeRun(identifier, "workflow_approval", approve(artifacts))
            else:
                template = next(t for t in config["controller_templates"] if t["name"] == ujt["name"])
                extra_vars = {
                    **survey_defaults(template.get("survey_spec")),
                    **(template.get("extra_vars") or {}),
                    **(nodes[identifier].get("extra_data") or {}),
                    **artifacts,
                    **workflow_vars,
                }
                job = runner.run(template, extra_vars)
                node_run = NodeRun(identifier, "job_template", job.status == "successful", job)
            decided[identifier] = node_run
            walked.append(node_run)
    return walked
