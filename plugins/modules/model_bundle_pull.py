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
  - Nothing is fetched when O(dest) already holds exactly those files. Otherwise the image's
    manifest is fetched by its digest and checked against it, and its one layer is streamed
    from the registry (the registry's HTTP API, no container storage involved) and unpacked
    into a new directory beside O(dest) as it arrives, hashing the layer and every file on the
    way. Only when the layer matches the manifest's digest and every file its SHA-256 in
    O(files) is the directory moved into place (files C(0644), directories C(0755)).
  - A mismatch fails with what differs, and leaves O(dest) as it was.
  - Credentials, when the registry asks for them, are those C(podman login) stored for it
    (C(containers-auth.json), Basic or token authentication). Its TLS files are those podman reads
    (C(containers-certs.d)), from the first of C(~/.config/containers/certs.d/REGISTRY),
    C(/etc/containers/certs.d/REGISTRY) and C(/etc/docker/certs.d/REGISTRY) that exists. Every
    C(*.crt) in it is a CA certificate trusted beside the system's, a C(NAME.cert) with its C(NAME.key) a client
    certificate (the first pair, by name). A certificate without its key, or a key without its
    certificate, fails, as it does for podman.
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - nothing on the host beyond Python (the bundle is fetched over HTTP(S))
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
