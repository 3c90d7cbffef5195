#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_stage
short_description: Make an edge host ready for a model version, changing nothing that serves
version_added: 0.2.0
description:
  - One call on the host for what must hold before M(edgeml.fleet.model_deployment) switches it to a
    version, checked in this order and stopping at the first failure
    (RV(failed_at) says which).
  - The host trusts a bundle signer when O(signature_policy=required) - O(trust_dir) holds a public key
    or CA certificate (C(*.pub), C(*.pem), C(*.crt)) - otherwise its model server would refuse every
    version. O(trust_dir) is made (C(0755)) when missing, as the server's unit mounts it.
  - With O(model_dir), that directory is made or set to C(root:root 0755).
  - With O(bundle), the bundle is unpacked from its registry image pinned by digest, as
    M(edgeml.fleet.model_bundle_pull) does (the layer and every file hashed on the way, moved into place
    only when all match; nothing fetched when the host holds it already).
  - With O(image), the model server image, pinned by digest, is pulled unless the host's podman storage
    holds it.
  - M(edgeml.fleet.model_deployment)'s role runs it once per host where it ran several tasks (each task is
    a round trip per host).
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - podman on the host (for O(image))
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads the trust directory, the bundle directory and podman's storage, and says what it would make,
        unpack or pull.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  trust_dir:
    description:
      - The directory of the bundle signers this host trusts (what M(edgeml.fleet.model_deployment)'s units
        mount into the model server).
    type: path
    default: /etc/edgeml/trusted-keys
  signature_policy:
    description:
      - V(required) fails when O(trust_dir) holds no signer, before anything is delivered.
        V(optional) only reports the signers.
    type: str
    choices: [required, optional]
    default: required
  model_dir:
    description:
      - The model's bundle directory, C(BUNDLE_ROOT/NAME), made (or set to) C(root:root 0755) whatever the
        umask, as the model server's unit mounts it and reads it as an unprivileged user.
    type: path
  bundle:
    description:
      - The bundle to unpack from the host's registry. Omit it when the bundle comes another way (copied
        over SSH) or nothing is delivered (a rollback).
    type: dict
    suboptions:
      ref:
        description: As M(edgeml.fleet.model_bundle_pull)'s O(edgeml.fleet.model_bundle_pull#module:ref).
        type: str
        required: true
      dest:
        description: As M(edgeml.fleet.model_bundle_pull)'s O(edgeml.fleet.model_bundle_pull#module:dest).
        type: path
        required: true
      files:
        description: As M(edgeml.fleet.model_bundle_pull)'s O(edgeml.fleet.model_bundle_pull#module:files).
        type: dict
        required: true
  image:
    description:
      - The model server image, C(REGISTRY/REPOSITORY@sha256:DIGEST). Omit it when the image comes another
        way (an OCI archive, or preloaded in an OS image).
    type: str
  tls_verify:
    description:
      - Use HTTPS and verify the registries' certificates (for O(bundle) and O(image)).
    type: bool
    default: true
seealso:
  - module: edgeml.fleet.model_bundle_pull
  - module: edgeml.fleet.model_deployment
"""

EXAMPLES = r"""
- name: Make the host ready for digits 3.0.0 (bundle and server image from the site registry)
  edgeml.fleet.model_stage:
    signature_policy: required
    model_dir: /var/lib/edgeml/bundles/digits
    bundle:
      ref: "registry.site-a.example:5000/edgeml-bundles/digits@{{ pushed.digests['registry.site-a.example:5000'] }}"
      dest: /var/lib/edgeml/bundles/digits/3.0.0
      files: "{{ verified.files }}"
    image: "registry.site-a.example:5000/edgeml-model-server@{{ server_image_digest }}"

- name: Check only that the host trusts a signer (a rollback delivers nothing)
  edgeml.fleet.model_stage:
    signature_policy: required
"""

RETURN = r"""
trusted_signers:
  description: The signer files in O(trust_dir).
  returned: success
  type: list
  elements: str
  sample: [digits-signing.pub]
bundle:
  description:
    - Whether the bundle was (or would be) unpacked, and how the host's copy differed (C(changes)).
  returned: success
  type: dict
  sample:
    changed: true
    ref: registry.site-a.example:5000/edgeml-bundles/digits@sha256:69fa5cb146d7fc03e15e4b3ab670342a87a35549
    changes: [model.onnx missing]
image:
  description: Whether the server image was (or would be) pulled.
  returned: success
  type: dict
  sample:
    changed: false
    ref: registry.site-a.example:5000/edgeml-model-server@sha256:4c2e0b8f7d1a6e3c9b5a7d2f0e1c8b6a4d3f2e1c
failed_at:
  description:
    - The step that failed, V(trust), V(model_dir), V(bundle) or V(image) (not set when the arguments were wrong).
    - M(edgeml.fleet.model_deployment)'s role records only a V(bundle) failure as a refused bundle.
  returned: failure
  type: str
  sample: trust
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule
from ansible_collections.edgeml.fleet.plugins.module_utils._host_stage import run_model_stage


def main() -> None:
    argument_spec = dict(
        trust_dir=dict(type="path", default="/etc/edgeml/trusted-keys"),
        signature_policy=dict(type="str", choices=["required", "optional"], default="required"),
        model_dir=dict(type="path"),
        bundle=dict(
            type="dict",
            options=dict(
                ref=dict(type="str", required=True),
                dest=dict(type="path", required=True),
                files=dict(type="dict", required=True),
            ),
        ),
        image=dict(type="str"),
        tls_verify=dict(type="bool", default=True),
    )
    EdgeMLModule(argument_spec, supports_check_mode=True).run(run_model_stage)


if __name__ == "__main__":
    main()
