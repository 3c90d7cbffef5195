"""os_image: the rhel_edge blueprint, the bootc Containerfile, the quadlet unit and the
composer-cli command lines, rendered with Ansible's templar from the role's own
defaults and vars, the way the role renders them.

No image builder and no bootc host exist here: the blueprint is parsed with tomllib
and checked for the structure image builder expects; the command lines are compared
argument by argument.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import tomllib
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = Path(__file__).resolve().parents[4] / "roles" / "os_image"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0testkeytestkeytestkeytestkeytestkeytest fleet@ctl"
MODEL = {"root": "/srv/bundles", "name": "digits", "version": "3.0.0"}


def templar(**overrides: object) -> Templar:
    loader = DataLoader()
    variables: dict[str, object] = {}
    for path in ("defaults/main.yml", "vars/main.yml"):
        variables.update(loader.load_from_file(str(ROLE / path), trusted_as_template=True))
    variables.update(
        ansible_managed="Ansible managed",
        playbook_dir="/work/playbooks",
        role_path=str(ROLE),
        ansible_search_path=[str(ROLE)],
        __os_image_model_sha256="c" * 64,
    )
    variables.update(overrides)
    return Templar(loader=loader, variables=variables)


def render(template: str, **overrides: object) -> str:
    return templar(**overrides).template(trust_as_template((ROLE / "templates" / template).read_text()))


def value(expression: str, **overrides: object) -> object:
    return templar(**overrides).template(trust_as_template("{{ " + expression + " }}"))


# --- rhel_edge blueprint ---------------------------------------------------------------------


def blueprint(**overrides: object) -> dict:
    settings = {"os_image_backend": "rhel_edge", "os_image_ssh_authorized_keys": [KEY], **overrides}
    # As backend_rhel_edge.yml does: render each file the blueprint carries, then the blueprint.
    files = [
        {"path": f["path"], "mode": f["mode"], "data": render(f["template"], __os_image_preload=True, **settings)}
        for f in value("__os_image_rhel_edge_file_templates", **settings)
        if f["when"]
    ]
    return tomllib.loads(render("rhel_edge/blueprint.toml.j2", __os_image_rhel_edge_files=files, **settings))


def test_blueprint_top_level():
    bp = blueprint(os_image_name="kiosk-os", os_image_version="2.1.0")
    assert bp["name"] == "kiosk-os"
    assert bp["version"] == "2.1.0"
    assert bp["modules"] == [] and bp["groups"] == []


def test_blueprint_packages_include_greenboot_and_podman():
    names = [p["name"] for p in blueprint(os_image_extra_packages=["tmux", "podman"])["packages"]]
    assert {"podman", "greenboot", "greenboot-default-health-checks", "tmux"} <= set(names)
    assert len(names) == len(set(names)), "no package twice"
    assert all(p["version"] == "*" for p in blueprint()["packages"])


def test_blueprint_user_has_key_and_no_password():
    (user,) = blueprint()["customizations"]["user"]
    assert user["name"] == "edgeml-admin"
    assert user["key"] == KEY
    assert user["groups"] == ["wheel"]
    assert "password" not in user


def test_blueprint_without_keys_has_no_key_field():
    (user,) = blueprint(os_image_ssh_authorized_keys=[])["customizations"]["user"]
    assert "key" not in user and "password" not in user


def test_blueprint_services_and_firewall():
    custom = blueprint(os_image_serving_port=9000, os_image_firewall_allowed_tcp_ports=[22, 9100])["customizations"]
    assert {"sshd", "greenboot-healthcheck", "redboot-auto-reboot"} <= set(custom["services"]["enabled"])
    assert custom["firewall"]["ports"] == ["22:tcp", "9100:tcp", "9000:tcp"]
    assert custom["hostname"] == "edgeml-edge"


def test_blueprint_embeds_containers():
    bp = blueprint(
        os_image_rhel_edge_containers=[
            {"source": "registry.example.internal:5000/edgeml-model-server:0.1.0"},
            {"source": "registry.example.internal:5000/other:1", "tls_verify": False},
        ]
    )
    assert bp["containers"] == [
        {"source": "registry.example.internal:5000/edgeml-model-server:0.1.0", "tls-verify": True},
        {"source": "registry.example.internal:5000/other:1", "tls-verify": False},
    ]


def test_blueprint_files_carry_greenboot_check_and_quadlet_unit():
    files = {f["path"]: f for f in blueprint(os_image_model=MODEL)["customizations"]["files"]}
    check = files["/etc/greenboot/check/required.d/50_edgeml_model_server_ready.sh"]
    assert check["mode"] == "0755"
    assert "/v2/models/digits/ready" in check["data"]
    unit = files["/etc/containers/systemd/edgeml-digits-blue.container"]["data"]
    assert "Notify=healthy" in unit
    assert "Pull=never" in unit  # the image comes with the commit ([[containers]])
    assert "edgeml-image-load" not in unit
    dirs = [d["path"] for d in blueprint()["customizations"]["directories"]]
    assert "/etc/greenboot/check/required.d" in dirs


def test_blueprint_without_model_has_no_unit():
    files = [f["path"] for f in blueprint()["customizations"]["files"]]
    assert not any(p.endswith(".container") for p in files)


# --- composer-cli command lines --------------------------------------------------------------


def test_composer_commands():
    plan = value("__os_image_composer", os_image_backend="rhel_edge", os_image_work_dir="/w")
    assert plan["push"] == ["composer-cli", "blueprints", "push", "/w/rhel_edge/edgeml-os.toml"]
    assert plan["depsolve"] == ["composer-cli", "--json", "blueprints", "depsolve", "edgeml-os"]
    assert plan["start"] == [
        "composer-cli",
        "--json",
        "compose",
        "start-ostree",
        "--ref",
        "rhel/9/x86_64/edge",
        "edgeml-os",
        "edge-commit",
    ]
    assert plan["status"] == ["composer-cli", "--json", "compose", "info"]
    assert plan["image"] == ["composer-cli", "compose", "image"]


def test_composer_update_commit_and_installer():
    update = value(
        "__os_image_composer.start",
        os_image_backend="rhel_edge",
        os_image_rhel_edge_parent="abc123",
        os_image_rhel_edge_url="http://repo.example.internal/repo",
    )
    assert update[4:8] == ["--ref", "rhel/9/x86_64/edge", "--parent", "abc123"]
    assert update[8:10] == ["--url", "http://repo.example.internal/repo"]
    installer = value(
        "__os_image_composer.start", os_image_backend="rhel_edge", os_image_rhel_edge_image_type="edge-installer"
    )
    assert installer[-1] == "edge-installer"


# --- bootc Containerfile -----------------------------------------------------------------------


def containerfile(**overrides: object) -> str:
    return render("bootc/Containerfile.j2", os_image_backend="bootc", **overrides)


def test_containerfile_rhel_base():
    text = containerfile(
        os_image_bootc_base="quay.io/centos-bootc/centos-bootc:stream9",
        os_image_bootc_base_family="rhel",
        os_image_model=MODEL,
    )
    assert text.splitlines()[3] == "FROM quay.io/centos-bootc/centos-bootc:stream9"
    assert "dnf -y install" in text and "greenboot" in text
    assert "COPY greenboot/ /etc/greenboot/check/required.d/" in text
    assert 'containers.bootc="1"' in text
    assert 'io.edgeml.os-image.version="1.0.0"' in text
    assert 'io.edgeml.model.version="3.0.0"' in text
    assert "RUN bootc container lint" in text
    assert "apt-get" not in text
    assert "passwd --lock edgeml-admin" in text


def test_containerfile_debian_stand_in():
    text = containerfile()
    assert "FROM localhost/debian-base:trixie" in text
    assert "apt-get install" in text
    assert "bootc container lint" not in text and "greenboot" not in text
    assert "RUN systemctl enable edgeml-image-load.service" in text


def test_containerfile_bound_image():
    text = containerfile(os_image_bootc_server_delivery="bound")
    assert "/usr/lib/bootc/bound-images.d/model-server.image" in text
    assert "edgeml-image-load" not in text


def test_bootc_tags_carry_os_and_model_versions():
    tags = value("__os_image_bootc_tags", os_image_backend="bootc", os_image_version="2.0.0", os_image_model=MODEL)
    assert tags == ["2.0.0", "2.0.0-digits-3.0.0"]


def test_bootc_content_lives_under_usr():
    assert value("__os_image_bundle_dir", os_image_backend="bootc") == "/usr/lib/edgeml/bundles"
    assert value("__os_image_bundle_dir", os_image_backend="debian") == "/var/lib/edgeml/bundles"


def test_bootc_image_builder_command():
    argv = value("__os_image_bib_command", os_image_backend="bootc", os_image_model=MODEL, os_image_output_dir="/out")
    assert argv[:5] == ["podman", "run", "--rm", "--privileged", "--pull=never"]
    assert "/out/bootc:/output" in argv
    assert argv[-3:] == ["xfs", "--local", "localhost/edgeml-os-bootc:1.0.0-digits-3.0.0"]
    assert "--type=qcow2" in argv


# --- quadlet unit (debian and bootc) ----------------------------------------------------------------


def quadlet(**overrides: object) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in render("overlay/model-server.container.j2", os_image_model=MODEL, **overrides).splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
        elif line and not line.startswith("#"):
            sections[current].append(line)
    return sections


def test_quadlet_preloaded_debian():
    unit = quadlet(os_image_backend="debian")
    assert "Image=localhost/edgeml-model-server:0.1.0" in unit["Container"]
    assert "Requires=edgeml-image-load.service" not in unit["Unit"]
    assert "Volume=/var/lib/edgeml/bundles/digits:/models/digits:ro" in unit["Container"]
    assert "Notify=healthy" in unit["Container"]
    assert "WantedBy=multi-user.target" in unit["Install"]


def test_quadlet_archive_loaded_at_first_boot():
    unit = quadlet(os_image_backend="debian", os_image_server_image_preload=False)
    assert "Requires=edgeml-image-load.service" in unit["Unit"]


def test_quadlet_health_command_ends_without_quote():
    # quadlet drops a closing quote at the end of HealthCmd (seen with podman 5.4).
    (health,) = [line for line in quadlet()["Container"] if line.startswith("HealthCmd=")]
    assert not health.endswith('"')
    argv = shlex.split(health.removeprefix("HealthCmd="))
    assert argv[-1] == "http://127.0.0.1:8091/v2/models/digits/ready"


def test_quadlet_health_check_runs_often_while_the_slot_starts_then_seldom():
    container = dict(line.split("=", 1) for line in quadlet()["Container"] if line.startswith("Health"))
    assert container["HealthStartupCmd"] == container["HealthCmd"]
    assert (container["HealthStartupInterval"], container["HealthInterval"]) == ("10s", "60s")


def test_quadlet_is_model_deployments_blue_slot():
    """The baked-in server is slot blue as edgeml.fleet.model_deployment renders it: the
    first deployment starts green beside it (SO_REUSEPORT on the public port, its own
    admin port) and retires it without a gap."""
    container = quadlet()["Container"]
    assert "ContainerName=edgeml-digits-blue" in container
    assert "Label=io.edgeml.slot=blue" in container
    for line in ("EDGEML_PORT=8080", "EDGEML_ADMIN_PORT=8091", "EDGEML_REUSE_PORT=1", "EDGEML_BIND_WHEN_READY=1"):
        assert f"Environment={line}" in container
    moved = quadlet(os_image_server_admin_port=9191)["Container"]
    assert "Environment=EDGEML_ADMIN_PORT=9191" in moved
    assert any(line.endswith("http://127.0.0.1:9191/v2/models/digits/ready") for line in moved)


def test_quadlet_matches_model_deployment_blue_slot():
    """The same settings model_deployment's own unit carries for slot blue (defaults)."""
    deployment_defaults = yaml.safe_load((ROLE.parent / "model_deployment" / "defaults" / "main.yml").read_text())
    image_defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    assert image_defaults["os_image_server_admin_port"] == deployment_defaults["model_deployment_admin_ports"]["blue"]
    assert image_defaults["os_image_server_uid"] == deployment_defaults["model_deployment_uid"]


@pytest.mark.parametrize(("ports", "expected"), [([22], "{ 22, 8080 }"), ([22, 8080], "{ 22, 8080 }")])
def test_nftables_table(ports, expected):
    text = render("overlay/nftables-edgeml.nft.j2", os_image_firewall_allowed_tcp_ports=ports)
    assert f"tcp dport {expected} accept" in text
    assert "flush ruleset" not in text
    assert "policy drop" in text
