#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_release_export
short_description: Export a verified model version and its server image as a release for an air-gapped site
version_added: 0.2.0
description:
  - Writes the directory O(dest) that carries a model version to a site the controller's
    registries cannot reach - on removable media, through a data diode, by any file transfer -
    for M(edgeml.fleet.model_release_import) to load into the site's registry.
  - It holds C(bundle.oci.tar), the bundle's minimal OCI image (the very image
    M(edgeml.fleet.model_bundle_push) pushes, so a site registry holds the same image whichever
    way it came), C(server-image.oci.tar), the model server image O(server_image) from this
    host's podman storage, and C(release.json) - each archive's SHA-256 and image ID, and every
    bundle file's SHA-256. The bundle's signature travels inside the bundle.
  - The files copied into the image are compared with O(files) (from
    M(edgeml.fleet.model_bundle_verify)) first, so what is exported is what was verified.
  - A release is never rewritten - O(dest) holding another release is refused; holding this
    very release with intact archives, nothing is done.
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
      - Builds the bundle image to know its ID (and removes it again when it was not there),
        writes nothing, and returns the release it would write.
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
  name:
    description:
      - The model's name.
    type: str
    required: true
  version:
    description:
      - The model's version.
    type: str
    required: true
  repository:
    description:
      - The bundle image's repository at the site, as the fleet's C(model_deployment_bundle_repository).
      - Defaults to C(edgeml-bundles/NAME).
    type: str
  server_image:
    description:
      - The model server image, by the tagged reference it has in this host's podman storage, for example
        V(localhost/edgeml-model-server:0.2.0). It is pushed at the site under the same repository and tag
        (without the registry part), which the site's C(model_deployment_image) names.
    type: str
    required: true
  dest:
    description:
      - The release directory to write; it must not exist yet, or hold this very release.
    type: path
    required: true
seealso:
  - module: edgeml.fleet.model_release_import
  - module: edgeml.fleet.model_bundle_verify
  - module: edgeml.fleet.model_bundle_push
"""

EXAMPLES = r"""
- name: Verify digits 3.0.0
  edgeml.fleet.model_bundle_verify:
    path: /srv/bundles/digits/3.0.0
    name: digits
    version: "3.0.0"
    trusted_keys: [/etc/edgeml/keys/release.pub]
  register: verified

- name: Export it with the server image for the plant behind the air gap
  edgeml.fleet.model_release_export:
    path: /srv/bundles/digits/3.0.0
    files: "{{ verified.files }}"
    name: digits
    version: "3.0.0"
    server_image: localhost/edgeml-model-server:0.2.0
    dest: /media/usb/digits-3.0.0
"""

RETURN = r"""
dest:
  description: The release directory.
  returned: success
  type: str
  sample: /media/usb/digits-3.0.0
release:
  description:
    - What C(release.json) says (in check mode, would say without the archives' C(sha256)) -
      C(name), C(version), and for C(bundle) and C(server_image) the C(archive), its C(sha256),
      the C(image_id), C(repository) and C(tag); the bundle's C(files).
  returned: success
  type: dict
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule
from ansible_collections.edgeml.fleet.plugins.module_utils._release_archive import run_model_release_export


def main() -> None:
    argument_spec = dict(
        path=dict(type="path", required=True),
        files=dict(type="dict", required=True),
        name=dict(type="str", required=True),
        version=dict(type="str", required=True),
        repository=dict(type="str"),
        server_image=dict(type="str", required=True),
        dest=dict(type="path", required=True),
    )
    EdgeMLModule(argument_spec, supports_check_mode=True).run(run_model_release_export)


if __name__ == "__main__":
    main()
