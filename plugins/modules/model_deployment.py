#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_deployment
short_description: Deploy a model bundle to the model server on an edge host, gated, with rollback
version_added: 0.1.0
description:
  - Runs on the edge host (podman with quadlet and systemd). Serves model O(name) at O(version)
    (or rolls back to an earlier deployment, O(rollback)) with the edgeml model server, in one of
    two slots, C(blue) and C(green), that share the public O(port) (C(SO_REUSEPORT)) and differ in
    container name and admin port.
  - Before anything running is touched, checks that the bundle C(BUNDLE_ROOT/NAME/VERSION/) is on
    the host with the SHA-256 O(bundle_sha256) (file, manifest and option must agree) and that the
    image O(image) is present (and matches O(image_digest) when given). A mismatch fails with
    outcome C(refused) and changes nothing.
  - "Gates before exposure: a new version is judged while only the gates' own requests can reach
    it, and public traffic moves to it only once it passed. When only the model version changes
    (same image, same unit content) the serving slot's server stages the new version beside the
    serving one (admin C(stage)); the gates address the staged version by its version on the
    loopback admin port; then C(promote) switches public traffic to it atomically, the previous
    version still loaded. Otherwise (new image, new unit content, first deployment, unhealthy
    slot) the other slot's unit is written with its public listener held closed
    (C(EDGEML_PUBLIC_HOLD=1)) and the version pinned (C(EDGEML_VERSION)), and started; the gates
    run on its admin port; then its public listener is opened and the old slot's closed (both
    bind O(port) with C(SO_REUSEPORT))."
  - "Gates, in order, against the version under test through the slot's loopback admin port:
    C(readiness) (the version is loaded and ready, and in a slot switch its systemd service is
    active, i.e. its health check passed; a failed or restarting service fails it at once),
    C(smoke) (answers against the bundle's expected or recorded outputs), C(latency) (p95 of
    O(gates.latency.requests) requests), C(error_rate) (5xx answers over the version's requests,
    from the server's C(/metrics), over a short soak with light probe traffic). Then, after the
    switch, C(live): the version's real traffic for O(gates.live.seconds), from the server's own
    counters (server errors, infer p95 against O(gates.latency.p95_ms)); a failure switches back
    at once (C(revert), or the old slot's listener reopened), well within a second."
  - "Only after the live window passed is the state file written (while switching back is still
    cheap), the slot's final unit written (blue/green: without the hold, so a restart opens the
    port by itself), and the previous version released (C(commit), or the old slot stopped and
    its unit removed)."
  - A failed gate, or any error after the switch, restores the previous version and the pointer
    file, and the task fails with the result of C(docs/deployment-result.md) (C(failed_gate),
    C(gates), C(rollback), C(log_tail)). The reason is recorded in the state file
    (C(last_failure) and history), where it survives restarts; if even that write fails, in the
    host's journal. The state file is written (a deployment in progress) before anything
    changes, so an unwritable state directory refuses the deployment (outcome C(refused)).
  - A run that finds the target already serving but the state file stale (a controller killed
    between the switch and its record) rewrites the state file and reports a change.
  - Needs only the Python standard library on the host (HTTP with C(ansible.module_utils.urls)),
    plus C(systemctl), C(journalctl) and C(podman). Runs as root.
  - Needs podman 5.0 or later on the host, for quadlet's C(Notify=healthy) and startup health check
    (quadlet before 4.5 writes no unit from the slot's file, 4.5 to 4.9 ignore C(Notify=healthy)). On an
    older podman it refuses before anything changes (outcome C(refused)), in check mode as well.
author:
  - edgeml.fleet maintainers (@edgeml)
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Verifies the bundle and image and reads what runs, then returns the plan in RV(actions)
        and RV(plan) without changing anything. No gate runs.
      - A bundle or image that the same check run only predicted to deliver (O(pending_delivery))
        is not verified; the plan is predicted from what serves.
  diff_mode:
    support: full
    details:
      - The diff is the pointer file and the unit files (the slot that will serve, and the old
        slot's unit that is removed) before and after.
  idempotent:
    support: full
    details:
      - With the same version, image and unit content on a healthy slot, nothing is touched and
        RV(outcome) is C(unchanged).
options:
  name:
    description:
      - Model name, as in the bundle (C(^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$)). Units are
        C(edgeml-NAME-SLOT.container), services C(edgeml-NAME-SLOT.service).
    type: str
    required: true
  version:
    description:
      - The version to deploy. Quote it in YAML. Mutually exclusive with O(rollback); one of the two is required.
      - Requires O(bundle_sha256) and O(image).
    type: str
  rollback:
    description:
      - Deploy an earlier successful deployment from the host's history instead of O(version),
        C(previous) (the newest one that differs from what serves now) or a version.
      - The history entry's bundle (checked against its recorded SHA-256) and image (checked
        against its recorded image id) must still be on the host. The slot units are those of
        O(slots) with their C(Image=) line set to the history entry's image.
      - The same path and gates as a normal deployment apply, but for latency, which is measured
        and not judged (no p95 budget in the latency gate or the live window). The version
        restored passed it when it was deployed, and the version it replaces (a too slow one,
        say) may still load the host. Readiness, answers (smoke) and server errors still decide.
    type: str
  bundle_root:
    description:
      - Bundle root on the host. The bundle must already be at C(BUNDLE_ROOT/NAME/VERSION/)
        (C(model.onnx) and C(model.json)). The pointer file C(BUNDLE_ROOT/NAME/current), read by
        the server, is written atomically.
    type: path
    default: /var/lib/edgeml/bundles
  bundle_sha256:
    description:
      - Expected SHA-256 of C(model.onnx) (64 lowercase hex digits), from the controller's
        manifest (the C(sha256) that M(edgeml.fleet.model_bundle) returns). Required with O(version).
    type: str
  image:
    description:
      - The server image reference the units run (their C(Image=) line must be exactly this).
        Required with O(version). Pin it by digest.
    type: str
  image_digest:
    description:
      - When given, the local image's C(Digest), one of its C(RepoDigests), or its id must be this
        C(sha256:...) value; checked before anything running is touched.
    type: str
  port:
    description:
      - The public port both slots bind (with C(SO_REUSEPORT)).
    type: int
    required: true
  slots:
    description:
      - The two slots. Each has the content of its quadlet C(.container) unit and its admin port.
    type: dict
    required: true
    suboptions:
      blue:
        description: The blue slot.
        type: dict
        required: true
        suboptions:
          admin_port:
            description: Loopback admin port of this slot's server (gates and swaps use it).
            type: int
            required: true
          unit:
            description:
              - Content of C(edgeml-NAME-blue.container). Needs a C([Container]) section with an
                C(Image=) line; see the notes for what the unit must do.
            type: str
            required: true
      green:
        description: The green slot, as O(slots.blue).
        type: dict
        required: true
        suboptions:
          admin_port:
            description: Loopback admin port of this slot's server.
            type: int
            required: true
          unit:
            description: Content of C(edgeml-NAME-green.container).
            type: str
            required: true
  unit_dir:
    description: Directory of the quadlet units.
    type: path
    default: /etc/containers/systemd
  state_dir:
    description:
      - Directory of the state file C(NAME.json) (mode C(0600), written atomically) holding what
        serves, the deployment history and the last failure.
    type: path
    default: /var/lib/edgeml/state
  history_size:
    description: How many history entries the state file keeps (newest first).
    type: int
    default: 10
  log_lines:
    description: Lines of the slot's log returned in RV(log_tail) when a gate fails.
    type: int
    default: 40
  lock_wait:
    description:
      - Seconds to wait for another deployment of the same model on the host to finish (one
        runs at a time). A deployment whose controller was killed or lost its connection runs
        on to its end on the host; a rerun waits for it rather than failing.
      - C(0) fails at once when another deployment runs.
    type: int
    default: 300
  deadline:
    description:
      - Seconds this deployment may take, counted from the moment the module starts on the
        host (the rollout playbooks pass what is left of the batch's deadline,
        C(rollout_batch_timeout)). Once they have passed, the module moves no public traffic
        to the new version and does not commit it; it restores the previous version as after
        a failed gate (failed gate C(deadline)) and records why in the state file.
      - The controller gives up on the host at that moment and reports it C(timed out). Without
        a deadline, a host that stopped (frozen, overloaded) and ran on later would switch to
        the new version after the rollout had halted and rolled the other hosts back.
      - Not used by rollbacks. Unset, a deployment runs to its end (see O(lock_wait)).
    type: int
  pending_delivery:
    description:
      - In check mode only, what the same check run would have delivered to the host before this
        task but did not, its copy or pull being only predicted (as the C(model_deployment) role
        sets it), among C(bundle) and C(image). The module then predicts the switch from what
        serves without verifying those on the host; a real run always verifies them.
      - Ignored outside check mode.
    type: list
    elements: str
    choices: [bundle, image]
    default: []
  gates:
    description: The gates a new version must pass before it keeps serving.
    type: dict
    default: {}
    suboptions:
      readiness_timeout:
        description:
          - Seconds the slot may take to serve the version and be ready (its self-test passed),
            or for an in-place load to finish.
        type: float
        default: 120
      smoke:
        description:
          - Live answers compared with the bundle's smoke vectors.
          - Each answer is waited for up to O(gates.readiness_timeout) seconds. This gate judges
            answers and the latency gate speed, so a slow but right version fails the latency gate.
        type: dict
        default: {}
        suboptions:
          enabled:
            description: Run this gate.
            type: bool
            default: true
          source:
            description:
              - C(expected) compares with the ground truth given to C(model_bundle)
                (C(expected_outputs)); vectors without it are skipped and a bundle without any
                fails the gate.
              - C(recorded) compares with the outputs recorded when the bundle was made.
              - Unset (default) uses C(expected) for each vector that has it, else C(recorded).
            type: str
            choices: [expected, recorded]
          min_pass_ratio:
            description: Fraction of the compared vectors that must be right.
            type: float
            default: 1.0
      latency:
        description: Inference latency through the slot's admin port.
        type: dict
        default: {}
        suboptions:
          enabled:
            description: Run this gate.
            type: bool
            default: true
          requests:
            description: Number of sequential requests (K), cycling over the smoke vector inputs.
            type: int
            default: 30
          p95_ms:
            description:
              - Budget for the 95th percentile in milliseconds. Unset, latency is measured and reported only.
              - The gate stops as soon as enough requests were over the budget that the p95 cannot be within it
                (2 of 20, 2 of 30), so a slow version serves few gate requests.
            type: float
      error_rate:
        description:
          - Server errors (HTTP 5xx, and probes that got no connection) over the requests to the
            version under test that the server counted in C(edgeml_requests_total) during the soak
            (before the switch, the gates' own probes). Client errors (4xx) are reported by type but do
            not count.
        type: dict
        default: {}
        suboptions:
          enabled:
            description: Run this gate.
            type: bool
            default: true
          soak_seconds:
            description: Length of the window; the module sends about 10 probe requests per second (at most 200).
            type: float
            default: 5.0
          max_ratio:
            description: Highest accepted ratio of server errors to requests (also in the live window).
            type: float
            default: 0.0
      live:
        description:
          - After public traffic moved to the new version, its real traffic is judged from the
            server's own counters (C(edgeml_requests_total) and C(edgeml_request_duration_seconds)
            of that version), read every 0.2 s. More server errors than O(gates.error_rate.max_ratio)
            allows, an infer p95 over O(gates.latency.p95_ms) once O(gates.live.min_requests) were
            served, a failed or restarted service or a server that stops answering switch back at once.
          - With no real traffic in the window it passes with 0 requests (the gates before it judged the version).
        type: dict
        default: {}
        suboptions:
          enabled:
            description: Run the live window.
            type: bool
            default: true
          seconds:
            description: Length of the window.
            type: float
            default: 5.0
          min_requests:
            description: Live requests needed before the p95 is judged (errors are judged from the first).
            type: int
            default: 20
notes:
  - "What the slot units must do (the C(edgeml.fleet.model_deployment) role renders them): run the
    server image with C(Network=host), C(--reuse-port --bind-when-ready) (or
    C(EDGEML_REUSE_PORT=1), C(EDGEML_BIND_WHEN_READY=1)), a server that has the staging and
    public-listener admin endpoints (this collection's model server image), C(EDGEML_PORT=PORT),
    C(EDGEML_ADMIN_PORT=<the slot's admin port>), C(EDGEML_MODEL=NAME), the bundle root mounted
    read-only at C(/models) (C(EDGEML_BUNDLES=/models)), no C(EDGEML_VERSION) (the server reads the
    pointer file), C(Notify=healthy) with a health command probing
    C(http://127.0.0.1:ADMIN/v2/models/NAME/ready), and an C([Install]) section so the serving slot
    starts at boot. Keep the stop timeout above the server's C(--drain-seconds)."
  - The gates send inference requests to the slot; the smoke vectors of the bundle must be valid
    inputs for it.
seealso:
  - name: Deployment result
    description: The result shape every serving target returns (docs/deployment-result.md).
    link: https://github.com/edgeml/fleet/blob/main/docs/deployment-result.md
  - name: Model deployment
    description: How model_deployment works, its state file and the unit contract (docs/model_deployment.md).
    link: https://github.com/edgeml/fleet/blob/main/docs/model_deployment.md
  - module: edgeml.fleet.model_bundle
"""

EXAMPLES = r"""
- name: Deploy digits 3.0.0 (in place when only the model changes, else blue/green)
  edgeml.fleet.model_deployment:
    name: digits
    version: "3.0.0"
    bundle_sha256: "{{ bundle.sha256 }}"
    image: registry.example/edgeml-model-server@sha256:4d1c...
    image_digest: sha256:4d1c...
    port: 8080
    slots:
      blue:
        admin_port: 8081
        unit: "{{ lookup('template', 'edgeml.container.j2', template_vars={'slot': 'blue', 'admin_port': 8081}) }}"
      green:
        admin_port: 8082
        unit: "{{ lookup('template', 'edgeml.container.j2', template_vars={'slot': 'green', 'admin_port': 8082}) }}"
    gates:
      readiness_timeout: 90
      latency: {p95_ms: 50}
      error_rate: {soak_seconds: 10, max_ratio: 0.0}
  register: deployment

- name: Go back to what served before
  edgeml.fleet.model_deployment:
    name: digits
    rollback: previous
    port: 8080
    slots: "{{ edgeml_slots }}"

- name: Show the plan without changing anything
  edgeml.fleet.model_deployment:
    name: digits
    version: "3.0.1"
    bundle_sha256: "{{ bundle.sha256 }}"
    image: "{{ server_image }}"
    port: 8080
    slots: "{{ edgeml_slots }}"
  check_mode: true
  diff: true
"""

RETURN = r"""
target:
  description: The serving target, always C(podman) here.
  returned: always
  type: str
  sample: podman
outcome:
  description:
    - C(deployed), C(unchanged), C(rolled_back) (a gate failed, the previous state serves again),
      C(refused) (a check before any change failed; nothing changed) or C(rollback_failed).
    - In check mode, the predicted outcome (C(deployed) or C(unchanged)).
  returned: always
  type: str
  sample: deployed
model:
  description: Asked-for version, what served before, what serves now, and the asked-for SHA-256.
  returned: always
  type: dict
  sample: {name: digits, version: "3.0.0", previous_version: "1.0.0", serving_version: "3.0.0", sha256: "5e0c..."}
image:
  description: The image reference and its digest (O(image_digest), else the local image id).
  returned: always
  type: dict
  sample: {ref: "registry.example/edgeml-model-server@sha256:4d1c...", digest: "sha256:4d1c..."}
slot:
  description: The slot serving at the end (in check mode, that would serve).
  returned: always
  type: str
  sample: green
plan:
  description: C(unchanged), C(swap) (in place on the serving slot) or C(bluegreen).
  returned: unless refused
  type: str
  sample: bluegreen
gates:
  description:
    - The gates in the order they ran; a failed gate stops the list.
    - Each has its name, verdict, what it measured against which threshold, a one-line detail,
      and the seconds it took.
  returned: always
  type: list
  elements: dict
  sample:
    - name: readiness
      passed: true
      measured: {seconds_to_ready: 2.1}
      threshold: {timeout_seconds: 120.0}
      detail: model digits 3.0.0 ready
      seconds: 2.104
    - name: smoke
      passed: true
      measured: {vectors: 8, passed: 8, pass_ratio: 1.0}
      threshold: {min_pass_ratio: 1.0, source: auto}
      detail: 8 of 8 vectors right
      seconds: 0.061
failed_gate:
  description:
    - Name of the first failed gate, or null. C(readiness), C(smoke), C(latency) and C(error_rate) ran
      before any public request reached the version; C(live) after the switch (then switched back);
      C(rollout) is any other error on the deploy path (then also restored).
  returned: always
  type: str
rollback:
  description:
    - Whether the previous state was restored, why, which version serves again, and the
      seconds from the failed gate to that version confirmed serving (null when none).
  returned: always
  type: dict
  sample:
    performed: true
    reason: "smoke gate: 2 of 8 vectors wrong (vector 3: label expected [3], got [5])"
    restored_version: "1.0.0"
    seconds: 0.412
log_tail:
  description: The last lines of the slot's log (journalctl, else podman logs) when a gate failed.
  returned: always
  type: list
  elements: str
history:
  description:
    - The host's deployment history, newest first (version, sha256, image, image_id,
      image_digest, slot, deployed_at, outcome, reason).
  returned: always
  type: list
  elements: dict
last_failure:
  description:
    - The last failed deployment recorded on the host (version, gate, reason, measured,
      threshold, at), or null.
  returned: always
  type: dict
actions:
  description: What was done (or would be done in check mode), in order.
  returned: always
  type: list
  elements: str
  sample:
    - stage digits 3.0.0 beside 1.0.0 on slot blue (admin port 8091)
    - gates on the staged version (no public traffic reaches it)
    - "promote 3.0.0: public traffic moves to it"
    - "write /var/lib/edgeml/bundles/digits/current: 3.0.0"
    - live window of 5 s on real traffic
    - write /var/lib/edgeml/state/digits.json
    - "commit: release 1.0.0"
"""

import copy

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_gates import GATES_ARGUMENT_SPEC
from ansible_collections.edgeml.fleet.plugins.module_utils._deploy_runner import run_model_deployment


def main() -> None:
    slot = dict(
        type="dict",
        required=True,
        options=dict(admin_port=dict(type="int", required=True), unit=dict(type="str", required=True)),
    )
    argument_spec = dict(
        name=dict(type="str", required=True),
        version=dict(type="str"),
        rollback=dict(type="str"),
        bundle_root=dict(type="path", default="/var/lib/edgeml/bundles"),
        bundle_sha256=dict(type="str"),
        image=dict(type="str"),
        image_digest=dict(type="str"),
        port=dict(type="int", required=True),
        slots=dict(type="dict", required=True, options=dict(blue=slot, green=slot)),
        unit_dir=dict(type="path", default="/etc/containers/systemd"),
        state_dir=dict(type="path", default="/var/lib/edgeml/state"),
        history_size=dict(type="int", default=10),
        log_lines=dict(type="int", default=40),
        lock_wait=dict(type="int", default=300),
        deadline=dict(type="int"),
        pending_delivery=dict(type="list", elements="str", choices=["bundle", "image"], default=[]),
        # A copy: AnsibleModule writes into the spec it is given.
        gates=dict(type="dict", default={}, options=copy.deepcopy(GATES_ARGUMENT_SPEC)),
    )
    wrapper = EdgeMLModule(
        argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("version", "rollback")],
        required_one_of=[("version", "rollback")],
    )
    wrapper.run(run_model_deployment)


if __name__ == "__main__":
    main()
