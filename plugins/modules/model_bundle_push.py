#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_bundle_push
short_description: Push a verified model bundle to registries as a minimal OCI image, once per registry
version_added: 0.2.0
description:
  - Builds the bundle directory O(path) into a minimal OCI image (C(FROM scratch), the files
    under C(/bundle)), the way KServe's modelcars ship models, and makes sure each registry in
    O(registries) holds it under O(repository)V(:)O(version). Returns the manifest digest each
    registry holds, for hosts to pull by digest with M(edgeml.fleet.model_bundle_pull).
  - The image is built with C(--timestamp 0), so the same bundle always makes the same image.
    A registry that already holds it is not sent it again; a tag that holds other content
    (someone pushed something else under this version) is refused, never overwritten.
  - The image's layer is sent uncompressed (model weights hardly compress, and gzip would cost
    CPU on the controller for every push and on every host for every pull), over the
    registry's HTTP API with the credentials (C(podman login)) and CA certificates podman uses.
  - The files copied into the image are compared with O(files) (from
    M(edgeml.fleet.model_bundle_verify)) first, so what is pushed is what was verified.
  - The role C(edgeml.fleet.model_deployment) runs it on the controller once per rollout batch
    when C(model_deployment_bundle_delivery=registry).
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - podman >= 4.3 where it runs (normally the controller)
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Builds the image to know its ID (and removes it again when it was not there), reads
        every registry, pushes nothing, and says which registries it would push to.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  path:
    description:
      - The verified bundle directory, C(BUNDLE_ROOT/NAME/VERSION).
    type: path
    required: true
  files:
    description:
      - Every file of the bundle and its SHA-256, as M(edgeml.fleet.model_bundle_verify) returned them.
    type: dict
    required: true
  repository:
    description:
      - The repository in each registry, for example V(edgeml-bundles/digits).
    type: str
    required: true
  version:
    description:
      - The bundle's version, used as the tag.
    type: str
    required: true
  registries:
    description:
      - The registries (C(host:port), as this host reaches them) that must hold the bundle,
        for example one per site. Each is pushed to at most once; the pushes run at once, up
        to four at a time.
    type: list
    elements: str
    required: true
  tls_verify:
    description:
      - Use HTTPS and verify the registries' certificates.
    type: bool
    default: true
notes:
  - Registry credentials are podman's (C(podman login), C(REGISTRY_AUTH_FILE)).
seealso:
  - module: edgeml.fleet.model_bundle_verify
  - module: edgeml.fleet.model_bundle_pull
"""

EXAMPLES = r"""
- name: Push digits 3.0.0 to both site registries
  edgeml.fleet.model_bundle_push:
    path: /srv/bundles/digits/3.0.0
    files: "{{ verified.files }}"
    repository: edgeml-bundles/digits
    version: "3.0.0"
    registries: [registry.site-a.example:5000, registry.site-b.example:5000]
  delegate_to: localhost
  run_once: true
  register: pushed
"""

RETURN = r"""
image_id:
  description: The bundle image's ID (the digest of its config).
  returned: success
  type: str
  sample: sha256:0b2b96d6c109375b4985215bfd3bbe4ac9ad3e45715d9987d0bc79d0dac84586
digests:
  description: For each registry, the digest of the manifest it holds under the version's tag.
  returned: success
  type: dict
  sample:
    registry.site-a.example:5000: sha256:69fa5cb146d7fc03e15e4b3ab670342a87a355493e76525fcaa23ccbdd0992f6
pushed:
  description: The registries the bundle was (in check mode, would be) pushed to.
  returned: success
  type: list
  elements: str
  sample: [registry.site-b.example:5000]
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_registry import run_model_bundle_push
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule


def main() -> None:
    argument_spec = dict(
        path=dict(type="path", required=True),
        files=dict(type="dict", required=True),
        repository=dict(type="str", required=True),
        version=dict(type="str", required=True),
        registries=dict(type="list", elements="str", required=True),
        tls_verify=dict(type="bool", default=True),
    )
    EdgeMLModule(argument_spec, supports_check_mode=True).run(run_model_bundle_push)


if __name__ == "__main__":
    main()
