# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Service layer of model_bundle: desired manifest, current bundle, plan, apply.

``BundleService.desired`` loads the model, records its signature, checks the
sample inputs against it, runs them and builds the manifest (docs/bundle-format.md).
``BundleService.plan`` compares it with what is on disk (versions are immutable)
and ``BundleService.apply`` writes only when asked to and not in check mode.
"""

from __future__ import annotations

import copy
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import (
    BundleStore,
    ExistingBundle,
    OnnxModel,
    read_file,
    sha256_hex,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    MANIFEST_FILE,
    MODEL_FILE,
    PROFILE_FILE,
    SCHEMA_VERSION,
    check_values,
    dumps_manifest,
    is_flat,
    loads_manifest,
    manifest_paths_differ,
    nested_shape,
    prod,
    tensors_match,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_profile import build_profile
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

TENSOR_KEYS = frozenset(("name", "datatype", "shape", "data"))


class BundleRequest:
    """What the user asked for, already type-checked by the argument spec."""

    def __init__(
        self,
        *,
        src: str,
        dest: str,
        name: str,
        version: str,
        description: str = "",
        metrics: dict[str, t.Any] | None = None,
        labels: dict[str, str] | None = None,
        sample_inputs: list[t.Any] | None = None,
        expected_outputs: list[t.Any] | None = None,
        rtol: float = 1e-4,
        atol: float = 1e-5,
        intra_op_threads: int = 1,
        reference_inputs_file: str | None = None,
        profile_bins: int = 10,
    ) -> None:
        self.src = src
        self.dest = dest
        self.name = name
        self.version = version
        self.description = description
        self.metrics = metrics or {}
        self.labels = labels or {}
        self.sample_inputs = sample_inputs or []
        self.expected_outputs = expected_outputs
        self.rtol = rtol
        self.atol = atol
        self.intra_op_threads = intra_op_threads
        self.reference_inputs_file = reference_inputs_file
        self.profile_bins = profile_bins


class Desired:
    """The bundle the request describes; ``files`` are its files beside model and manifest."""

    def __init__(
        self,
        model: bytes,
        manifest: dict[str, t.Any],
        expected_match: dict[str, t.Any] | None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        self.model = model
        self.manifest = manifest
        self.manifest_bytes = dumps_manifest(manifest)
        self.expected_match = expected_match
        self.files = files or {}


class Plan:
    """What apply() will do: ``create`` or ``none``; ``manifest`` is what the bundle holds after."""

    def __init__(
        self,
        action: str,
        bundle_path: str,
        before: dict[str, t.Any] | None,
        after: dict[str, t.Any],
        files: t.Sequence[str] = (),
    ) -> None:
        self.action = action
        self.bundle_path = bundle_path
        self.before = before
        self.after = after
        self.files = list(files)

    @property
    def changed(self) -> bool:
        return self.action != "none"

    def actions(self) -> list[str]:
        if self.action == "none":
            return []
        return [
            f"create directory {self.bundle_path}",
            f"write {self.bundle_path}/{MODEL_FILE}",
            *(f"write {self.bundle_path}/{name}" for name in self.files),
            f"write {self.bundle_path}/{MANIFEST_FILE}",
        ]


# ---------------------------------------------------------------------------
# Tensors given by the user -> OIP JSON tensors checked against the signature


def _tensor_items(raw: t.Any, where: str, kind: str) -> list[dict[str, t.Any]]:
    """Accept a list of {name, datatype?, shape?, data} or a mapping name -> (nested) data."""
    if isinstance(raw, dict):
        if "name" in raw and "data" in raw and set(raw) <= TENSOR_KEYS:
            raw = [raw]
        else:
            return [{"name": name, "data": data} for name, data in raw.items()]
    if not isinstance(raw, list):
        raise EdgeMLError(
            f"{where} must be a list of tensors or a mapping of {kind} name to data, got {type(raw).__name__}.",
            "Write it as [{name: X, shape: [1, 64], data: [...]}] or {X: [[...]]}.",
        )
    items = []
    for tensor in raw:
        if not isinstance(tensor, dict) or "name" not in tensor or "data" not in tensor:
            raise EdgeMLError(
                f"{where}: every tensor needs at least 'name' and 'data', got {_short(tensor)!r}.",
                "Write each tensor as {name: X, datatype: FP32, shape: [1, 64], data: [...]}.",
            )
        unknown = sorted(set(tensor) - TENSOR_KEYS)
        if unknown:
            raise EdgeMLError(
                "{}: tensor {!r} has unknown keys {}.".format(where, tensor["name"], ", ".join(unknown)),
                "Allowed keys are name, datatype, shape and data.",
            )
        items.append(tensor)
    return items


def _short(value: t.Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _resolve_shape(
    tensor: dict[str, t.Any], spec_shape: list[int], where: str, fallback: list[int] | None = None
) -> tuple[list[int], list[t.Any]]:
    data = tensor["data"]
    shape = tensor.get("shape")
    if not isinstance(data, (list, tuple)):
        data = [data]  # a scalar: flat data of one element
    data_shape, flat = nested_shape(data, where)
    if shape is not None:
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise EdgeMLError(
                f"{where}: shape {shape!r} is not a list of non-negative integers.",
                "Give the concrete shape of this sample, e.g. [1, 64].",
            )
        shape = list(shape)
        if len(flat) != prod(shape):
            raise EdgeMLError(
                f"{where}: data has {len(flat)} elements but shape {shape} needs {prod(shape)}.",
                "Fix the data or the shape; data is the row-major flattened tensor.",
            )
        return shape, flat
    if not is_flat(data):
        return data_shape, flat
    if not spec_shape and len(flat) == 1:
        return [], flat
    # Flat data without a shape: infer it from the signature when that is unambiguous.
    if fallback is not None and prod(fallback) == len(flat):
        return list(fallback), flat
    dynamic = [i for i, d in enumerate(spec_shape) if d < 0]
    static = prod(d for d in spec_shape if d >= 0)
    if len(dynamic) == 0:
        if len(flat) != static:
            raise EdgeMLError(
                f"{where}: data has {len(flat)} elements but the model's shape {spec_shape} needs {static}.",
                "Give exactly one sample of the model's input shape.",
            )
        return list(spec_shape), flat
    if len(dynamic) == 1 and static > 0 and len(flat) % static == 0:
        shape = [len(flat) // static if d < 0 else d for d in spec_shape]
        return shape, flat
    if len(dynamic) == 1:
        raise EdgeMLError(
            f"{where}: data has {len(flat)} elements, which is not a whole number of "
            f"{static}-element rows for shape {spec_shape}.",
            "Fix the length of data (row-major flattened), or give an explicit 'shape'.",
        )
    raise EdgeMLError(
        f"{where}: flat data cannot be fitted to the model's shape {spec_shape} (several dynamic dimensions).",
        "Give an explicit 'shape' or the data as a nested list.",
    )


def _check_shape(shape: list[int], spec_shape: list[int], where: str) -> None:
    if len(shape) != len(spec_shape):
        raise EdgeMLError(
            f"{where}: shape {shape} has rank {len(shape)} but the model expects rank "
            f"{len(spec_shape)} ({spec_shape}, -1 = any size).",
            "Reshape the sample; for a single sample of a batched model add the batch "
            "dimension, e.g. [[...]] instead of [...].",
        )
    for axis, (dim, spec) in enumerate(zip(shape, spec_shape)):
        if spec >= 0 and dim != spec:
            raise EdgeMLError(
                f"{where}: dimension {axis} is {dim} but the model expects {spec} (model shape {spec_shape}).",
                "Fix the sample so its shape fits the model signature.",
            )


def normalize_tensors(
    raw: t.Any,
    specs: list[dict[str, t.Any]],
    where: str,
    kind: str,
    *,
    require_all: bool,
    fallbacks: dict[str, list[int]] | None = None,
) -> list[dict[str, t.Any]]:
    """Check user tensors against signature specs; return them in signature order."""
    by_name = {spec["name"]: spec for spec in specs}
    given: dict[str, dict[str, t.Any]] = {}
    for tensor in _tensor_items(raw, where, kind):
        name = tensor["name"]
        spec = by_name.get(name)
        if spec is None:
            raise EdgeMLError(
                f"{where}: the model has no {kind} named {name!r}.",
                "The model's {}s are: {}.".format(kind, ", ".join(repr(n) for n in by_name) or "(none)"),
            )
        if name in given:
            raise EdgeMLError(f"{where}: {kind} {name!r} is given twice.", f"Give each {kind} once.")
        tensor_where = f"{where} {kind} {name!r}"
        datatype = tensor.get("datatype", spec["datatype"])
        if datatype != spec["datatype"]:
            raise EdgeMLError(
                "{}: datatype {} does not match the model's {}.".format(tensor_where, datatype, spec["datatype"]),
                "Use datatype {} (or leave datatype out).".format(spec["datatype"]),
            )
        shape, flat = _resolve_shape(tensor, spec["shape"], tensor_where, (fallbacks or {}).get(name))
        _check_shape(shape, spec["shape"], tensor_where)
        data = check_values(datatype, flat, tensor_where)
        given[name] = {"name": name, "datatype": datatype, "shape": shape, "data": data}
    if require_all:
        missing = [name for name in by_name if name not in given]
        if missing:
            raise EdgeMLError(
                "{}: {} {} missing.".format(
                    where, ", ".join(repr(n) for n in missing), "is" if len(missing) == 1 else "are"
                ),
                "Give a value for every model {}: {}.".format(kind, ", ".join(repr(n) for n in by_name)),
            )
    if not given:
        raise EdgeMLError(f"{where} is empty.", f"Give at least one {kind} tensor.")
    return [given[spec["name"]] for spec in specs if spec["name"] in given]


# ---------------------------------------------------------------------------


class BundleService:
    def __init__(self, store: BundleStore, model_factory: t.Callable[..., OnnxModel] = OnnxModel) -> None:
        self.store = store
        self.model_factory = model_factory

    def desired(self, request: BundleRequest) -> Desired:
        data = read_file(
            request.src,
            "Model file (src)",
            "Set src to the path of an existing .onnx file on the host running the task "
            "(relative paths are relative to that process's working directory).",
        )
        model = self.model_factory(data, request.src, request.intra_op_threads)
        signature = model.signature()
        vectors, expected_match = self._vectors(model, signature, request)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": request.name,
            "version": request.version,
            "model": {
                "file": MODEL_FILE,
                "sha256": sha256_hex(data),
                "size": len(data),
                "opsets": model.opsets(),
                "producer": model.producer(),
                "ir_version": model.ir_version(),
            },
            "signature": signature,
            "metadata": {
                "description": request.description,
                "metrics": dict(request.metrics),
                "labels": dict(request.labels),
            },
            "smoke_tests": {
                "tolerance": {"rtol": request.rtol, "atol": request.atol},
                "vectors": vectors,
            },
        }
        files = {}
        if request.reference_inputs_file:
            # Serialised as the manifest is: the same data gives the same bytes.
            profile = dumps_manifest(
                build_profile(model, signature, request.reference_inputs_file, request.profile_bins)
            )
            files[PROFILE_FILE] = profile
            manifest["reference_profile"] = {"file": PROFILE_FILE, "sha256": sha256_hex(profile), "size": len(profile)}
        return Desired(data, manifest, expected_match, files)

    def _vectors(
        self, model: OnnxModel, signature: dict[str, t.Any], request: BundleRequest
    ) -> tuple[list[dict[str, t.Any]], dict[str, t.Any] | None]:
        expected_all = request.expected_outputs
        if expected_all is not None and len(expected_all) != len(request.sample_inputs):
            raise EdgeMLError(
                f"expected_outputs has {len(expected_all)} entries but there are "
                f"{len(request.sample_inputs)} sample input vectors.",
                "Give one entry per sample vector, in the same order (null for a vector without ground truth).",
            )
        vectors = []
        checked = matched = 0
        mismatched = []
        for index, raw in enumerate(request.sample_inputs):
            where = f"sample_inputs[{index}]"
            inputs = normalize_tensors(raw, signature["inputs"], where, "input", require_all=True)
            outputs = model.run(inputs, where)
            vector: dict[str, t.Any] = {"inputs": inputs, "outputs": outputs}
            raw_expected = expected_all[index] if expected_all is not None else None
            if raw_expected is not None:
                fallbacks = {out["name"]: out["shape"] for out in outputs}
                expected = normalize_tensors(
                    raw_expected,
                    signature["outputs"],
                    f"expected_outputs[{index}]",
                    "output",
                    require_all=False,
                    fallbacks=fallbacks,
                )
                vector["expected"] = expected
                checked += 1
                if tensors_match(outputs, expected, request.rtol, request.atol):
                    matched += 1
                else:
                    mismatched.append(index)
            vectors.append(vector)
        if not checked:
            return vectors, None
        return vectors, {
            "vectors": checked,
            "matched": matched,
            "mismatched": mismatched,
            "rate": round(matched / checked, 6),
        }

    def plan(self, request: BundleRequest, desired: Desired) -> Plan:
        existing = self.store.read(request.name, request.version)
        if existing.state in ("absent", "empty"):
            return Plan("create", existing.path, None, desired.manifest, sorted(desired.files))
        if existing.state == "incomplete":
            raise EdgeMLError(
                f"{existing.path} exists but does not hold both {MODEL_FILE} and {MANIFEST_FILE} "
                "(an interrupted copy?).",
                "Inspect and remove that directory, then run the task again.",
            )
        current = self._verified_manifest(existing)
        if existing.model != desired.model:
            raise EdgeMLError(
                f"Bundle {request.name}/{request.version} already exists at {existing.path} with a "
                f"different model (sha256 {current.get('model', {}).get('sha256')}, this src has "
                f"{desired.manifest['model']['sha256']}).",
                "Versions are immutable: publish this model as a new version (e.g. bump version).",
            )
        if existing.manifest == desired.manifest_bytes or self._equivalent(current, desired.manifest):
            return Plan("none", existing.path, current, current)
        differ = manifest_paths_differ(current, desired.manifest)
        shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
        raise EdgeMLError(
            f"Bundle {request.name}/{request.version} already exists at {existing.path} "
            f"with other content (differs at: {shown}).",
            "Versions are immutable: publish the change as a new version (e.g. bump version), "
            "or give the options the existing bundle was made with.",
            differences=differ,
        )

    @staticmethod
    def _verified_manifest(existing: ExistingBundle) -> dict[str, t.Any]:
        where = f"{existing.path}/{MANIFEST_FILE}"
        current = loads_manifest(existing.manifest or b"", where)
        checked = [(MODEL_FILE, existing.model, current.get("model"))]
        if "reference_profile" in current:
            ref = current["reference_profile"]
            name = ref.get("file") if isinstance(ref, dict) else None
            checked.append((str(name), existing.files.get(str(name)), ref))
        for name, content, entry in checked:
            recorded = entry.get("sha256") if isinstance(entry, dict) else None
            actual = sha256_hex(content) if content is not None else "(missing)"
            if recorded != actual:
                raise EdgeMLError(
                    f"The existing bundle at {existing.path} is corrupt: {name} has sha256 "
                    f"{actual} but {MANIFEST_FILE} records {recorded}.",
                    "Do not deploy it. Remove that directory and run the task again to rebuild it.",
                )
        return current

    @staticmethod
    def _equivalent(current: dict[str, t.Any], desired: dict[str, t.Any]) -> bool:
        """Equal except for recorded outputs, which only need to agree within tolerance.

        The same model on another controller (CPU, onnxruntime build) may compute the
        last bits differently; that is not a new version.
        """
        try:
            cur_vectors = current["smoke_tests"]["vectors"]
            des_vectors = desired["smoke_tests"]["vectors"]
            if len(cur_vectors) != len(des_vectors):
                return False
            cur = copy.deepcopy(current)
            des = copy.deepcopy(desired)
            for vector in cur["smoke_tests"]["vectors"] + des["smoke_tests"]["vectors"]:
                vector.pop("outputs", None)
            if cur != des:
                return False
            rtol = desired["smoke_tests"]["tolerance"]["rtol"]
            atol = desired["smoke_tests"]["tolerance"]["atol"]
            return all(
                len(cur_vec["outputs"]) == len(des_vec["outputs"])
                and tensors_match(des_vec["outputs"], cur_vec["outputs"], rtol, atol)
                for cur_vec, des_vec in zip(cur_vectors, des_vectors)
            )
        except (KeyError, TypeError, AttributeError):
            return False

    def apply(
        self,
        request: BundleRequest,
        desired: Desired,
        plan: Plan,
        check_mode: bool,
        finalize: t.Callable[[str], t.Any] | None = None,
    ) -> None:
        if plan.action == "create" and not check_mode:
            self.store.write(
                request.name, request.version, desired.model, desired.manifest_bytes, desired.files, finalize=finalize
            )
