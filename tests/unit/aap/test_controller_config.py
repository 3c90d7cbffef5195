# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The Automation Platform definitions (extensions/aap/controller_config.yml), checked
without a controller (AWX cannot run here):

- every definition is accepted by the argument spec of the awx.awx module that applies it
  (playbooks/aap_configure.yml), with Ansible's own ArgumentSpecValidator; workflow nodes
  against the node options the workflow_job_template module documents;
- every survey question's variable and type, and every workflow node's extra data, are
  accepted by the argument validation of the playbook the job runs
  (playbooks/vars/job_arguments.yml, what the playbook checks first);
- the workflow's graph is the gated release it claims to be;
- the project template has a playbook for every job template.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

REPO = Path(__file__).resolve().parents[3]
CONFIG_FILE = REPO / "extensions" / "aap" / "controller_config.yml"
PROJECT = REPO / "extensions" / "aap" / "project"
JOB_ARGUMENTS = yaml.safe_load((REPO / "playbooks" / "vars" / "job_arguments.yml").read_text())["job_arguments"]

# Each list of definitions and the awx.awx module that applies it.
MODULES = {
    "controller_credential_types": "credential_type",
    "controller_projects": "project",
    "controller_inventories": "inventory",
    "controller_inventory_sources": "inventory_source",
    "controller_templates": "job_template",
    "controller_workflows": "workflow_job_template",
}
# A survey question's type and the argument types that take its answer as it comes.
SURVEY_TYPES = {
    "text": {"str", "path", "raw"},
    "textarea": {"str", "raw"},
    "password": {"str", "raw"},
    "integer": {"int", "raw"},
    "float": {"float", "raw"},
    "multiplechoice": {"str", "raw"},
    "multiselect": {"list", "raw"},
}


def _render(value: Any, variables: dict[str, Any]) -> Any:
    """Template the definitions as Ansible would when they are passed with -e @FILE."""
    if isinstance(value, str):
        return jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(value).render(**variables)
    if isinstance(value, list):
        return [_render(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: _render(item, variables) for key, item in value.items()}
    return value


CONFIG = yaml.safe_load(CONFIG_FILE.read_text())
CONFIG = _render(CONFIG, {key: value for key, value in CONFIG.items() if key.startswith("edgeml_aap_")})
TEMPLATES = {template["name"]: template for template in CONFIG["controller_templates"]}


class _Captured(Exception):
    def __init__(self, argument_spec: dict[str, Any], kwargs: dict[str, Any]) -> None:
        super().__init__("argument spec captured")
        self.argument_spec = argument_spec
        self.kwargs = kwargs


def _awx_module_spec(name: str, monkeypatch) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The awx.awx module's own argument spec and its constraints, as its main() builds
    them (captured where it hands them to ControllerAPIModule), and its documentation."""
    module = importlib.import_module(f"ansible_collections.awx.awx.plugins.modules.{name}")

    def capture(argument_spec=None, **kwargs):
        raise _Captured(argument_spec, kwargs)

    monkeypatch.setattr(module, "ControllerAPIModule", capture)
    with pytest.raises(_Captured) as captured:
        module.main()
    return captured.value.argument_spec, captured.value.kwargs, yaml.safe_load(module.DOCUMENTATION)


def _validate(spec: dict[str, Any], params: dict[str, Any], **constraints) -> list[str]:
    known = ("mutually_exclusive", "required_together", "required_one_of", "required_if", "required_by")
    validator = ArgumentSpecValidator(spec, **{key: constraints[key] for key in known if key in constraints})
    return [str(error) for error in validator.validate(params).errors]


def _spec_from_doc(options: dict[str, Any]) -> dict[str, Any]:
    """An argument spec from documented options (what validate-modules compares them with)."""
    spec = {}
    for name, doc in options.items():
        entry = {key: doc[key] for key in ("type", "elements", "choices", "required", "aliases") if key in doc}
        if "suboptions" in doc:
            entry["options"] = _spec_from_doc(doc["suboptions"])
        spec[name] = entry
    return spec


def _definitions():
    for key, module in MODULES.items():
        for definition in CONFIG.get(key, []):
            yield pytest.param(module, definition, id=f"{module}: {definition['name']}")


@pytest.mark.parametrize("module, definition", list(_definitions()))
def test_every_definition_is_accepted_by_its_awx_module(module, definition, monkeypatch):
    spec, constraints, _doc = _awx_module_spec(module, monkeypatch)
    assert _validate(spec, definition, **constraints) == []


def test_every_list_of_the_configuration_is_applied():
    """Each controller_* list has its task in playbooks/aap_configure.yml."""
    playbook = (REPO / "playbooks" / "aap_configure.yml").read_text()
    for key, module in MODULES.items():
        assert key in CONFIG, key
        assert f"awx.awx.{module}:" in playbook and key in playbook, key


def test_workflow_nodes_are_accepted_as_the_module_documents_them(monkeypatch):
    _spec, _constraints, doc = _awx_module_spec("workflow_job_template", monkeypatch)
    node_spec = _spec_from_doc(doc["options"]["workflow_nodes"]["suboptions"])
    for workflow in CONFIG["controller_workflows"]:
        for node in workflow["workflow_nodes"]:
            assert _validate(node_spec, node) == [], node["identifier"]


def _playbook_options(template: dict[str, Any]) -> dict[str, Any]:
    name = template["playbook"].removesuffix(".yml")
    return JOB_ARGUMENTS.get(name, {}).get("options", {})


def _answers(question: dict[str, Any]) -> list[Any]:
    """Answers AWX would pass for QUESTION: its default, and every choice."""
    kind = question["type"]
    if kind == "multiplechoice":
        return list(question["choices"])
    if kind == "integer":
        return [question.get("default", question.get("min", 0))]
    if kind == "float":
        return [float(question.get("default", question.get("min", 0.0)))]
    return [question.get("default", "x" * max(1, question.get("min", 1)))]


def _first_answers(questions: list[dict[str, Any]]) -> dict[str, Any]:
    return {question["variable"]: _answers(question)[0] for question in questions}


def _surveys():
    for template in CONFIG["controller_templates"]:
        if template.get("survey_enabled"):
            yield pytest.param(template, id=template["name"])


@pytest.mark.parametrize("template", list(_surveys()))
def test_every_survey_answer_is_accepted_by_the_playbook(template):
    options = _playbook_options(template)
    questions = template["survey_spec"]["spec"]
    assert questions, template["name"]
    for question in questions:
        variable, kind = question["variable"], question["type"]
        assert variable in options, f"{variable} is not an argument of {template['playbook']}"
        assert options[variable]["type"] in SURVEY_TYPES[kind], (variable, kind, options[variable]["type"])
        if "choices" in options[variable]:
            assert set(question["choices"]) <= set(options[variable]["choices"]), variable
    # Every answer of every question, with the other questions at their first answers: what
    # the playbook requires, the survey asks for.
    answers = _first_answers(questions)
    for question in questions:
        for answer in _answers(question):
            given = {**answers, question["variable"]: answer}
            assert _validate(options, given) == [], given


def test_a_wrong_answer_is_refused_by_the_playbook():
    """The validation the surveys are held to is not a formality."""
    options = JOB_ARGUMENTS["deploy_model"]["options"]
    assert _validate(options, {"rollout_pause_seconds": "soon"})
    assert _validate(options, {"rollout_unreachable": "maybe"})
    assert _validate(JOB_ARGUMENTS["bundle_model"]["options"], {"bundle_model_name": "digits"})  # the rest missing


def _workflow() -> dict[str, Any]:
    (workflow,) = [w for w in CONFIG["controller_workflows"] if w["name"] == "edgeml - gated model release"]
    return workflow


def test_workflow_nodes_run_existing_templates_with_accepted_extra_data():
    """Each job gets the workflow's survey answers and its node's extra data (AWX passes
    both as extra variables): its playbook accepts them, and they hold what it requires."""
    workflow = _workflow()
    survey = _first_answers(workflow["survey_spec"]["spec"])
    identifiers = {node["identifier"] for node in workflow["workflow_nodes"]}
    for node in workflow["workflow_nodes"]:
        for kind in ("success_nodes", "failure_nodes", "always_nodes"):
            for target in node.get("related", {}).get(kind, []):
                assert target["identifier"] in identifiers, (node["identifier"], target)
        template = node["unified_job_template"]
        if template["type"] == "job_template":
            assert template["name"] in TEMPLATES, template["name"]
            options = _playbook_options(TEMPLATES[template["name"]])
            given = {key: value for key, value in survey.items() if key in options}
            assert _validate(options, {**given, **node.get("extra_data", {})}) == [], node["identifier"]
    # The workflow's own survey reaches the nodes as extra variables: each answer is taken
    # by at least one node's playbook and refused by none.
    node_options = [
        _playbook_options(TEMPLATES[node["unified_job_template"]["name"]])
        for node in workflow["workflow_nodes"]
        if node["unified_job_template"]["type"] == "job_template"
    ]
    for question in workflow["survey_spec"]["spec"]:
        assert any(question["variable"] in options for options in node_options), question["variable"]
        for options in node_options:
            for answer in _answers(question):
                answered = {**survey, question["variable"]: answer}
                given = {key: value for key, value in answered.items() if key in options}
                assert _validate(options, given) == []


def _next(node: dict[str, Any], kind: str) -> list[str]:
    return [target["identifier"] for target in node.get("related", {}).get(kind, [])]


def test_the_workflow_is_a_gated_release():
    nodes = {node["identifier"]: node for node in _workflow()["workflow_nodes"]}
    # Starts with the bundle (the only node nothing points at).
    pointed = {target for node in nodes.values() for kind in ("success_nodes", "failure_nodes", "always_nodes")
               for target in _next(node, kind)}
    assert set(nodes) - pointed == {"bundle"}
    assert _next(nodes["bundle"], "success_nodes") == ["canary"]
    assert nodes["canary"]["extra_data"]["rollout_hosts"] == "canary"
    # Nothing beyond the canary without an approval.
    assert _next(nodes["canary"], "success_nodes") == ["approve"]
    assert nodes["approve"]["unified_job_template"]["type"] == "workflow_approval"
    assert _next(nodes["approve"], "success_nodes") == ["remaining rings"]
    assert nodes["remaining rings"]["extra_data"]["rollout_hosts"] == "edge:!canary"
    # A denied approval rolls back the canary only; any failed deployment, the fleet.
    assert _next(nodes["approve"], "failure_nodes") == ["rollback canary"]
    assert nodes["rollback canary"]["extra_data"]["rollback_hosts"] == "canary"
    for deploy in ("canary", "remaining rings"):
        assert _next(nodes[deploy], "failure_nodes") == ["rollback fleet"]
    assert nodes["rollback fleet"]["extra_data"]["rollback_hosts"] == "edge"
    # The rollback goes to the version before the release: the deploy playbook passes
    # rollback_to on (set_stats), so the rollback nodes must not set it themselves.
    assert all("rollback_to" not in node.get("extra_data", {}) for node in nodes.values())
    assert "rollback_to" in (REPO / "playbooks" / "_rollout_report.yml").read_text()


def test_rollouts_are_never_sliced():
    """A job slice runs part of the inventory on its own: rings, site budgets and the fleet
    rollback would each see only a slice (docs/aap.md)."""
    for name in ("edgeml - deploy a model", "edgeml - roll back"):
        assert TEMPLATES[name].get("job_slice_count", 1) == 1, name


@pytest.mark.parametrize("template", CONFIG["controller_templates"], ids=lambda template: template["name"])
def test_the_project_template_has_each_job_playbook(template):
    wrapper = PROJECT / template["playbook"]
    plays = yaml.safe_load(wrapper.read_text())
    stem = template["playbook"].removesuffix(".yml")
    assert (REPO / "playbooks" / template["playbook"]).is_file()
    assert plays == [{"name": f"Run edgeml.fleet.{stem}", "ansible.builtin.import_playbook": f"edgeml.fleet.{stem}"}]
