# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""The slot's quadlet unit (templates/model-server.container.j2) as the role renders it, with
Ansible's templar from the role's own defaults. Its health check runs on a lab host in every
end-to-end rollout (tests/e2e); here, what the unit asks of podman."""

from __future__ import annotations

from pathlib import Path

from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = Path(__file__).resolve().parents[4] / "roles" / "model_deployment"


def container_section(**overrides: object) -> dict[str, str]:
    loader = DataLoader()
    variables = dict(loader.load_from_file(str(ROLE / "defaults" / "main.yml"), trusted_as_template=True))
    variables.update(
        ansible_managed="Ansible managed",
        model_deployment_name="digits",
        __model_deployment_slot="green",
        __model_deployment_image_ref="registry.example:5000/edgeml-model-server@sha256:" + "a" * 64,
        model_deployment_gates={"readiness_timeout": 120},
        **overrides,
    )
    text = Templar(loader=loader, variables=variables).template(
        trust_as_template((ROLE / "templates" / "model-server.container.j2").read_text())
    )
    section = text.split("[Container]", 1)[1].split("\n[", 1)[0]
    return dict(line.split("=", 1) for line in section.splitlines() if "=" in line and not line.startswith("#"))


def test_the_health_check_runs_often_while_the_slot_starts_then_seldom():
    unit = container_section()
    # The same probe, of this slot's own admin port, in both phases.
    assert unit["HealthStartupCmd"] == unit["HealthCmd"]
    assert unit["HealthCmd"].endswith("http://127.0.0.1:8092/v2/models/digits/ready"), unit["HealthCmd"]
    assert unit["Notify"] == "healthy"
    assert (unit["HealthStartupInterval"], unit["HealthInterval"]) == ("2s", "30s")
    assert unit["HealthStartupTimeout"] == unit["HealthTimeout"] == "3s"


def test_the_health_check_intervals_are_the_role_variables():
    unit = container_section(
        model_deployment_health_startup_interval=10,
        model_deployment_health_interval=60,
        model_deployment_health_timeout=45,
    )
    assert (unit["HealthStartupInterval"], unit["HealthInterval"]) == ("10s", "60s")
    assert unit["HealthStartupTimeout"] == unit["HealthTimeout"] == "45s"
