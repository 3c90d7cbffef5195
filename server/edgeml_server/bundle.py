"""Load a model bundle (docs/bundle-format.md): verify, open in onnxruntime, self-test.

Order matters and is the point of this module:
  0. check the bundle's signature, model.sig (signing.py), as the signature policy says;
  1. read model.json ONCE and check it (schema, names, sizes, signature shape);
  2. read model.onnx ONCE into memory and check size + sha256 against the manifest;
  3. hand exactly those verified bytes to onnxruntime (no second read, so no
     time-of-check/time-of-use gap); the bytes of model.json, model.onnx and the
     reference profile used must also be the ones the verified signature lists;
  4. check the manifest signature (tensor names, types, shapes) against what onnxruntime reports;
  5. run every smoke vector and compare with the recorded outputs.
Only a bundle that passed all of them becomes a ``LoadedModel``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from .datatypes import DATATYPES, FLOAT_TYPES, NP_DTYPES, ORT_TO_OIP
from .drift import DEFAULT_WINDOW, DriftMonitor, ProfileError, parse_profile

if TYPE_CHECKING:
    from .signing import SignaturePolicy, VerifiedSignature

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
POINTER_FILE = "current"
# A pointer file holds one version string; anything bigger is not a pointer file.
_POINTER_MAX_BYTES = 256
# A profile is a few kilobytes (bins per feature); anything near this is not one.
_PROFILE_MAX_BYTES = 16 * 1024 * 1024


class BundleError(Exception):
    """A bundle cannot be served. The message is shown to operators verbatim."""


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name))


def valid_version(version: str) -> bool:
    return bool(VERSION_RE.fullmatch(version)) and version not in (".", "..")


def read_pointer(root: Path, name: str) -> str:
    """Return the version named by ROOT/NAME/current (whitespace-stripped)."""
    path = root / name / POINTER_FILE
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_POINTER_MAX_BYTES + 1)
    except FileNotFoundError:
        raise BundleError(
            f"no version given and pointer file {path} does not exist "
            "(pass --version or write the version into that file)"
        ) from None
    except OSError as exc:
        raise BundleError(f"cannot read pointer file {path}: {exc}") from None
    if len(raw) > _POINTER_MAX_BYTES:
        raise BundleError(f"pointer file {path} is larger than {_POINTER_MAX_BYTES} bytes")
    try:
        version = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BundleError(f"pointer file {path} is not UTF-8 text") from None
    if not valid_version(version):
        raise BundleError(f"pointer file {path} holds an invalid version {version!r}")
    return version


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = dynamic

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# Folding each request's input into the statistics costs ~4 numpy reductions, about
# 20 us at batch 1 -- more than the inference. Pending inputs are folded in batches
# instead (amortised to ~1 us), bounded in count and in elements so memory stays flat.
_FOLD_MAX_ARRAYS = 256
_FOLD_MAX_ELEMENTS = 1 << 16


@dataclass
class InputStats:
    """Running summary of one input tensor's values, for drift monitoring.

    Kept as plain floats under a lock and exported by a custom collector
    (metrics.py), which calls ``snapshot()`` and so folds what is pending.
    NaN/inf elements are counted apart: they would poison the sums forever.
    """

    count: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    minimum: float = float("inf")
    maximum: float = float("-inf")
    nonfinite: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _pending: list[np.ndarray] = field(default_factory=list, repr=False)
    _pending_elements: int = 0

    def observe(self, arr: np.ndarray) -> None:
        if arr.size == 0:
            return
        with self.lock:
            # The feed array is never mutated after inference, so keeping a reference is safe.
            self._pending.append(arr)
            self._pending_elements += arr.size
            if len(self._pending) >= _FOLD_MAX_ARRAYS or self._pending_elements >= _FOLD_MAX_ELEMENTS:
                self._fold()

    def _fold(self) -> None:
        """Fold pending arrays into the sums. Caller holds the lock."""
        if not self._pending:
            return
        flat = np.concatenate([a.reshape(-1) for a in self._pending]).astype(np.float64)
        self._pending = []
        self._pending_elements = 0
        finite = np.isfinite(flat)
        if not finite.all():
            self.nonfinite += int(flat.size - np.count_nonzero(finite))
            flat = flat[finite]
            if flat.size == 0:
                return
        self.count += int(flat.size)
        self.total += float(flat.sum())
        self.total_sq += float(np.dot(flat, flat))
        self.minimum = min(self.minimum, float(flat.min()))
        self.maximum = max(self.maximum, float(flat.max()))

    def snapshot(self) -> tuple[int, float, float, float, float, int]:
        with self.lock:
            self._fold()
            return self.count, self.total, self.total_sq, self.minimum, self.maximum, self.nonfinite


class LoadedModel:
    """A verified, self-tested onnxruntime session for one NAME/VERSION.

    Tracks in-flight requests so that a swapped-out version is released only
    after the requests that already hold it have finished.
    """

    def __init__(  # noqa: PLR0917 - built in one place, from a verified bundle
        self,
        name: str,
        version: str,
        sha256: str,
        manifest: dict[str, Any],
        session: ort.InferenceSession,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        load_seconds: float,
        drift: DriftMonitor | None = None,
        signed_by: str | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.manifest = manifest
        self.session: ort.InferenceSession | None = session
        self.inputs = inputs
        self.outputs = outputs
        self.input_by_name = {t.name: t for t in inputs}
        self.output_by_name = {t.name: t for t in outputs}
        self.output_names = [t.name for t in outputs]
        self.load_seconds = load_seconds
        self.loaded_at = time.time()
        self.stats = {t.name: InputStats() for t in inputs if t.datatype != "BYTES"}
        # None when the bundle has no reference profile (or drift is switched off).
        self.drift = drift
        # Who signed the bundle ("key <hint>" or "the certificate <subject>"), verified at load;
        # None for an unsigned bundle.
        self.signed_by = signed_by
        self._lock = threading.Lock()
        self._inflight = 0
        self._retired = False
        self.on_unload: Any = None  # callable(LoadedModel) set by the manager

    # --- in-flight accounting -------------------------------------------------
    def try_acquire(self) -> bool:
        with self._lock:
            if self.session is None:
                return False
            self._inflight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            drop = self._retired and self._inflight == 0 and self.session is not None
            if drop:
                self.session = None
        if drop and self.on_unload is not None:
            self.on_unload(self)

    def retire(self) -> None:
        """Stop taking new requests; unload once the in-flight ones are done."""
        with self._lock:
            self._retired = True
            drop = self._inflight == 0 and self.session is not None
            if drop:
                self.session = None
        if drop and self.on_unload is not None:
            self.on_unload(self)

    @property
    def inflight(self) -> int:
        return self._inflight

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "onnxruntime_onnx",
            "inputs": [t.as_json() for t in self.inputs],
            "outputs": [t.as_json() for t in self.outputs],
        }


# --- manifest checks ------------------------------------------------------------


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise BundleError(msg)


def _parse_specs(items: Any, where: str) -> list[TensorSpec]:
    _require(isinstance(items, list) and len(items) > 0, f"{where} must be a non-empty list")
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        _require(isinstance(item, dict), f"{where}[{i}] must be an object")
        name = item.get("name")
        dt = item.get("datatype")
        shape = item.get("shape")
        _require(isinstance(name, str) and name != "", f"{where}[{i}].name must be a string")
        _require(name not in seen, f"{where}: duplicate tensor name {name!r}")
        seen.add(name)
        _require(dt in DATATYPES, f"{where}[{i}].datatype {dt!r} is not an OIP datatype")
        _require(
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape),
            f"{where}[{i}].shape must be a list of integers >= -1",
        )
        specs.append(TensorSpec(name, dt, tuple(shape)))
    return specs


def _file_entry(entry: Any, key: str, max_size: int | None) -> dict[str, Any]:
    """Check model.json's {file, sha256, size} entry KEY (the model, the reference profile)."""
    _require(isinstance(entry, dict), f"model.json: '{key}' must be an object")
    file = entry.get("file")
    _require(
        isinstance(file, str) and file not in ("", ".", "..") and "/" not in file and "\\" not in file,
        f"model.json: {key}.file {file!r} must be a plain file name inside the bundle",
    )
    _require(
        isinstance(entry.get("sha256"), str) and bool(SHA256_RE.fullmatch(entry["sha256"])),
        f"model.json: {key}.sha256 must be 64 lowercase hex digits",
    )
    size = entry.get("size")
    _require(
        isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= (max_size or size),
        f"model.json: {key}.size must be a non-negative integer" + (f" up to {max_size}" if max_size else ""),
    )
    return entry


def check_manifest(
    manifest: Any, name: str, version: str
) -> tuple[dict[str, Any], list[TensorSpec], list[TensorSpec]]:
    _require(isinstance(manifest, dict), "model.json must hold a JSON object")
    _require(
        manifest.get("schema_version") == 1,
        f"unsupported schema_version {manifest.get('schema_version')!r} (expected 1)",
    )
    _require(
        manifest.get("name") == name,
        f"model.json name {manifest.get('name')!r} does not match bundle directory {name!r}",
    )
    _require(
        manifest.get("version") == version,
        f"model.json version {manifest.get('version')!r} does not match bundle directory {version!r}",
    )
    model = _file_entry(manifest.get("model"), "model", None)
    sig = manifest.get("signature")
    _require(isinstance(sig, dict), "model.json: 'signature' must be an object")
    inputs = _parse_specs(sig.get("inputs"), "signature.inputs")
    outputs = _parse_specs(sig.get("outputs"), "signature.outputs")
    smoke = manifest.get("smoke_tests")
    _require(isinstance(smoke, dict), "model.json: 'smoke_tests' must be an object")
    vectors = smoke.get("vectors")
    # Readiness means "the self-test passed"; with no vectors there is nothing to
    # prove, so such a bundle is refused rather than reported ready on faith.
    _require(
        isinstance(vectors, list) and len(vectors) > 0,
        "model.json: smoke_tests.vectors must be a non-empty list",
    )
    tol = smoke.get("tolerance", {})
    _require(isinstance(tol, dict), "model.json: smoke_tests.tolerance must be an object")
    for key in ("rtol", "atol"):
        v = tol.get(key, 0.0)
        _require(
            isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0,
            f"smoke_tests.tolerance.{key} must be a number >= 0",
        )
    if manifest.get("reference_profile") is not None:
        _file_entry(manifest["reference_profile"], "reference_profile", _PROFILE_MAX_BYTES)
    return model, inputs, outputs


def _read_verified(
    path: Path, size: int, sha256: str, what: str, signed: VerifiedSignature | None = None
) -> bytes:
    """The bytes of PATH, checked against the size and sha256 model.json records (and the
    signature's digest of PATH, for a signed bundle)."""
    try:
        with open(path, "rb") as fh:
            blob = fh.read(size + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    _require(len(blob) == size, f"{path} is {os.path.getsize(path)} bytes, model.json says {size}")
    digest = hashlib.sha256(blob).hexdigest()
    _require(
        digest == sha256,
        f"sha256 mismatch for {path}: file has {digest}, model.json says {sha256}; refusing to load {what}",
    )
    if signed is not None:
        signed.require(path, digest)
    return blob


def _read_manifest(bdir: Path, signed: VerifiedSignature | None) -> Any:
    """model.json, read once: the bytes checked against the signature are the bytes parsed."""
    path = bdir / "model.json"
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise BundleError(f"{bdir}/model.json does not exist") from None
    except OSError as exc:
        raise BundleError(f"{bdir}/model.json is not readable JSON: {exc}") from None
    if signed is not None:
        signed.require(path, hashlib.sha256(raw).hexdigest())
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{bdir}/model.json is not readable JSON: {exc}") from None


def load_drift_monitor(  # noqa: PLR0917 - the loader's steps, in order
    bdir: Path,
    manifest: dict[str, Any],
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    window: int,
    signed: VerifiedSignature | None = None,
) -> DriftMonitor | None:
    """The bundle's reference profile, verified, as a drift monitor; None without one."""
    ref = manifest.get("reference_profile")
    if ref is None or window <= 0:
        return None
    path = bdir / ref["file"]
    blob = _read_verified(path, ref["size"], ref["sha256"], "the model", signed)
    try:
        tensors_in, tensors_out = parse_profile(
            json.loads(blob), {t.name for t in inputs}, {t.name for t in outputs}
        )
    except (ProfileError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path} is not a valid reference profile: {exc}") from None
    specs = {t.name: t for t in (*inputs, *outputs)}
    for tensor in (*tensors_in, *tensors_out):
        row = specs[tensor.name].shape[1:]
        # The profile's features are a row's elements, flattened (dimension 0 is the batch).
        width = int(np.prod(row)) if all(d >= 0 for d in row) else None
        _require(
            width is None or width == tensor.features,
            f"{path}: {tensor.name!r} has {tensor.features} features in the profile, "
            f"but a row of it has {width} elements (shape {list(specs[tensor.name].shape)})",
        )
    return DriftMonitor(tensors_in, tensors_out, window)


def _check_against_session(
    session: ort.InferenceSession, inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> None:
    def compare(kind: str, declared: list[TensorSpec], actual: list[Any]) -> None:
        act = {a.name: a for a in actual}
        _require(
            set(act) == {t.name for t in declared},
            f"signature.{kind} names {sorted(t.name for t in declared)} "
            f"do not match the model's {sorted(act)}",
        )
        for t in declared:
            a = act[t.name]
            oip = ORT_TO_OIP.get(a.type)
            _require(
                oip is not None,
                f"{kind} {t.name!r} has type {a.type}, which is not a tensor this server can serve",
            )
            _require(
                oip == t.datatype,
                f"signature says {kind} {t.name!r} is {t.datatype} but the model says {oip}",
            )
            shape = a.shape or []
            _require(
                len(shape) == len(t.shape),
                f"signature says {kind} {t.name!r} has rank {len(t.shape)} but the model says {len(shape)}",
            )
            for d_decl, d_model in zip(t.shape, shape, strict=True):
                if isinstance(d_model, int) and d_model >= 0 and d_decl != -1:
                    _require(
                        d_decl == d_model,
                        f"signature shape {list(t.shape)} of {kind} {t.name!r} "
                        f"contradicts the model's {shape}",
                    )

    compare("inputs", inputs, session.get_inputs())
    compare("outputs", outputs, session.get_outputs())


def _vector_tensor(item: Any, where: str) -> tuple[str, np.ndarray]:
    _require(isinstance(item, dict), f"{where} must be an object")
    name, dt, shape, data = item.get("name"), item.get("datatype"), item.get("shape"), item.get("data")
    _require(
        isinstance(name, str) and dt in DATATYPES and isinstance(shape, list) and isinstance(data, list),
        f"{where} needs name, datatype, shape and data",
    )
    try:
        if dt == "BYTES":
            arr = np.array([d.encode() if isinstance(d, str) else d for d in data], dtype=object)
        else:
            arr = np.asarray(data, dtype=NP_DTYPES[dt])
        arr = arr.reshape(shape)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"{where} ({name!r}): data does not fit shape {shape}: {exc}") from None
    return name, arr


def run_smoke_tests(
    session: ort.InferenceSession, smoke: dict[str, Any], inputs: list[TensorSpec], outputs: list[TensorSpec]
) -> None:
    tol = smoke.get("tolerance", {})
    rtol = float(tol.get("rtol", 0.0))
    atol = float(tol.get("atol", 0.0))
    out_types = {t.name: t.datatype for t in outputs}
    for vi, vec in enumerate(smoke["vectors"]):
        where = f"smoke vector {vi}"
        _require(isinstance(vec, dict), f"{where} must be an object")
        vin, vout = vec.get("inputs"), vec.get("outputs")
        _require(
            isinstance(vin, list) and isinstance(vout, list) and len(vout) > 0,
            f"{where} needs 'inputs' and non-empty 'outputs' lists",
        )
        feeds = dict(_vector_tensor(t, f"{where} input") for t in vin)
        _require(
            set(feeds) == {t.name for t in inputs},
            f"{where}: inputs {sorted(feeds)} do not match the signature",
        )
        recorded = [_vector_tensor(t, f"{where} output") for t in vout]
        for oname, _unused1 in recorded:
            _require(oname in out_types, f"{where}: recorded output {oname!r} is not a model output")
        try:
            got = session.run([n for n, _unused2 in recorded], feeds)
        except Exception as exc:
            raise BundleError(f"{where}: onnxruntime failed to run it: {exc}") from None
        for (oname, want), got_value in zip(recorded, got, strict=True):
            have = np.asarray(got_value)
            if have.shape != want.shape:
                raise BundleError(
                    f"{where}: output {oname!r} has shape {list(have.shape)}, recorded {list(want.shape)}"
                )
            if out_types[oname] in FLOAT_TYPES:
                w = want.astype(np.float64)
                h = have.astype(np.float64)
                bad = ~(np.abs(h - w) <= atol + rtol * np.abs(w))
                # Identical NaN/inf positions count as equal.
                bad &= ~((np.isnan(h) & np.isnan(w)) | (np.isinf(w) & (h == w)))
                if bad.any():
                    i = int(np.flatnonzero(bad.reshape(-1))[0])
                    raise BundleError(
                        f"{where}: output {oname!r} differs from the recorded value at flat index {i}: "
                        f"got {h.reshape(-1)[i]!r}, recorded {w.reshape(-1)[i]!r} (rtol={rtol}, atol={atol})"
                    )
            else:
                if out_types[oname] == "BYTES":
                    equal = [
                        bytes(a) if not isinstance(a, str) else a.encode() for a in have.reshape(-1)
                    ] == [bytes(b) if not isinstance(b, str) else b.encode() for b in want.reshape(-1)]
                else:
                    equal = bool(np.array_equal(have, want))
                if not equal:
                    raise BundleError(f"{where}: output {oname!r} is not equal to the recorded value")


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads burn CPU and power that an edge box does not have.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return so


def load_bundle(  # noqa: PLR0917 - every caller passes the server's settings in this order
    root: Path,
    name: str,
    version: str,
    intra_op_threads: int = 1,
    drift_window: int = DEFAULT_WINDOW,
    signatures: SignaturePolicy | None = None,
) -> LoadedModel:
    """Verify and self-test ROOT/NAME/VERSION; raise BundleError with the reason.
    SIGNATURES defaults to the optional policy with the default trust directory."""
    # Late: signing.py raises this module's BundleError, so it imports this module.
    from . import signing  # noqa: PLC0415

    t0 = time.perf_counter()
    _require(valid_name(name), f"invalid model name {name!r}")
    _require(valid_version(version), f"invalid version {version!r}")
    bdir = root / name / version
    _require(bdir.is_dir(), f"bundle directory {bdir} does not exist")
    # Before any of the bundle is parsed or run; None for an unsigned bundle the policy allows.
    signed = signing.verify_signature(bdir, signatures or signing.SignaturePolicy())
    manifest = _read_manifest(bdir, signed)
    model, inputs, outputs = check_manifest(manifest, name, version)
    mpath = bdir / model["file"]
    # Bundles are trusted content checked by hash (and by signature, when signed).
    blob = _read_verified(mpath, model["size"], model["sha256"], "it", signed)
    # Before onnxruntime sees anything: a tampered profile refuses the version as a
    # tampered model does.
    drift = load_drift_monitor(bdir, manifest, inputs, outputs, drift_window, signed)
    digest = model["sha256"]
    try:
        session = ort.InferenceSession(
            blob, sess_options=session_options(intra_op_threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise BundleError(f"onnxruntime cannot load {mpath}: {exc}") from None
    del blob
    _check_against_session(session, inputs, outputs)
    run_smoke_tests(session, manifest["smoke_tests"], inputs, outputs)
    return LoadedModel(
        name,
        version,
        digest,
        manifest,
        session,
        inputs,
        outputs,
        time.perf_counter() - t0,
        drift,
        signed.signer if signed else None,
    )
