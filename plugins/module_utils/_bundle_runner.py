# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Runner of model_bundle: module parameters -> request -> service -> result.

The flow is: check dependencies, validate and normalise parameters, compute the
desired bundle (always, also in check mode), plan against what is on disk, apply
(never in check mode), and report.
"""

from __future__ import annotations

import json
import math
import os
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import (
    LIB_ERRORS,
    BundleStore,
    read_file,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    DEFAULT_ATOL,
    DEFAULT_RTOL,
    MANIFEST_FILE,
    validate_name,
    validate_version,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_service import (
    BundleRequest,
    BundleService,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_signing import (
    SIGNATURE_FILE,
    Signer,
    ensure_signature,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError, EdgeMLModule


def _metrics(raw: dict[str, t.Any]) -> dict[str, t.Any]:
    metrics = {}
    for key, raw_value in raw.items():
        value = raw_value
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                try:
                    value = float(value)
                except ValueError:
                    pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise EdgeMLError(
                f"metrics.{key} is {value!r}; metrics must be finite numbers.",
                "Give numbers, e.g. metrics: {accuracy: 0.97, latency_ms_p95: 3.2}; put text in labels.",
            )
        metrics[str(key)] = value
    return metrics


def _labels(raw: dict[str, t.Any]) -> dict[str, str]:
    labels = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise EdgeMLError(
                f"labels.{key} is {value!r}; labels must be strings.",
                "Quote the value in YAML, e.g. labels: {team: vision, gpu: 'false'}.",
            )
        labels[str(key)] = str(value)
    return labels


def _load_samples_file(path: str) -> tuple[list[t.Any], list[t.Any] | None]:
    hint = (
        "sample_inputs_file must be a JSON file holding a list of input vectors, or an "
        'object {"sample_inputs": [...], "expected_outputs": [...]}, or '
        '{"vectors": [{"inputs": ..., "expected": ...}]}.'
    )
    data = read_file(path, "sample_inputs_file", hint)
    try:
        content = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise EdgeMLError(f"sample_inputs_file {path} is not valid JSON ({exc}).", hint) from None
    if isinstance(content, list):
        return content, None
    if isinstance(content, dict) and isinstance(content.get("sample_inputs"), list):
        expected = content.get("expected_outputs")
        if expected is not None and not isinstance(expected, list):
            raise EdgeMLError(f"expected_outputs in {path} is not a list.", hint)
        return content["sample_inputs"], expected
    if isinstance(content, dict) and isinstance(content.get("vectors"), list):
        inputs, expected = [], []
        for vector in content["vectors"]:
            if not isinstance(vector, dict) or "inputs" not in vector:
                raise EdgeMLError(f"Every entry of 'vectors' in {path} needs 'inputs'.", hint)
            inputs.append(vector["inputs"])
            expected.append(vector.get("expected"))
        return inputs, (expected if any(e is not None for e in expected) else None)
    raise EdgeMLError(f"sample_inputs_file {path} has an unexpected layout.", hint)


def build_request(params: dict[str, t.Any]) -> BundleRequest:
    validate_name(params["name"])
    validate_version(params["version"])
    tolerance = params.get("tolerance") or {}
    rtol = tolerance.get("rtol", DEFAULT_RTOL)
    atol = tolerance.get("atol", DEFAULT_ATOL)
    if rtol is None:
        rtol = DEFAULT_RTOL
    if atol is None:
        atol = DEFAULT_ATOL
    if rtol < 0 or atol < 0 or not (math.isfinite(rtol) and math.isfinite(atol)):
        raise EdgeMLError(
            f"tolerance must be finite and non-negative (rtol={rtol!r}, atol={atol!r}).",
            "Use values such as rtol: 1.0e-4, atol: 1.0e-5.",
        )
    threads = params.get("intra_op_threads", 1)
    if threads is None or threads < 0:
        raise EdgeMLError(
            "intra_op_threads must be 0 (onnxruntime default) or a positive number.",
            "Use 1 (the default) for reproducible outputs.",
        )
    samples = params.get("sample_inputs")
    expected = params.get("expected_outputs")
    if params.get("sample_inputs_file"):
        samples, file_expected = _load_samples_file(params["sample_inputs_file"])
        if expected is None:
            expected = file_expected
    if expected is not None and not samples:
        raise EdgeMLError(
            "expected_outputs is given without sample inputs.",
            "Give sample_inputs (or sample_inputs_file) with one vector per expected_outputs entry.",
        )
    return BundleRequest(
        src=params["src"],
        dest=params["dest"],
        name=params["name"],
        version=params["version"],
        description=params.get("description") or "",
        metrics=_metrics(params.get("metrics") or {}),
        labels=_labels(params.get("labels") or {}),
        sample_inputs=list(samples or []),
        expected_outputs=expected,
        rtol=float(rtol),
        atol=float(atol),
        intra_op_threads=int(threads),
        reference_inputs_file=params.get("reference_inputs_file"),
        profile_bins=int(params.get("profile_bins") or 10),
    )


def build_signer(params: dict[str, t.Any]) -> Signer | None:
    """The signing material, read and checked before anything is written; None unsigned."""
    if not params.get("signing_key"):
        return None
    return Signer(
        params["signing_key"],
        params.get("signing_key_password"),
        params.get("signing_certificate"),
        params.get("signing_certificate_chain") or (),
    )


def run_model_bundle(wrapper: EdgeMLModule) -> dict[str, t.Any]:
    wrapper.require_libs(LIB_ERRORS)
    request = build_request(wrapper.params)
    signer = build_signer(wrapper.params)
    service = BundleService(BundleStore(request.dest))
    desired = service.desired(request)
    plan = service.plan(request, desired)
    # A new bundle is signed before it appears (inside the atomic write); an existing one
    # is signed unless it already carries this signer's signature over what it holds.
    service.apply(request, desired, plan, wrapper.check_mode, finalize=signer.sign if signer else None)
    actions = plan.actions()
    bundle_signature = None
    if signer is not None:
        bundle_signature = {"file": os.path.join(plan.bundle_path, SIGNATURE_FILE), "signed_by": signer.describe()}
        if plan.changed:
            actions.append(f"sign {plan.bundle_path} with {signer.describe()} into {bundle_signature['file']}")
        else:
            signing_actions, bundle_signature = ensure_signature(plan.bundle_path, signer, wrapper.check_mode)
            actions += signing_actions

    if not request.sample_inputs:
        wrapper.warn(
            "No sample inputs: the bundle has no smoke-test vectors, so the model server cannot "
            "prove at load time that the edge computes what the controller did."
        )
    match = desired.expected_match
    if match and match["mismatched"]:
        indexes = ", ".join(str(i) for i in match["mismatched"])
        wrapper.warn(
            f"{request.name}/{request.version}: {len(match['mismatched'])} of {match['vectors']} smoke-test "
            f"vectors disagree with expected_outputs (vectors {indexes}). The bundle is written as "
            "asked, but a deployment smoke gate will reject this model."
        )

    result: dict[str, t.Any] = {
        "changed": bool(actions),
        "bundle_path": plan.bundle_path,
        "manifest_path": os.path.join(plan.bundle_path, MANIFEST_FILE),
        "manifest": plan.after,
        "sha256": plan.after["model"]["sha256"],
        "signature": plan.after["signature"],
        "actions": actions,
    }
    if bundle_signature is not None:
        result["bundle_signature"] = bundle_signature
    if match is not None:
        result["expected_match"] = match
    diff = wrapper.diff(
        json.dumps(plan.before, sort_keys=True, indent=2) + "\n" if plan.before is not None else "",
        json.dumps(plan.after, sort_keys=True, indent=2) + "\n",
        before_header=result["manifest_path"] if plan.before is not None else "(absent)",
        after_header=result["manifest_path"],
    )
    if diff is not None:
        result["diff"] = diff
    return result
