"""Bundles delivered through registries by digest (model_deployment_bundle_delivery=registry),
on the lab fleet with two site registries: the lab's own for site_a, and a second one,
started here on the lab network, for site_b. The controller pushes each bundle once per
registry; every host pulls it by digest from its own site's registry (seen in each
registry's access log) and checks every file against what the controller verified. Last,
site_b as an air-gapped site: a release exported, imported into its registry, deployed from it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest
import requests
from fleetops import ALL_AT_ONCE, DEPLOY_SETTINGS, assert_every_answer_right, latest_report, outcomes, serving_versions
from labtools import BIN, LAB, LAB_INVENTORY, MODEL, podman, run_playbook

SITE_B_CONTAINER = LAB.container("registry-site-b")  # labelled as the lab's: lab_down removes it too
SITE_B_PORT = LAB.spare_registry_port
REPOSITORY = f"edgeml-bundles/{MODEL}"
REGISTRY_IMAGE = f"localhost/{LAB.name}-registry:latest"
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture(scope="module")
def site_registries(lab_vars, tmp_path_factory) -> dict:
    """site -> registry as the controller reaches it; the inventory that gives each site its own."""
    subprocess.run(["podman", "rm", "--force", "--ignore", SITE_B_CONTAINER], check=True, capture_output=True)
    podman(
        "run", "--detach", "--name", SITE_B_CONTAINER, "--network", LAB.name,
        "--label", f"io.edgeml.lab={LAB.name}", "--publish", f"127.0.0.1:{SITE_B_PORT}:5000", REGISTRY_IMAGE,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{SITE_B_PORT}/v2/", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, podman("logs", "--tail", "20", SITE_B_CONTAINER)
        time.sleep(0.5)
    forget_bundles(LAB.registry)
    overlay = tmp_path_factory.mktemp("site-registries") / "site-registries.yml"
    registries = {
        "site_a": (LAB.registry_on_lab_network, LAB.registry),
        "site_b": (f"{SITE_B_CONTAINER}:5000", f"127.0.0.1:{SITE_B_PORT}"),
    }
    groups = {
        site: {"vars": {"edgeml_bundle_registry": inside, "edgeml_bundle_registry_from_controller": outside}}
        for site, (inside, outside) in registries.items()
    }
    overlay.write_text(json.dumps({"all": {"children": groups}}))
    sites = {host: variables["edgeml_site"] for host, variables in lab_vars.items() if "edgeml_site" in variables}
    assert set(sites.values()) == set(registries), sites
    yield {
        "overlay": overlay,
        "registries": {site: outside for site, (_, outside) in registries.items()},
        "sites": sites,
    }
    subprocess.run(["podman", "rm", "--force", "--ignore", SITE_B_CONTAINER], check=True, capture_output=True)


def forget_bundles(registry: str) -> None:
    """Delete every tag of the bundle repository in REGISTRY: bundles pushed from an earlier
    `make models` (a new signature makes a new image) would be refused as a moved tag."""
    tags = requests.get(f"http://{registry}/v2/{REPOSITORY}/tags/list", timeout=10)
    for tag in (tags.json().get("tags") or []) if tags.status_code == 200 else []:
        found = held(registry, tag)
        if found is not None:
            gone = requests.delete(f"http://{registry}/v2/{REPOSITORY}/manifests/{found[0]}", timeout=10)
            assert gone.status_code in (202, 404), (tag, gone.status_code, gone.text)


def deploy_through_registries(version: str, overlay, *inventories: str, **extra) -> dict:
    settings = {**DEPLOY_SETTINGS, "model_version": version, "model_deployment_bundle_delivery": "registry", **extra}
    return run_playbook(
        "deploy_model.yml", "-i", str(LAB_INVENTORY), "-i", str(overlay), *inventories, "-e", json.dumps(settings),
        check=False,
    )


def bundle_files_of(bundle) -> dict[str, str]:
    return {
        str(path.relative_to(bundle)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(bundle.rglob("*"))
        if path.is_file()
    }


def on_hosts(*args: str, pattern: str = "debian") -> None:
    subprocess.run([BIN / "ansible", "-i", LAB_INVENTORY, pattern, *args], check=True, capture_output=True, text=True)


def held(registry: str, version: str, repository: str = REPOSITORY) -> tuple[str, str] | None:
    """(manifest digest, image config digest) the registry holds under the version's tag."""
    answer = requests.get(
        f"http://{registry}/v2/{repository}/manifests/{version}", headers={"Accept": MANIFEST_TYPES}, timeout=10
    )
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    return answer.headers["Docker-Content-Digest"], answer.json()["config"]["digest"]


def address_on_lab_network(host: str) -> str:
    return podman(
        "inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{LAB.name}").IPAddress}}}}', LAB.container(host)
    ).strip()


def pulled_by(container: str, digest: str, repository: str = REPOSITORY) -> set[str]:
    """The addresses that fetched the manifest DIGEST from the registry CONTAINER."""
    log = subprocess.run(["podman", "logs", container], check=True, capture_output=True, text=True)
    wanted = f"/v2/{repository}/manifests/{digest}"
    return {
        line.split('http.request.remoteaddr="', 1)[1].split(":", 1)[0]
        for line in (log.stdout + log.stderr).splitlines()
        if wanted in line and "http.request.method=GET" in line and 'http.request.remoteaddr="' in line
    }


def test_a_release_reaches_every_host_from_its_own_site_registry_by_digest(fleet, fleet_on, site_registries, load):
    fleet_on("1.0.0")
    # No host holds 3.0.0 yet: each must get it from its registry, not keep an earlier copy.
    on_hosts("-m", "ansible.builtin.file", "-a", f"path=/var/lib/edgeml/bundles/{MODEL}/3.0.0 state=absent")
    with load(rolling_out="3.0.0") as traffic:
        report = deploy_through_registries("3.0.0", site_registries["overlay"])
    assert report["returncode"] == 0, outcomes(latest_report())
    assert serving_versions(fleet) == dict.fromkeys(fleet, "3.0.0")
    assert_every_answer_right(traffic)
    # Both site registries hold the same image (the same bundle makes the same image).
    images = {site: held(registry, "3.0.0") for site, registry in site_registries["registries"].items()}
    assert None not in images.values(), images
    assert len({config for _digest, config in images.values()}) == 1, images
    # Each host pulled by digest from its own site's registry, not from the other one.
    containers = {"site_a": LAB.container("registry"), "site_b": SITE_B_CONTAINER}
    for host, site in site_registries["sites"].items():
        address = address_on_lab_network(host)
        digest = images[site][0]
        assert address in pulled_by(containers[site], digest), (host, site)
        other = next(s for s in containers if s != site)
        assert address not in pulled_by(containers[other], images[other][0]), (host, other)
    # The hosts' bundles are the verified files: the servers loaded them (a changed file
    # would have been refused at load), and a second run finds nothing to pull.
    again = deploy_through_registries("3.0.0", site_registries["overlay"])
    assert again["returncode"] == 0 and set(outcomes(latest_report()).values()) == {"unchanged"}
    assert all(stats["changed"] == 0 for host, stats in again["stats"].items() if host != "localhost"), again["stats"]


def test_a_tag_moved_to_other_content_is_refused_before_anything_changes(fleet, fleet_on, site_registries, load):
    """Someone pushes other content (the 3.0.0 bundle's image) under 4.0.0 in site_b's
    registry: the rollout of 4.0.0 is refused on every host before any of them changes, and
    nothing is pushed to site_a's registry either."""
    fleet_on("3.0.0")
    moved = f"localhost/{REPOSITORY}:moved"
    podman("pull", "--tls-verify=false", f"{LAB.registry}/{REPOSITORY}:3.0.0")
    podman("tag", f"{LAB.registry}/{REPOSITORY}:3.0.0", moved)
    registry_b = site_registries["registries"]["site_b"]
    podman("push", "--tls-verify=false", moved, f"{registry_b}/{REPOSITORY}:4.0.0")
    before = held(registry_b, "4.0.0")
    registry_a = site_registries["registries"]["site_a"]
    a_before = held(registry_a, "4.0.0")
    with load() as traffic:  # 4.0.0 is never allowed to answer
        report = deploy_through_registries("4.0.0", site_registries["overlay"])
    assert report["returncode"] != 0
    assert serving_versions(fleet) == dict.fromkeys(fleet, "3.0.0")
    summary = latest_report()
    assert set(outcomes(summary).values()) <= {"refused", "skipped (rollout halted)"}, outcomes(summary)
    reasons = {row["host"]: row["reason"] or "" for row in summary["hosts"] if row["outcome"] == "refused"}
    assert reasons and all("points at other content than the verified bundle" in why for why in reasons.values())
    assert all(stats["changed"] == 0 for host, stats in report["stats"].items() if host != "localhost")
    assert held(registry_b, "4.0.0") == before  # refused, never overwritten
    assert held(registry_a, "4.0.0") == a_before  # nothing pushed anywhere
    assert_every_answer_right(traffic)


def _uploads(container: str) -> int:
    """How many uploads (blob and manifest PUTs) the registry CONTAINER has answered."""
    log = subprocess.run(["podman", "logs", container], check=True, capture_output=True, text=True)
    return sum(
        1 for line in (log.stdout + log.stderr).splitlines()
        if "http.request.method=PUT" in line and "http.response.status=201" in line
    )  # fmt: skip


def test_a_release_carried_to_an_air_gapped_site_deploys_from_its_registry(  # noqa: PLR0917 - fixtures
    fleet, fleet_on, site_registries, load, model_bundles, server_image, tmp_path
):
    """site_b as an air-gapped site: 1.0.0 and the server image exported as a release
    (export_release.yml), loaded into site_b's registry and its control node's bundle root
    after every check (import_release.yml), then rolled out there with the same
    deploy_model.yml: its hosts pull both images from their own registry, and the
    deployment pushes nothing (the import put everything there). site_a is not touched."""
    fleet_on("3.0.0")
    release_dir, site_bundles = tmp_path / "release-1.0.0", tmp_path / "site-b-bundles"
    exported = run_playbook("export_release.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps({
        "release_model_name": MODEL, "release_model_version": "1.0.0", "release_bundle_src": str(model_bundles),
        "release_server_image": server_image["image"], "release_dir": str(release_dir),
    }))  # fmt: skip
    assert exported["returncode"] == 0
    registry_b = site_registries["registries"]["site_b"]
    imported = run_playbook("import_release.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps({
        "release_dir": str(release_dir), "release_registry": registry_b, "release_registry_tls_verify": False,
        "release_bundle_root": str(site_bundles),
    }))  # fmt: skip
    assert imported["returncode"] == 0
    assert bundle_files_of(site_bundles / MODEL / "1.0.0") == bundle_files_of(model_bundles / MODEL / "1.0.0")
    assert held(registry_b, "1.0.0") is not None
    again = run_playbook("import_release.yml", "-i", str(LAB_INVENTORY), "-e", json.dumps({
        "release_dir": str(release_dir), "release_registry": registry_b, "release_registry_tls_verify": False,
        "release_bundle_root": str(site_bundles),
    }))  # fmt: skip
    assert again["stats"]["localhost"]["changed"] == 0  # idempotent
    # The site's inventory: site_b's hosts take the server image from their own registry too.
    site_overlay = tmp_path / "site-b.yml"
    site_overlay.write_text(json.dumps({"all": {"children": {"site_b": {"vars": {
        "edgeml_registry": f"{SITE_B_CONTAINER}:5000", "edgeml_registry_from_controller": registry_b,
    }}}}}))  # fmt: skip
    uploads = _uploads(SITE_B_CONTAINER)
    assert uploads > 0  # the import's
    # site_b's hosts served 1.0.0 before: without their copy, they must get it from the registry.
    on_hosts("-m", "ansible.builtin.file", "-a", f"path=/var/lib/edgeml/bundles/{MODEL}/1.0.0 state=absent",
             pattern="site_b")  # fmt: skip
    site_b_hosts = sorted(host for host, site in site_registries["sites"].items() if site == "site_b")
    with load(rolling_out="1.0.0") as traffic:
        report = deploy_through_registries(
            "1.0.0", site_registries["overlay"], "-i", str(site_overlay),
            model_deployment_bundle_src=str(site_bundles), rollout_hosts="site_b", **ALL_AT_ONCE,
        )  # fmt: skip
    assert report["returncode"] == 0, outcomes(latest_report())
    assert outcomes(latest_report()) == dict.fromkeys(site_b_hosts, "deployed")
    versions = serving_versions(fleet)
    assert {host: versions[host] for host in site_b_hosts} == dict.fromkeys(site_b_hosts, "1.0.0")
    assert {v for host, v in versions.items() if host not in site_b_hosts} == {"3.0.0"}
    assert _uploads(SITE_B_CONTAINER) == uploads  # the deployment pushed nothing
    # The bundle came from the site's registry by digest, and the model server runs the
    # server image pinned by its digest there. (Whether a host pulls that image depends on
    # whether it holds it under that name already: on a lab where this test ran before, it does.)
    server = json.loads((release_dir / "release.json").read_text())["server_image"]
    server_digest = held(registry_b, server["tag"], server["repository"])[0]
    server_ref = f"{SITE_B_CONTAINER}:5000/{server['repository']}@{server_digest}"
    bundle_digest = held(registry_b, "1.0.0")[0]
    for host in site_b_hosts:
        assert address_on_lab_network(host) in pulled_by(SITE_B_CONTAINER, bundle_digest), host
        running = podman("exec", LAB.container(host), "podman", "ps", "--filter", f"name=edgeml-{MODEL}",
                         "--format", "{{.Image}}").split()  # fmt: skip
        assert running == [server_ref], (host, running)
    assert_every_answer_right(traffic)
