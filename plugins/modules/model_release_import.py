#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_release_import
short_description: Load a release exported for an air-gapped site into the site's registry
version_added: 0.2.0
description:
  - Runs at the site, where its registry O(registry) is reachable (the site's control node or
    any machine there with podman), on a release directory written by
    M(edgeml.fleet.model_release_export).
  - Checks everything before it pushes or writes anything - each archive's SHA-256 against
    C(release.json), each loaded image against its ID, every file of the bundle image against
    its SHA-256, and the bundle's signature against the site's own trust (O(trusted_keys),
    O(trusted_certificates), O(signature_policy)); a registry tag that holds other content
    is refused, never overwritten.
  - Then makes O(registry) hold the bundle image (under the bundle's repository and the
    version) and the server image (under its repository and tag), pushing only what it does not
    hold, and copies the bundle to O(bundle_root)C(/NAME/VERSION) for the site's control node.
    A deployment at the site runs unchanged with C(model_deployment_bundle_delivery=registry)
    - it finds the bundle image in the site registry and pushes nothing.
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - podman >= 4.3 where it runs
  - the Python package C(model-signing) there, for a signed bundle
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Checks the archives, loads the images to check them (and removes what it loaded),
        checks the bundle and its signature, reads the registry, and pushes and writes nothing.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  src:
    description:
      - The release directory (with C(release.json)).
    type: path
    required: true
  registry:
    description:
      - The site registry, C(host:port) as this machine reaches it.
    type: str
    required: true
  tls_verify:
    description:
      - Use HTTPS and verify the registry's certificate.
    type: bool
    default: true
  bundle_root:
    description:
      - Where the site's control node keeps bundles (its C(model_deployment_bundle_src)); the
        bundle is copied to C(BUNDLE_ROOT/NAME/VERSION). Another build of that version there is
        refused. Unset, no bundle is written.
    type: path
  signature_policy:
    description:
      - V(required) refuses an unsigned bundle; V(optional) lets it through (a signed one is
        still verified as soon as a key or CA is trusted).
    type: str
    choices: [required, optional]
    default: required
  trusted_keys:
    description:
      - PEM public keys of the signers the site trusts. Several at once for rotation.
    type: list
    elements: path
    default: []
  trusted_certificates:
    description:
      - PEM CA certificates the site trusts for certificate-signed bundles.
    type: list
    elements: path
    default: []
notes:
  - Registry credentials are podman's (C(podman login), C(REGISTRY_AUTH_FILE)).
  - C(release.json) itself is not signed - the bundle is, and is checked here against the
    site's trust; the server image is checked against the ID C(release.json) names.
seealso:
  - module: edgeml.fleet.model_release_export
  - module: edgeml.fleet.model_bundle_push
"""

EXAMPLES = r"""
- name: Load the release carried in on removable media into the plant's registry
  edgeml.fleet.model_release_import:
    src: /media/usb/digits-3.0.0
    registry: registry.plant.example:5000
    bundle_root: /srv/bundles
    trusted_keys: [/etc/edgeml/keys/release.pub]
"""

RETURN = r"""
name:
  description: The model's name.
  returned: success
  type: str
  sample: digits
version:
  description: The model's version.
  returned: success
  type: str
  sample: 3.0.0
registry:
  description: The registry loaded.
  returned: success
  type: str
  sample: registry.plant.example:5000
pushed:
  description: What was (in check mode, would be) pushed - C(bundle), C(server_image).
  returned: success
  type: list
  elements: str
  sample: [bundle, server_image]
images:
  description:
    - For C(bundle) and C(server_image), the C(repository), C(tag), C(image_id), and the
      C(digest) of the manifest the registry holds (null in check mode before a push).
  returned: success
  type: dict
bundle_dir:
  description: Where the bundle was copied, or null without O(bundle_root).
  returned: success
  type: str
  sample: /srv/bundles/digits/3.0.0
sha256:
  description: The SHA-256 of the bundle's model file.
  returned: success
  type: str
signature:
  description: What the signature check found, as M(edgeml.fleet.model_bundle_verify) returns it.
  returned: success
  type: dict
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule
from ansible_collections.edgeml.fleet.plugins.module_utils._release_archive import run_model_release_import


def main() -> None:
    argument_spec = dict(
        src=dict(type="path", required=True),
        registry=dict(type="str", required=True),
        tls_verify=dict(type="bool", default=True),
        bundle_root=dict(type="path"),
        signature_policy=dict(type="str", choices=["required", "optional"], default="required"),
        trusted_keys=dict(type="list", elements="path", default=[], no_log=False),
        trusted_certificates=dict(type="list", elements="path", default=[]),
    )
    EdgeMLModule(argument_spec, supports_check_mode=True).run(run_model_release_import)


if __name__ == "__main__":
    main()
