#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_bundle_pull
short_description: Unpack a model bundle on a host from its registry image, pulled by digest
version_added: 0.2.0
description:
  - Makes the bundle directory O(dest) hold exactly O(files), unpacked from the bundle image
    O(ref) that M(edgeml.fleet.model_bundle_push) put in the host's registry. O(ref) must be
    pinned by digest (a tag can be moved to other content).
  - Nothing is pulled when O(dest) already holds exactly those files. Otherwise the image is
    pulled, unpacked into a new directory beside O(dest), every file compared with its
    SHA-256 in O(files), and only then moved into place (files C(0644), directories C(0755));
    the image is removed again (the unpacked copy is the one kept).
  - A mismatch fails with the files that differ, and leaves O(dest) as it was.
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - podman >= 4.3 on the host
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Reads O(dest) and says whether it would pull and which files differ.
  diff_mode:
    support: none
  idempotent:
    support: full
options:
  ref:
    description:
      - The bundle image, C(REGISTRY/REPOSITORY@sha256:DIGEST), as the host reaches the registry.
    type: str
    required: true
  dest:
    description:
      - The bundle directory to fill, C(BUNDLE_ROOT/NAME/VERSION).
    type: path
    required: true
  files:
    description:
      - Every file the bundle must hold and its SHA-256 (M(edgeml.fleet.model_bundle_verify)'s C(files)).
    type: dict
    required: true
  tls_verify:
    description:
      - Use HTTPS and verify the registry's certificate.
    type: bool
    default: true
seealso:
  - module: edgeml.fleet.model_bundle_push
"""

EXAMPLES = r"""
- name: Unpack digits 3.0.0 from the site registry
  edgeml.fleet.model_bundle_pull:
    ref: "registry.site-a.example:5000/edgeml-bundles/digits@{{ pushed.digests['registry.site-a.example:5000'] }}"
    dest: /var/lib/edgeml/bundles/digits/3.0.0
    files: "{{ verified.files }}"
"""

RETURN = r"""
ref:
  description: The image the bundle came from (or would come from).
  returned: success
  type: str
  sample: registry.site-a.example:5000/edgeml-bundles/digits@sha256:69fa5cb146d7fc03e15e4b3ab670342a87a35549
changes:
  description: How the host's copy differed from O(files) before (files changed, added or missing).
  returned: changed
  type: list
  elements: str
  sample: [model.onnx missing]
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_registry import run_model_bundle_pull
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule


def main() -> None:
    argument_spec = dict(
        ref=dict(type="str", required=True),
        dest=dict(type="path", required=True),
        files=dict(type="dict", required=True),
        tls_verify=dict(type="bool", default=True),
    )
    EdgeMLModule(argument_spec, supports_check_mode=True).run(run_model_bundle_pull)


if __name__ == "__main__":
    main()
