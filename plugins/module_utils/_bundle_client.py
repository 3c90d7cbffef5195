# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Client layer of model_bundle: the file system and onnxruntime.

``BundleStore`` reads and (atomically) writes bundle directories. ``OnnxModel``
parses a model with onnx, loads it with onnxruntime and runs tensors through it.
onnx, onnxruntime and numpy are optional at import time; callers check
``LIB_ERRORS`` and report them with ``missing_required_lib``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import traceback
import typing as t

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_format import (
    DATATYPES,
    MANIFEST_FILE,
    MODEL_FILE,
    ORT_TO_DATATYPE,
    PROFILE_FILE,
)
from ansible_collections.edgeml.fleet.plugins.module_utils._common import EdgeMLError

try:
    import numpy as np
except ImportError:  # pragma: no cover - exercised only without numpy
    np = None
    NUMPY_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    NUMPY_IMPORT_ERROR = None

try:
    import onnx
except ImportError:  # pragma: no cover
    onnx = None
    ONNX_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    ONNX_IMPORT_ERROR = None

try:
    import onnxruntime as ort
except ImportError:  # pragma: no cover
    ort = None
    ORT_IMPORT_ERROR: str | None = traceback.format_exc()
else:
    ORT_IMPORT_ERROR = None

# (pip name, import error) for EdgeMLModule.require_libs
LIB_ERRORS = (
    ("numpy", NUMPY_IMPORT_ERROR),
    ("onnx", ONNX_IMPORT_ERROR),
    ("onnxruntime", ORT_IMPORT_ERROR),
)

DIR_MODE = 0o755
FILE_MODE = 0o644

NUMPY_DTYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: str, what: str, hint: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise EdgeMLError(f"{what} {path} does not exist.", hint) from None
    except IsADirectoryError:
        raise EdgeMLError(f"{what} {path} is a directory, not a file.", hint) from None
    except OSError as exc:
        raise EdgeMLError(f"Cannot read {what} {path}: {exc.strerror or exc}.", hint) from None


# ---------------------------------------------------------------------------
# Bundle directories


class ExistingBundle:
    """What is on disk at BUNDLE_ROOT/NAME/VERSION."""

    def __init__(
        self,
        path: str,
        state: str,
        model: bytes | None = None,
        manifest: bytes | None = None,
        files: dict[str, bytes] | None = None,
    ) -> None:
        self.path = path
        self.state = state  # absent | empty | complete | incomplete
        self.model = model
        self.manifest = manifest
        # Other files of the bundle by name (the reference profile).
        self.files = files or {}


class BundleStore:
    """File I/O for bundle directories under a bundle root."""

    def __init__(self, root: str) -> None:
        self.root = root

    def bundle_path(self, name: str, version: str) -> str:
        return os.path.join(self.root, name, version)

    def read(self, name: str, version: str) -> ExistingBundle:
        path = self.bundle_path(name, version)
        if not os.path.lexists(path):
            return ExistingBundle(path, "absent")
        if not os.path.isdir(path):
            raise EdgeMLError(
                f"{path} exists and is not a directory.",
                "Remove it or choose another dest, name or version.",
            )
        try:
            entries = os.listdir(path)
        except OSError as exc:
            raise EdgeMLError(
                f"Cannot list {path}: {exc.strerror or exc}.", "Check its permissions."
            ) from None
        if not entries:
            return ExistingBundle(path, "empty")
        model_path = os.path.join(path, MODEL_FILE)
        manifest_path = os.path.join(path, MANIFEST_FILE)
        if not (os.path.isfile(model_path) and os.path.isfile(manifest_path)):
            return ExistingBundle(path, "incomplete")
        hint = "Check the permissions of the bundle directory."
        profile_path = os.path.join(path, PROFILE_FILE)
        profile = read_file(profile_path, "Bundle profile", hint) if os.path.isfile(profile_path) else None
        return ExistingBundle(
            path,
            "complete",
            model=read_file(model_path, "Bundle model", hint),
            manifest=read_file(manifest_path, "Bundle manifest", hint),
            files={PROFILE_FILE: profile} if profile is not None else {},
        )

    def write(
        self,
        name: str,
        version: str,
        model: bytes,
        manifest: bytes,
        files: dict[str, bytes] | None = None,
        *,
        finalize: t.Callable[[str], t.Any] | None = None,
    ) -> None:
        """Write a complete bundle atomically: a temporary sibling directory, renamed.

        The bundle appears with both files or not at all. An existing *empty*
        directory is replaced; anything else at the path makes the rename fail.
        FINALIZE(directory) runs on the complete temporary directory before the rename
        (the signature: a bundle never appears unsigned when it is to be signed).
        """
        parent = os.path.join(self.root, name)
        final = os.path.join(parent, version)
        try:
            os.makedirs(parent, mode=DIR_MODE, exist_ok=True)
        except OSError as exc:
            raise EdgeMLError(
                f"Cannot create the bundle directory {parent}: {exc.strerror or exc}.",
                "Check that dest is writable by the user running the task.",
            ) from None
        tmpdir = None
        try:
            tmpdir = tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=parent)
            for file_name, data in ((MODEL_FILE, model), *sorted((files or {}).items()), (MANIFEST_FILE, manifest)):
                file_path = os.path.join(tmpdir, file_name)
                with open(file_path, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(file_path, FILE_MODE)
            if finalize is not None:
                finalize(tmpdir)
            os.chmod(tmpdir, DIR_MODE)
            os.rename(tmpdir, final)
            tmpdir = None
            _fsync_dir(parent)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise EdgeMLError(
                    f"{final} appeared while the bundle was being written (another run?).",
                    "Run the task again; it compares the bundle that is there now.",
                ) from None
            raise EdgeMLError(
                f"Cannot write the bundle {final}: {exc.strerror or exc}.",
                "Check free space and that dest is writable by the user running the task.",
            ) from None
        finally:
            if tmpdir is not None:
                shutil.rmtree(tmpdir, ignore_errors=True)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# ONNX models


class OnnxModel:
    """An ONNX model parsed with onnx and loaded into an onnxruntime session."""

    def __init__(self, data: bytes, src: str, intra_op_threads: int = 1) -> None:
        self.data = data
        self.src = src
        self.proto = self._parse(data, src)
        self.session = self._load(data, src, intra_op_threads)

    @staticmethod
    def _parse(data: bytes, src: str) -> t.Any:
        not_onnx = EdgeMLError(
            f"{src} is not an ONNX model (it does not parse as an ONNX ModelProto).",
            "Point src at the .onnx file your converter wrote (for example skl2onnx's "
            "to_onnx(...).SerializeToString() or torch.onnx.export), not a pickle, "
            "a text file or a model directory.",
        )
        if not data:
            raise not_onnx
        proto = onnx.ModelProto()
        try:
            proto.ParseFromString(data)
        except Exception:
            raise not_onnx from None
        # Protobuf parses many random byte strings; a real model has these.
        if proto.ir_version <= 0 or not proto.opset_import or not proto.HasField("graph"):
            raise not_onnx
        for tensor in proto.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise EdgeMLError(
                    f"{src} keeps tensor {tensor.name!r} in an external data file; a bundle holds "
                    "one model file.",
                    "Save the model with all tensors inside, e.g. onnx.save_model(model, path, "
                    "save_as_external_data=False) (models must stay under 2 GB).",
                )
        return proto

    @staticmethod
    def _load(data: bytes, src: str, intra_op_threads: int) -> t.Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EdgeMLError(
                f"onnxruntime {ort.__version__} cannot load {src}: {str(exc).strip()}",
                "The file is ONNX but its graph is invalid or uses operators/opsets this "
                "onnxruntime does not support; check it with onnx.checker.check_model(..., "
                "full_check=True) and re-export it (for example with a lower target opset).",
            ) from None

    # -- metadata ----------------------------------------------------------

    def opsets(self) -> dict[str, int]:
        result: dict[str, int] = {}
        for opset in self.proto.opset_import:
            domain = "" if opset.domain in ("", "ai.onnx") else opset.domain
            result[domain] = int(opset.version)
        return result

    def producer(self) -> str:
        return (f"{self.proto.producer_name} {self.proto.producer_version}").strip()

    def ir_version(self) -> int:
        return int(self.proto.ir_version)

    def signature(self) -> dict[str, list[dict[str, t.Any]]]:
        return {
            "inputs": [self._describe(arg, "input") for arg in self.session.get_inputs()],
            "outputs": [self._describe(arg, "output") for arg in self.session.get_outputs()],
        }

    def _describe(self, arg: t.Any, kind: str) -> dict[str, t.Any]:
        datatype = ORT_TO_DATATYPE.get(arg.type)
        if datatype is None:
            hint = "Bundles carry tensors of the Open Inference Protocol datatypes ({}).".format(
                ", ".join(sorted(DATATYPES))
            )
            if arg.type.startswith(("seq(", "map(")):
                hint += (
                    " For scikit-learn classifiers convert with options={'zipmap': False} "
                    "so probabilities are a tensor, not a sequence of maps."
                )
            raise EdgeMLError(
                f"Model {kind} {arg.name!r} has type {arg.type}, which a bundle cannot carry.", hint
            )
        shape = arg.shape if isinstance(arg.shape, (list, tuple)) else []
        return {
            "name": arg.name,
            "datatype": datatype,
            "shape": [dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape],
        }

    # -- inference -----------------------------------------------------------

    def run_arrays(self, feeds: dict[str, t.Any], chunk: int, where: str) -> dict[str, t.Any]:
        """Run arrays batched along dimension 0, CHUNK rows per call; every output, concatenated."""
        names = [arg.name for arg in self.session.get_outputs()]
        rows = next(iter(feeds.values())).shape[0]
        parts: list[list[t.Any]] = [[] for _name in names]
        for start in range(0, rows, chunk):
            batch = {name: array[start : start + chunk] for name, array in feeds.items()}
            try:
                results = self.session.run(names, batch)
            except Exception as exc:
                raise EdgeMLError(
                    f"onnxruntime failed to run {self.src} on {where} (rows {start}..): {str(exc).strip()}",
                    "Check that the reference rows are valid inputs and that dimension 0 of every input "
                    "is the batch (a model with a fixed batch of 1 needs chunks of 1 row).",
                ) from None
            for index, value in enumerate(results):
                parts[index].append(np.asarray(value))
        return {name: np.concatenate(part) for name, part in zip(names, parts)}

    def run(self, tensors: list[dict[str, t.Any]], where: str) -> list[dict[str, t.Any]]:
        """Run input tensors (OIP JSON form); return every output in signature order."""
        feeds = {}
        for tensor in tensors:
            array = np.array(tensor["data"], dtype=NUMPY_DTYPES[tensor["datatype"]])
            feeds[tensor["name"]] = array.reshape(tensor["shape"])
        try:
            results = self.session.run(None, feeds)
        except Exception as exc:
            raise EdgeMLError(
                f"onnxruntime failed to run {self.src} on {where}: {str(exc).strip()}",
                "Check that the sample inputs are valid for this model (shapes the graph can take).",
            ) from None
        outputs = []
        for arg, value in zip(self.session.get_outputs(), results):
            datatype = ORT_TO_DATATYPE[arg.type]
            array = np.asarray(value)
            if datatype == "BYTES":
                data = [
                    v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                    for v in array.reshape(-1)
                ]
            else:
                data = array.reshape(-1).tolist()
            outputs.append({"name": arg.name, "datatype": datatype, "shape": list(array.shape), "data": data})
        return outputs
