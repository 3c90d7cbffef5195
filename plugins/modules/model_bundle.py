#!/usr/bin/python
# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: model_bundle
short_description: Package an ONNX model as a versioned, self-testing model bundle
version_added: 0.1.0
description:
  - Loads an ONNX model with onnxruntime, records its signature (input and output names,
    Open Inference Protocol datatypes, shapes with C(-1) for dynamic dimensions), opsets,
    producer, IR version, SHA-256 and size, runs each sample input vector through it and
    writes the bundle C(DEST/NAME/VERSION/model.onnx) and C(DEST/NAME/VERSION/model.json)
    described in C(docs/bundle-format.md) (schema_version 1).
  - The recorded outputs become the bundle's smoke tests, that the model server runs at load
    time to prove the edge computes what the controller did.
  - Optional ground truth (O(expected_outputs)) is stored per vector as C(expected) and
    compared with what the model answered. A disagreement is reported in RV(expected_match)
    and as a warning but does not fail the task (a deployment's smoke gate uses it).
  - Versions are immutable. When C(NAME/VERSION) exists with the same content the task
    reports C(changed=false) and touches nothing; with other content it fails and asks for a
    new version. A bundle is written atomically (complete or not at all) and nothing is
    written when the task fails.
  - Runs where it is executed (normally the controller, or wherever it is delegated); that
    host needs Python packages C(onnxruntime), C(onnx) and C(numpy).
author:
  - edgeml.fleet maintainers (@edgeml)
requirements:
  - onnxruntime
  - onnx
  - numpy
extends_documentation_fragment:
  - edgeml.fleet.attributes
attributes:
  check_mode:
    support: full
    details:
      - Loads the model and runs the sample vectors, then reports what would be written
        (RV(actions), RV(manifest)) without writing anything.
  diff_mode:
    support: full
    details:
      - The diff is the manifest (C(model.json)) before and after.
  idempotent:
    support: full
    details:
      - Recorded outputs only need to agree with the existing bundle within O(tolerance), so a
        controller whose CPU computes the last bits differently does not see a change.
options:
  src:
    description:
      - Path of the C(.onnx) model file on the host running the task. It is copied byte for byte.
      - The model must keep all its tensors in this one file (no external data).
    type: path
    required: true
  dest:
    description:
      - The bundle root. The bundle is written to C(DEST/NAME/VERSION/). Missing directories
        are created with mode C(0755); files are written with mode C(0644).
    type: path
    required: true
  name:
    description:
      - Model name. It must match C(^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$) because it is used in
        URLs, file names, systemd unit names and Prometheus labels.
    type: str
    required: true
  version:
    description:
      - Model version. It must match C(^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$). Quote it in YAML.
      - A version is immutable; publish changed content as a new version.
    type: str
    required: true
  description:
    description:
      - Free text stored as C(metadata.description).
    type: str
    default: ""
  metrics:
    description:
      - >-
        Numbers stored as C(metadata.metrics), for example C({accuracy: 0.97}). Numeric strings
        are converted; anything else fails.
    type: dict
    default: {}
  labels:
    description:
      - >-
        Strings stored as C(metadata.labels), for example C({team: vision}).
    type: dict
    default: {}
  sample_inputs:
    description:
      - Sample input vectors. Each vector is one inference request, given either as a list of
        tensors C({name, datatype, shape, data}) (C(datatype) and C(shape) optional, C(data)
        flat row-major or nested) or as a mapping of input name to (nested) data.
      - Every model input must be given. C(datatype) defaults to, and must equal, the model's.
        Without C(shape), a nested list gives its own shape, and flat data is fitted to the
        model shape when only one dimension is dynamic (a flat list of 64 numbers for a model
        input C([-1, 64]) becomes shape C([1, 64])).
      - Mutually exclusive with O(sample_inputs_file).
    type: list
    elements: raw
  sample_inputs_file:
    description:
      - >-
        A JSON file with the sample vectors, on the host running the task. It holds a list of
        vectors as in O(sample_inputs); or an object C({"sample_inputs": [...],
        "expected_outputs": [...]}); or C({"vectors": [{"inputs": ..., "expected": ...}]}).
      - Expected outputs from the file are used unless O(expected_outputs) is given.
    type: path
  expected_outputs:
    description:
      - Optional ground truth, one entry per sample vector in the same order (C(null) for a
        vector without), each in the same forms as a vector of O(sample_inputs) but naming
        model outputs; a subset of the outputs may be given (for example only C(label)).
      - Stored as C(expected) in the vector and compared with the model's answer using
        O(tolerance); mismatches are reported, not failures.
    type: list
    elements: raw
  tolerance:
    description:
      - Tolerance stored in C(smoke_tests.tolerance); numbers match when
        C(abs(actual - recorded) <= atol + rtol * abs(recorded)); integers, booleans and
        strings must be equal.
    type: dict
    default: {}
    suboptions:
      rtol:
        description: Relative tolerance.
        type: float
        default: 1.0e-4
      atol:
        description: Absolute tolerance.
        type: float
        default: 1.0e-5
  intra_op_threads:
    description:
      - Threads onnxruntime uses to run the sample vectors on the host running the task.
        C(1) (the default) gives reproducible outputs; C(0) lets onnxruntime choose.
    type: int
    default: 1
  reference_inputs_file:
    description:
      - >-
        Inputs the model was validated on, on the host running the task, one row per sample along
        dimension 0: a C(.npz) file with one array per model input (named as the input), a C(.npy)
        array (single-input models), or JSON C({"X": [[...], ...]}) (or a list of rows for a
        single-input model). At least 100 rows.
      - The module runs them through the model and writes the bundle's reference profile
        C(profile.json), holding per input feature (each element of a row) quantile bins and the share of
        rows in each, with the feature's minimum and maximum; per output its classes and their
        shares (integer outputs of at most 32 values) or binned features. C(model.json) records its
        sha256 (C(reference_profile)), and the model server refuses a bundle whose profile
        does not match it.
      - The model server compares a sliding window of live inputs and outputs with the profile and
        exports the population stability index per feature, per input and overall, the output
        shift and the share of out-of-range inputs (C(edgeml_drift_*) metrics, docs/server.md).
      - Without it the bundle has no profile and drift is not measured.
    type: path
  profile_bins:
    description:
      - Quantile bins per feature in the reference profile (2..63). Tied values (a pixel that is
        mostly 0) merge bins, so a feature may have fewer.
    type: int
    default: 10
  signing_key:
    description:
      - >-
        A PEM elliptic-curve private key (P-256, P-384 or P-521) on the host running the task. The
        bundle is signed with it, by OpenSSF model signing (the C(model-signing) Python library),
        into C(model.sig) in the bundle directory. The signature covers every other file of the
        directory (model, manifest with its smoke vectors, reference profile).
      - A new bundle is signed before it appears. An existing bundle is signed when it has no
        signature or one made by another key (key rotation), and left alone when it carries this
        key's signature over what it holds. A bundle that changed after it was signed is refused.
      - The key's content and password never appear in results or messages.
    type: path
  signing_key_password:
    description: The password of an encrypted O(signing_key).
    type: str
  signing_certificate:
    description:
      - The PEM certificate of O(signing_key), to sign in certificate mode; the hosts then trust
        the CA that issued it instead of the key.
    type: path
  signing_certificate_chain:
    description:
      - The PEM certificates of the CAs that issued O(signing_certificate), up to the root the
        hosts trust. Required with O(signing_certificate).
    type: list
    elements: path
notes:
  - The manifest holds no timestamp, so the same inputs always give the same bytes.
  - A failure message says what is wrong and how to fix it; nothing is written on failure.
seealso:
  - name: Model bundle format
    description: The files this module writes (docs/bundle-format.md in the collection).
    link: https://github.com/edgeml/fleet/blob/main/docs/bundle-format.md
  - name: Open Inference Protocol
    description: The datatypes and tensor layout used in the manifest.
    link: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

EXAMPLES = r"""
- name: Bundle a scikit-learn digits classifier with labelled samples
  edgeml.fleet.model_bundle:
    src: build/digits-mlp.onnx
    dest: /srv/bundles
    name: digits
    version: "1.0.0"
    description: MLP on 8x8 digits
    metrics:
      accuracy: 0.97
    labels:
      team: vision
    sample_inputs_file: build/digits-samples.json
    # The validation set: the model server measures drift against it.
    reference_inputs_file: build/digits-validation.npz
  register: bundle

- name: Give sample inputs inline, one vector per inference request (an iris model, input X [-1, 4])
  edgeml.fleet.model_bundle:
    src: build/iris.onnx
    dest: /srv/bundles
    name: iris
    version: "2.1.0"
    sample_inputs:
      - X: [[5.1, 3.5, 1.4, 0.2]]           # mapping form, nested data gives the shape
      - - name: X                           # tensor list form, flat row-major data
          datatype: FP32
          shape: [2, 4]
          data: [6.7, 3.0, 5.2, 2.3, 5.9, 3.0, 4.2, 1.5]
    expected_outputs:
      - label: [0]
      - label: [2, 1]
    tolerance:
      rtol: 1.0e-3
      atol: 1.0e-4

- name: Predict the bundle without writing it
  edgeml.fleet.model_bundle:
    src: build/digits-mlp.onnx
    dest: /srv/bundles
    name: digits
    version: "1.0.0"
    sample_inputs_file: build/digits-samples.json
  check_mode: true
  diff: true

- name: Fail the play when the model disagrees with the ground truth
  ansible.builtin.assert:
    that: bundle.expected_match.rate >= 0.9
    fail_msg: "{{ bundle.expected_match }}"
"""

RETURN = r"""
bundle_path:
  description: Directory of the bundle, C(DEST/NAME/VERSION).
  returned: success
  type: str
  sample: /srv/bundles/digits/1.0.0
manifest_path:
  description: Path of the manifest, C(DEST/NAME/VERSION/model.json).
  returned: success
  type: str
  sample: /srv/bundles/digits/1.0.0/model.json
manifest:
  description:
    - The manifest the bundle holds after the task (in check mode, would hold). When an
      equivalent bundle already exists, this is the existing manifest.
  returned: success
  type: dict
  sample:
    schema_version: 1
    name: digits
    version: "1.0.0"
    model:
      file: model.onnx
      sha256: 1f0c3e4b5a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f
      size: 12345
      opsets: {"": 17, "ai.onnx.ml": 3}
      producer: skl2onnx 1.20.0
      ir_version: 8
    signature: {}
    metadata: {description: "", metrics: {}, labels: {}}
    smoke_tests: {tolerance: {rtol: 0.0001, atol: 0.00001}, vectors: []}
sha256:
  description: SHA-256 of C(model.onnx), 64 lowercase hex digits.
  returned: success
  type: str
  sample: 1f0c3e4b5a6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f
signature:
  description: Model inputs and outputs with Open Inference Protocol datatypes; C(-1) is a dynamic dimension.
  returned: success
  type: dict
  sample:
    inputs: [{name: X, datatype: FP32, shape: [-1, 64]}]
    outputs:
      - {name: label, datatype: INT64, shape: [-1]}
      - {name: probabilities, datatype: FP32, shape: [-1, 10]}
expected_match:
  description: How the model's answers compare with the ground truth of O(expected_outputs).
  returned: when at least one vector has expected outputs
  type: dict
  contains:
    vectors:
      description: Number of vectors with expected outputs.
      type: int
    matched:
      description: Number of those whose outputs match the expected ones within O(tolerance).
      type: int
    mismatched:
      description: Indexes (0-based) of the vectors that do not match.
      type: list
      elements: int
    rate:
      description: C(matched / vectors), rounded to 6 decimals.
      type: float
  sample: {vectors: 8, matched: 7, mismatched: [3], rate: 0.875}
bundle_signature:
  description: The bundle's signature file and its signer (C(key <sha256 of the public key's PEM>) or the certificate).
  returned: when O(signing_key) is given
  type: dict
  sample: {file: /srv/bundles/digits/1.0.0/model.sig, signed_by: key 9a3c0d2e4f}
actions:
  description: What the task did (or would do in check mode); empty when nothing changes.
  returned: success
  type: list
  elements: str
  sample:
    - create directory /srv/bundles/digits/1.0.0
    - write /srv/bundles/digits/1.0.0/model.onnx
    - write /srv/bundles/digits/1.0.0/model.json
"""

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import DEFAULT_ATOL, DEFAULT_RTOL
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_runner import run_model_bundle
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLModule


def main() -> None:
    argument_spec = dict(
        src=dict(type="path", required=True),
        dest=dict(type="path", required=True),
        name=dict(type="str", required=True),
        version=dict(type="str", required=True),
        description=dict(type="str", default=""),
        metrics=dict(type="dict", default={}),
        labels=dict(type="dict", default={}),
        sample_inputs=dict(type="list", elements="raw"),
        sample_inputs_file=dict(type="path"),
        expected_outputs=dict(type="list", elements="raw"),
        tolerance=dict(
            type="dict",
            default={},
            options=dict(
                rtol=dict(type="float", default=DEFAULT_RTOL),
                atol=dict(type="float", default=DEFAULT_ATOL),
            ),
        ),
        intra_op_threads=dict(type="int", default=1),
        reference_inputs_file=dict(type="path"),
        profile_bins=dict(type="int", default=10),
        signing_key=dict(type="path", no_log=False),
        signing_key_password=dict(type="str", no_log=True),
        signing_certificate=dict(type="path"),
        signing_certificate_chain=dict(type="list", elements="path"),
    )
    wrapper = EdgeMLModule(
        argument_spec,
        supports_check_mode=True,
        mutually_exclusive=[("sample_inputs", "sample_inputs_file")],
        required_by={
            "signing_key_password": "signing_key",
            "signing_certificate": "signing_key",
            "signing_certificate_chain": "signing_certificate",
        },
    )
    wrapper.run(run_model_bundle)


if __name__ == "__main__":
    main()
