"""microshift_deployment: the manifests it applies, rendered and schema-checked OFFLINE.

There is no MicroShift or Kubernetes cluster here: the role's templates are rendered by
Ansible itself (``ansible-playbook`` over the role's ``render`` entry point, connection
local, several variable sets at once) and every manifest is validated with
kubernetes-validate against the Kubernetes JSON schemas it ships, for Kubernetes 1.31
(Red Hat build of MicroShift 4.18), strict mode (unknown fields are errors). Nothing here
applies, rolls out or rolls back against a live cluster.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[4]
HERE = Path(__file__).resolve().parent
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
K8S_VERSION = "1.31"  # MicroShift 4.18
SHA_A = "a" * 64
SHA_B = "b" * 64
IMAGE = "registry.example.internal:5000/edgeml-model-server@sha256:" + "c" * 64

SCENARIOS = {
    "default": {
        "microshift_deployment_model_name": "digits",
        "microshift_deployment_model_version": "1.0.0",
        "microshift_deployment_model_sha256": SHA_A,
        "microshift_deployment_image": IMAGE,
    },
    "newversion": {
        "microshift_deployment_model_name": "digits",
        "microshift_deployment_model_version": "3.0.0",
        "microshift_deployment_model_sha256": SHA_B,
        "microshift_deployment_image": IMAGE,
    },
    "custom": {
        "microshift_deployment_model_name": "my_model",
        "microshift_deployment_model_version": "2.1.0+build.7",
        "microshift_deployment_model_sha256": SHA_A,
        "microshift_deployment_image": "localhost/edgeml-model-server:0.1.0",
        "microshift_deployment_namespace": "models",
        "microshift_deployment_manage_namespace": False,
        "microshift_deployment_scc": "",
        "microshift_deployment_service_type": "ClusterIP",
        "microshift_deployment_replicas": 2,
        "microshift_deployment_bundle_root": "/srv/edge/bundles",
        "microshift_deployment_extra_labels": {"team": "vision"},
        "microshift_deployment_readiness_probe": {
            "initial_delay_seconds": 2, "period_seconds": 5, "timeout_seconds": 3, "failure_threshold": 4},
        "microshift_deployment_readiness_require_expected": True,
        "microshift_deployment_resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
    },
    "autoport": {
        "microshift_deployment_model_name": "digits",
        "microshift_deployment_model_version": "1.0.0",
        "microshift_deployment_model_sha256": SHA_A,
        "microshift_deployment_image": IMAGE,
        "microshift_deployment_node_port": 0,
        "__microshift_deployment_history": [
            {"version": "1.0.0", "sha256": SHA_A, "image_digest": "sha256:" + "c" * 64,
             "deployed_at": "2026-11-24T10:00:00Z", "outcome": "deployed", "reason": None},
        ],
    },
}


def run_playbook(playbook: Path, inventory: dict, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    inv = tmp / "inventory.yml"
    inv.write_text(yaml.safe_dump(inventory))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1")
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inv), str(playbook), *args],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120, check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, dict[str, dict]]:
    """{scenario: {kind: manifest}} for every scenario, from one ansible-playbook run."""
    tmp = tmp_path_factory.mktemp("microshift_deployment")
    hosts = {
        name: {**scenario, "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
               "microshift_deployment_render_dir": str(tmp / name)}
        for name, scenario in SCENARIOS.items()
    }
    result = run_playbook(HERE / "render.yml", {"all": {"hosts": hosts}}, tmp)
    assert result.returncode == 0, result.stdout + result.stderr
    out = {}
    for name in SCENARIOS:
        docs = {}
        for doc in yaml.safe_load_all((tmp / name / "manifests.yaml").read_text()):
            key = "History" if doc["metadata"]["name"].endswith("-history") else doc["kind"]
            assert key not in docs, f"two {key} manifests"
            docs[key] = doc
        out[name] = docs
    return out


def _all_manifests():
    return [(s, k) for s in SCENARIOS for k in ("ServiceAccount", "ConfigMap", "Deployment", "Service")]


@pytest.mark.parametrize(("scenario", "kind"), _all_manifests())
def test_manifest_valid_against_kubernetes_schema(rendered, scenario, kind):
    doc = rendered[scenario][kind]
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


def test_every_rendered_manifest_is_valid(rendered):
    count = 0
    for docs in rendered.values():
        for doc in docs.values():
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
            count += 1
    # default/newversion: 6 each; custom: no Namespace, no RoleBinding; autoport: 6 + history
    assert count == 6 + 6 + 4 + 7


def test_optional_objects(rendered):
    assert {"Namespace", "RoleBinding"} <= set(rendered["default"])
    assert "Namespace" not in rendered["custom"] and "RoleBinding" not in rendered["custom"]
    binding = rendered["default"]["RoleBinding"]
    assert binding["roleRef"]["name"] == "system:openshift:scc:hostmount-anyuid"
    assert binding["subjects"][0]["name"] == "edgeml-digits"
    ns = rendered["default"]["Namespace"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def _container(rendered, scenario):
    return rendered[scenario]["Deployment"]["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_probes_point_at_the_oip_paths(rendered, scenario):
    container = _container(rendered, scenario)
    model = SCENARIOS[scenario]["microshift_deployment_model_name"]
    # Readiness: the model's readiness AND its answers to the bundle's ground truth, asked
    # by the probe module inside the container, of the pod's own port, from the bundle mount.
    readiness = container["readinessProbe"]
    assert "httpGet" not in readiness
    custom = scenario == "custom"  # timing 2/5/3/4 and require_expected
    assert readiness["exec"] == {"command": [
        "/opt/edgeml-server/venv/bin/python", "-m", "edgeml_server.probe", "--answers",
        "http://127.0.0.1:8080", "/srv/models", model, "--deadline", "2.2" if custom else "7.5",
        *(["--require-expected"] if custom else [])]}
    # the probe's own deadline (3/4 of it) is under the kubelet's timeout: room for Python to start
    timing = [readiness[k] for k in ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")]
    assert timing == ([2, 5, 3, 4] if custom else [1, 2, 10, 3])
    # Liveness stays process health only: a pod that answers wrongly is not restarted in a loop.
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["livenessProbe"]["timeoutSeconds"] == 2
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    # the probe reads the same bundle root the server loads from
    assert container["volumeMounts"][0]["mountPath"] == readiness["exec"]["command"][5]
    assert rendered[scenario]["ConfigMap"]["data"]["EDGEML_BUNDLES"] == readiness["exec"]["command"][5]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_security_context(rendered, scenario):
    pod = rendered[scenario]["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_bundle_root_is_mounted_read_only_from_the_host(rendered, scenario):
    pod = rendered[scenario]["Deployment"]["spec"]["template"]["spec"]
    root = SCENARIOS[scenario].get("microshift_deployment_bundle_root", "/var/lib/edgeml/bundles")
    assert pod["volumes"] == [{"name": "bundles", "hostPath": {"path": root, "type": "Directory"}}]
    assert pod["containers"][0]["volumeMounts"] == [
        {"name": "bundles", "mountPath": "/srv/models", "readOnly": True}]


def test_settings_configmap_matches_the_server_env(rendered):
    cm = rendered["default"]["ConfigMap"]
    assert cm["immutable"] is True
    assert cm["data"] == {
        "EDGEML_BUNDLES": "/srv/models", "EDGEML_MODEL": "digits", "EDGEML_VERSION": "1.0.0",
        "EDGEML_PORT": "8080", "EDGEML_LOG_LEVEL": "info", "EDGEML_INTRA_OP_THREADS": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    container = _container(rendered, "default")
    assert container["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]


def test_a_new_version_rolls_out_and_keeps_the_old_settings(rendered):
    old, new = rendered["default"], rendered["newversion"]
    old_ann = old["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    new_ann = new["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert old_ann["edgeml.io/model-version"] == "1.0.0"
    assert new_ann["edgeml.io/model-version"] == "3.0.0"
    assert old_ann["edgeml.io/model-sha256"] == SHA_A
    assert new_ann["edgeml.io/model-sha256"] == SHA_B
    # the pod template changes, so Kubernetes makes a new ReplicaSet (a rollout) ...
    assert old["Deployment"]["spec"]["template"] != new["Deployment"]["spec"]["template"]
    # ... whose settings live in a new ConfigMap: the old revision keeps its own for a rollback
    assert old["ConfigMap"]["metadata"]["name"] != new["ConfigMap"]["metadata"]["name"]
    assert new["ConfigMap"]["data"]["EDGEML_VERSION"] == "3.0.0"
    # the selector never changes (it is immutable in apps/v1)
    assert old["Deployment"]["spec"]["selector"] == new["Deployment"]["spec"]["selector"]


def test_same_inputs_render_the_same_settings_name(rendered):
    assert (rendered["default"]["ConfigMap"]["metadata"]["name"]
            == rendered["autoport"]["ConfigMap"]["metadata"]["name"])


def test_rollout_strategy_never_drops_the_serving_pod(rendered):
    spec = rendered["default"]["Deployment"]["spec"]
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert spec["progressDeadlineSeconds"] == 300
    assert spec["replicas"] == 1


def test_service(rendered):
    svc = rendered["default"]["Service"]["spec"]
    assert svc["type"] == "NodePort"
    assert svc["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080, "targetPort": "http", "nodePort": 30080}]
    assert svc["selector"] == rendered["default"]["Deployment"]["spec"]["selector"]["matchLabels"]
    assert "nodePort" not in rendered["autoport"]["Service"]["spec"]["ports"][0]
    custom = rendered["custom"]["Service"]["spec"]
    assert custom["type"] == "ClusterIP" and "nodePort" not in custom["ports"][0]


def test_custom_variables(rendered):
    dep = rendered["custom"]["Deployment"]
    assert dep["metadata"]["name"] == "edgeml-my-model"
    assert dep["metadata"]["namespace"] == "models"
    assert dep["spec"]["replicas"] == 2
    assert dep["metadata"]["labels"]["team"] == "vision"
    assert dep["metadata"]["labels"]["edgeml.io/model"] == "my_model"
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "localhost/edgeml-model-server:0.1.0"
    assert container["resources"] == SCENARIOS["custom"]["microshift_deployment_resources"]
    assert container["readinessProbe"]["exec"]["command"][3:] == [
        "--answers", "http://127.0.0.1:8080", "/srv/models", "my_model", "--deadline", "2.2", "--require-expected"]
    assert rendered["custom"]["ConfigMap"]["data"]["EDGEML_VERSION"] == "2.1.0+build.7"


def test_history_configmap(rendered):
    history = json.loads(rendered["autoport"]["History"]["data"]["history.json"])
    assert history[0]["version"] == "1.0.0" and history[0]["outcome"] == "deployed"


def test_validator_rejects_a_broken_manifest(rendered):
    """The schema check is real: a misspelt field fails strict validation."""
    doc = copy.deepcopy(rendered["default"]["Deployment"])
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["execc"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_syntax_check_and_lint_friendly_playbook():
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "--syntax-check", str(HERE / "deploy.yml")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
