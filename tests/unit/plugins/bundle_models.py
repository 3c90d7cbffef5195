# Copyright: edgeml.fleet contributors
# Apache License 2.0 (see LICENSE or https://www.apache.org/licenses/LICENSE-2.0)
"""Real tiny ONNX models and helpers for the model_bundle unit tests.

Models are built once per test session (cached as bytes) and written to tmp_path by
the tests: a scikit-learn digits classifier converted with skl2onnx, and hand-built
onnx.helper graphs for the edge cases (static and symbolic dims, several inputs,
strings, a graph onnxruntime cannot load).
"""

from __future__ import annotations

import functools
import json
import typing as t
from unittest import mock

import numpy as np
import onnx
from ansible.module_utils import _internal
from ansible.module_utils.testing import patch_module_args
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

OPSET = [helper.make_opsetid("", 17)]


@functools.lru_cache(maxsize=None)
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    return tuple(
        train_test_split(
            digits.data.astype(np.float32), digits.target.astype(np.int64), test_size=0.25, random_state=0
        )
    )


@functools.lru_cache(maxsize=None)
def digits_model(zipmap: bool = False, permuted: bool = False) -> bytes:
    """Logistic-regression digits classifier.

    X FP32 [-1, 64] -> label INT64 [-1], probabilities FP32 [-1, 10].
    """
    x_train, _x_test, y_train, _y_test = digits_split()
    if permuted:
        y_train = (y_train + 1) % 10
    model = LogisticRegression(max_iter=300).fit(x_train / 16.0, y_train)
    # Fold the /16 scaling into the weights so the model takes raw pixels.
    model.coef_ = model.coef_ / 16.0
    proto = to_onnx(
        model,
        x_train[:1],
        target_opset={"": 17, "ai.onnx.ml": 3},
        options={id(model): {"zipmap": zipmap}},
    )
    rename = {proto.graph.input[0].name: "X"}
    if not zipmap:
        rename.update(output_label="label", output_probability="probabilities")
    for value in list(proto.graph.input) + list(proto.graph.output):
        value.name = rename.get(value.name, value.name)
    for node in proto.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]
    return proto.SerializeToString()


def digits_samples(count: int = 4) -> tuple[list[t.Any], list[t.Any]]:
    """(sample_inputs, expected_outputs) of held-out digits, mapping form, batch 1."""
    _x_train, x_test, _y_train, y_test = digits_split()
    inputs = [{"X": [row.tolist()]} for row in x_test[:count]]
    expected = [{"label": [int(label)]} for label in y_test[:count]]
    return inputs, expected


def _model(
    nodes: list[t.Any], inputs: list[t.Any], outputs: list[t.Any], initializers: list[t.Any] | None = None
) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    proto = helper.make_model(graph, opset_imports=OPSET, producer_name="edgeml-tests", producer_version="1")
    proto.ir_version = 8
    return proto.SerializeToString()


@functools.lru_cache(maxsize=None)
def add_one_model(dims: tuple[t.Any, ...] = ("batch", 3), elem_type: int = TensorProto.FLOAT) -> bytes:
    """y = x + 1 with the given input dims (ints static, strings symbolic, None unknown)."""
    one = numpy_helper.from_array(np.array(1, dtype=helper.tensor_dtype_to_np_dtype(elem_type)), "one")
    return _model(
        [helper.make_node("Add", ["x", "one"], ["y"])],
        [helper.make_tensor_value_info("x", elem_type, list(dims))],
        [helper.make_tensor_value_info("y", elem_type, list(dims))],
        [one],
    )


@functools.lru_cache(maxsize=None)
def two_input_model() -> bytes:
    """a FP32 [-1, 2], b INT64 [2] -> s = a + Cast(b) FP32 [-1, 2], n = Identity(b) INT64 [2]."""
    return _model(
        [
            helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "bf"], ["s"]),
            helper.make_node("Identity", ["b"], ["n"]),
        ],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [2]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 2]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [2]),
        ],
    )


@functools.lru_cache(maxsize=None)
def string_model() -> bytes:
    """BYTES and BOOL in, BYTES and BOOL out: t = Identity(s), e = Not(f)."""
    return _model(
        [helper.make_node("Identity", ["s"], ["t"]), helper.make_node("Not", ["f"], ["e"])],
        [
            helper.make_tensor_value_info("s", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("f", TensorProto.BOOL, [None]),
        ],
        [
            helper.make_tensor_value_info("t", TensorProto.STRING, [None]),
            helper.make_tensor_value_info("e", TensorProto.BOOL, [None]),
        ],
    )


@functools.lru_cache(maxsize=None)
def broken_model() -> bytes:
    """Valid ONNX protobuf that onnxruntime refuses: a node reads a tensor nobody produces."""
    return _model(
        [helper.make_node("Add", ["x", "nowhere"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )


@functools.lru_cache(maxsize=None)
def unknown_op_model() -> bytes:
    """Valid ONNX protobuf with an operator no runtime knows."""
    return _model(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )


@functools.lru_cache(maxsize=None)
def external_data_model() -> bytes:
    proto = onnx.ModelProto()
    proto.ParseFromString(add_one_model())
    tensor = proto.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin"
    return proto.SerializeToString()


def write(path: t.Any, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def tree(root: t.Any) -> dict[str, bytes]:
    """All files under root, relative path -> bytes (to prove nothing else was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_module(main: t.Callable[[], None], args: dict[str, t.Any], capsys: t.Any) -> dict[str, t.Any]:
    """Run a module's main() through AnsibleModule machinery; return its JSON result.

    Once any test imports controller code, ansible-core routes module warnings to the
    controller's Display; pretend to be a target so they land in the result as they do
    for a real module run.
    """
    with patch_module_args(args), mock.patch("sys.argv", ["model_bundle"]), mock.patch.object(
        _internal, "is_controller", False
    ):
        try:
            main()
        except SystemExit:
            pass
        else:  # pragma: no cover
            raise AssertionError("module did not exit")
    return json.loads(capsys.readouterr().out)


def write_key(directory: t.Any, name: str, password: bytes | None = None) -> tuple[t.Any, t.Any, t.Any]:
    """An elliptic-curve P-256 signing key: (private PEM path, public PEM path, key)."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415

    key = ec.generate_private_key(ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    private = directory / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))
    public = directory / f"{name}.pub"
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public, key


def issue_certificate(subject: str, key: t.Any, issuer: tuple[t.Any, t.Any] | None, extensions: list[t.Any]) -> t.Any:
    """An X.509 certificate for SUBJECT (a common name) and KEY, valid from 5 minutes ago for a
    day, signed by ISSUER (its certificate and key), or by KEY itself when ISSUER is None (a root
    CA), with EXTENSIONS (BasicConstraints and KeyUsage critical, the others not)."""
    import datetime  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    for extension in extensions:
        critical = isinstance(extension, (x509.BasicConstraints, x509.KeyUsage))
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def write_certificates(directory: t.Any) -> dict[str, t.Any]:
    """Two CAs (fleet-ca.crt, other-ca.crt) and a code-signing leaf certificate issued by
    fleet-ca (signer.crt, its key signer.pem): the paths, by name."""
    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: PLC0415

    ca_extensions = [
        x509.BasicConstraints(ca=True, path_length=None),
        x509.KeyUsage(False, False, False, False, False, True, True, False, False),
    ]
    pem = serialization.Encoding.PEM
    paths: dict[str, t.Any] = {}
    authorities = {}
    for name in ("fleet-ca", "other-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        authorities[name] = (issue_certificate(name, key, None, ca_extensions), key)
        paths[name] = directory / f"{name}.crt"
        paths[name].write_bytes(authorities[name][0].public_bytes(pem))
    private, public, key = write_key(directory, "signer")
    leaf_extensions = [
        x509.BasicConstraints(ca=False, path_length=None),
        x509.KeyUsage(True, False, False, False, False, False, False, False, False),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
    ]
    paths["signer"] = directory / "signer.crt"
    paths["signer"].write_bytes(
        issue_certificate("release-signer", key, authorities["fleet-ca"], leaf_extensions).public_bytes(pem)
    )
    paths["signer_key"], paths["signer_public_key"] = private, public
    return paths
