#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_bundle_verify
short_description: Verify a model bundle before it is delivered (checksum, name, version, signature)
version_added: 0.2.0
description:
  - Checks the bundle directory O(path) as written by M(edgeml.fleet.model_bundle) before
    anything is sent to a host. The role C(edgeml.fleet.model_deployment) runs it on the
    controller once per rollout batch.
  - With a signature (C(model.sig), OpenSSF model signing), the sha256 of every file of the
    bundle is compared with what was signed (a failure names the file that changed, was added
    or is missing), then the signature is verified against O(trusted_keys) or
    O(trusted_certificates). Without one, O(signature_policy) decides.
  - Then the model's sha256 against C(model.json), and the name and version the deployment
    asks for (O(name), O(version)) against C(model.json).
  - Fails with a message saying what is wrong; never changes anything.
  - Runs where it is executed (normally the controller); a signed bundle needs the Python
    package C(model-signing) there (the collection's requirements.txt pins it).
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - model-signing (for signed bundles)
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - It reads only, so a check run verifies as a real run does.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description:
      - The bundle directory, C(BUNDLE_ROOT/NAME/VERSION).
    type: path
    required: true
  name:
    description:
      - The model name the deployment expects C(model.json) to carry. Not checked when omitted.
    type: str
  version:
    description:
      - The version the deployment expects C(model.json) to carry. Not checked when omitted.
    type: str
  signature_policy:
    description:
      - V(required) refuses an unsigned bundle. V(optional) lets an unsigned bundle through;
        a signed one is still verified as soon as a key or CA is trusted (with nothing
        trusted, signatures are not checked).
    type: str
    choices: [required, optional]
    default: required
  trusted_keys:
    description:
      - PEM public keys (elliptic curve) of the signers to trust, on the host running the task.
        Several at once for rotation; the signature's key hint selects one.
    type: list
    elements: path
    default: []
  trusted_certificates:
    description:
      - PEM CA certificates to verify certificate-signed bundles against.
    type: list
    elements: path
    default: []
notes:
  - The hosts check again at load, with the keys the role C(edgeml.fleet.edge_host) installs
    (docs/bundle-format.md).
seealso:
  - module: edgeml.fleet.model_bundle
"""

EXAMPLES = r"""
- name: Verify the bundle before it is delivered
  edgeml.fleet.model_bundle_verify:
    path: /srv/bundles/digits/3.0.0
    name: digits
    version: "3.0.0"
    trusted_keys:
      - /etc/edgeml/release-2026.pub
      - /etc/edgeml/release-2027.pub
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
name:
  description: The model name in C(model.json).
  returned: success
  type: str
  sample: digits
version:
  description: The version in C(model.json).
  returned: success
  type: str
  sample: 3.0.0
sha256:
  description: The model file's SHA-256, as verified.
  returned: success
  type: str
  sample: 4b0e1a9c6d0f3f1e2a7c5b8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f
signature:
  description:
    - What was checked. C(signed), C(checked) (false only under V(optional) with nothing
      trusted), C(policy), C(signer) (C(key <sha256 of its PEM>) or a certificate) and the
      trusted key file that verified it (C(trusted_key)) or C(certificate).
  returned: success
  type: dict
  sample:
    signed: true
    checked: true
    policy: required
    signer: key 9a3c0d2e
    key: 9a3c0d2e
    trusted_key: /etc/edgeml/release.pub
files:
  description:
    - Every file of the bundle (its path relative to O(path)) and its SHA-256, the signed
      digests where the bundle is signed. The deployment compares them with the host's copy
      and sends the bundle only when they differ.
  returned: success
  type: dict
  sample:
    model.json: 0c5e8d1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d
    model.onnx: 4b0e1a9c6d0f3f1e2a7c5b8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_verify import run_model_bundle_verify
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule


def main() -> None:
    argument_spec = dict(
        path=dict(type="path", required=True),
        name=dict(type="str"),
        version=dict(type="str"),
        signature_policy=dict(type="str", choices=["required", "optional"], default="required"),
        trusted_keys=dict(type="list", elements="path", default=[], no_log=False),
        trusted_certificates=dict(type="list", elements="path", default=[]),
    )
    EdgeMLModule(argument_spec, supports_check_mode=True).run(run_model_bundle_verify)


if __name__ == "__main__":
    main()
