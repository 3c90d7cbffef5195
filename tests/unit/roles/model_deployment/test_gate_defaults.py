# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""One source for every gate default: GATES_ARGUMENT_SPEC (the module's argument spec).

The module's documentation, the role's typed argument spec and the role's defaults restate
it (Ansible reads each from its own file); these tests hold them to it, option by option.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import (
    GATES_ARGUMENT_SPEC,
    GateSettings,
    gate_default,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_runner import _gates
from ansible_collections.edgeml.fleet.plugins.modules import model_deployment

ROLE = Path(__file__).resolve().parents[4] / "roles" / "model_deployment"


def leaves(spec: dict, path: tuple[str, ...] = ()):
    """(path, type, default) of every option below SPEC that is not a dict."""
    for key, option in spec.items():
        if option.get("type") == "dict":
            yield from leaves(option.get("options") or option.get("suboptions") or {}, (*path, key))
        else:
            yield (*path, key), option.get("type"), option.get("default")


def value_at(tree: dict, path: tuple[str, ...]):
    """The value at PATH; None when its last key is unset (an option without a default)."""
    for key in path[:-1]:
        tree = tree[key]
    return tree.get(path[-1])


SOURCE = sorted(leaves(GATES_ARGUMENT_SPEC))
IDS = [".".join(path) for path, _kind, _default in SOURCE]


def test_the_spec_has_every_gate():
    assert {path[0] for path, _kind, _default in SOURCE} == {
        "readiness_timeout",
        "smoke",
        "latency",
        "error_rate",
        "live",
    }


@pytest.mark.parametrize(("path", "kind", "default"), SOURCE, ids=IDS)
def test_module_documentation_states_the_spec(path, kind, default):
    doc = yaml.safe_load(model_deployment.DOCUMENTATION)["options"]["gates"]["suboptions"]
    documented = {p: (k, d) for p, k, d in leaves(doc)}
    assert documented[path] == (kind, default)


@pytest.mark.parametrize(("path", "kind", "default"), SOURCE, ids=IDS)
def test_role_argument_spec_and_defaults_state_the_spec(path, kind, default):
    specs = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())
    role_spec = specs["argument_specs"]["main"]["options"]["model_deployment_gates"]["options"]
    assert {p: (k, d) for p, k, d in leaves(role_spec)}[path] == (kind, default)
    role_defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())["model_deployment_gates"]
    assert value_at(role_defaults, path) == default


def test_settings_take_the_spec_defaults_everywhere():
    assert _gates({}) == GateSettings()
    assert GateSettings().readiness_timeout == gate_default("readiness_timeout")
    assert GateSettings().live_seconds == gate_default("live", "seconds")
    role_defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())["model_deployment_gates"]
    assert _gates(role_defaults) == GateSettings()
