"""Each bad request gets a 4xx with a JSON {"error": ...} naming the problem; the server survives."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from conftest import ServerProc, infer_body

INFER = "/v2/models/digits/infer"


def _x(shape: list[int], data: object, datatype: str = "FP32", name: str = "X") -> dict[str, object]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}


ROW = [0.5] * 64

CASES = [
    # (id, path, body, expected status, words the error must contain)
    ("malformed-json", INFER, b'{"inputs": [', 400, "not valid JSON"),
    ("json-not-object", INFER, b"[1, 2]", 400, "JSON object"),
    ("no-inputs", INFER, b"{}", 400, "inputs"),
    (
        "unknown-model",
        "/v2/models/nope/infer",
        json.dumps(_x([1, 64], ROW)).encode(),
        404,
        "unknown model 'nope'",
    ),
    (
        "unknown-version",
        "/v2/models/digits/versions/9/infer",
        json.dumps(_x([1, 64], ROW)).encode(),
        404,
        "version '9' is not loaded",
    ),
    ("wrong-input-name", INFER, json.dumps(_x([1, 64], ROW, name="Y")).encode(), 400, "unknown input 'Y'"),
    ("missing-input", INFER, json.dumps({"inputs": []}).encode(), 400, "inputs"),
    ("wrong-shape-rank", INFER, json.dumps(_x([64], ROW)).encode(), 400, "shape [64] does not match"),
    ("wrong-shape-dim", INFER, json.dumps(_x([2, 32], ROW)).encode(), 400, "shape [2, 32] does not match"),
    ("negative-dim", INFER, json.dumps(_x([-1, 64], ROW)).encode(), 400, "non-negative"),
    (
        "wrong-datatype",
        INFER,
        json.dumps(_x([1, 64], [1] * 64, datatype="INT64")).encode(),
        400,
        "datatype 'INT64' does not match",
    ),
    (
        "strings-for-floats",
        INFER,
        json.dumps(_x([1, 64], ["a"] * 64)).encode(),
        400,
        "does not fit datatype FP32",
    ),
    (
        "too-few-elements",
        INFER,
        json.dumps(_x([1, 64], ROW[:10])).encode(),
        400,
        "has 10 elements but shape [1, 64] needs 64",
    ),
    ("too-many-elements", INFER, json.dumps(_x([1, 64], [*ROW, 1.0])).encode(), 400, "has 65 elements"),
    ("ragged-nested", INFER, json.dumps(_x([2, 64], [ROW, ROW[:3]])).encode(), 400, "ragged"),
    (
        "no-data",
        INFER,
        json.dumps({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64]}]}).encode(),
        400,
        "neither 'data'",
    ),
    (
        "duplicate-input",
        INFER,
        json.dumps({"inputs": _x([1, 64], ROW)["inputs"] * 2}).encode(),
        400,
        "given twice",
    ),
    (
        "unknown-output",
        INFER,
        json.dumps({**_x([1, 64], ROW), "outputs": [{"name": "zzz"}]}).encode(),
        400,
        "unknown output 'zzz'",
    ),
    ("deep-nesting", INFER, b"[" * 30000 + b"]" * 30000, 400, "not valid JSON"),
    (
        "deep-nested-data",
        INFER,
        json.dumps(
            _x(
                [1, 64],
                [
                    [
                        [
                            [
                                [
                                    [
                                        [
                                            [
                                                [
                                                    [
                                                        [
                                                            [
                                                                [
                                                                    [
                                                                        [
                                                                            [
                                                                                [
                                                                                    [
                                                                                        [
                                                                                            [
                                                                                                [
                                                                                                    [
                                                                                                        [
                                                                                                            [
                                                                                                                [
                                                                                                                    [
                                                                                                                        [
                                                                                                                            [
                                                                                                                                [
                                                                                                                                    [
                                                                                                                                        [
                                                                                                                                            [
                                                                                                                                                [
                                                                                                                                                    [
                                                                                                                                                        [
                                                                                                                                                            [
                                                                                                                                                                [
                                                                                                                                                                    [
                                                                                                                                                                        [
                                                                                                                                                                            [
                                                                                                                                                                                [
                                                                                                                                                                                    [
                                                                                                                                                                                        [
                                                                                                                                                                                            [
                                                                                                                                                                                                [
                                                                                                                                                                                                    [
                                                                                                                                                                                                        [
                                                                                                                                                                                                            [
                                                                                                                                                                                                                [
                                                                                                                                                                                                                    [
                                                                                                                                                                                                                        [
                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                                    [
                                                                                                                                                                                                                                                                                        [
                                                                                                                                                                                                                                                                                            [
                                                                                                                                                                                                                                                                                                [
                                                                                                                                                                                                                                                                                                    0.5
                                                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                                ]
                                                                                                                                                                                                                            ]
                                                                                                                                                                                                                        ]
                                                                                                                                                                                                                    ]
                                                                                                                                                                                                                ]
                                                                                                                                                                                                            ]
                                                                                                                                                                                                        ]
                                                                                                                                                                                                    ]
                                                                                                                                                                                                ]
                                                                                                                                                                                            ]
                                                                                                                                                                                        ]
                                                                                                                                                                                    ]
                                                                                                                                                                                ]
                                                                                                                                                                            ]
                                                                                                                                                                        ]
                                                                                                                                                                    ]
                                                                                                                                                                ]
                                                                                                                                                            ]
                                                                                                                                                        ]
                                                                                                                                                    ]
                                                                                                                                                ]
                                                                                                                                            ]
                                                                                                                                        ]
                                                                                                                                    ]
                                                                                                                                ]
                                                                                                                            ]
                                                                                                                        ]
                                                                                                                    ]
                                                                                                                ]
                                                                                                            ]
                                                                                                        ]
                                                                                                    ]
                                                                                                ]
                                                                                            ]
                                                                                        ]
                                                                                    ]
                                                                                ]
                                                                            ]
                                                                        ]
                                                                    ]
                                                                ]
                                                            ]
                                                        ]
                                                    ]
                                                ]
                                            ]
                                        ]
                                    ]
                                ]
                            ]
                        ]
                    ]
                ],
            )
        ).encode(),
        400,
        "input 'X'",
    ),
    ("unknown-path", "/v2/whatever", b"", 404, "no such endpoint"),
    ("unknown-model-meta", "/v2/models/nope", None, 404, "unknown model"),
    ("unknown-version-meta", "/v2/models/digits/versions/9", None, 404, "not loaded"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request(server: ServerProc, case: tuple) -> None:
    _id, path, body, status, words = case
    r = server.get(path) if body is None else server.post(path, data=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"]
    assert server.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("GET", INFER, "POST"),
        ("POST", "/v2/models/digits", "GET"),
        ("DELETE", "/v2/health/ready", "GET"),
        ("PUT", "/metrics", "GET"),
    ],
)
def test_wrong_method_is_405(server: ServerProc, method: str, path: str, allow: str) -> None:
    r = server.session.request(method, server.url + path, timeout=10)
    assert r.status_code == 405 and r.headers["allow"] == allow and "not allowed" in r.json()["error"]


def test_body_over_limit_is_413(server: ServerProc) -> None:
    big = b"x" * 70000  # limit is 65536 for this server
    r = server.post(INFER, data=big)
    assert r.status_code == 413 and "exceeds the limit of 65536" in r.json()["error"]


def test_chunked_body_over_limit_is_413(server: ServerProc) -> None:
    def gen():  # no Content-Length: the server must count as it reads
        for _ in range(20):
            yield b"y" * 8192

    r = server.post(INFER, data=gen())
    assert r.status_code == 413 and "exceeds" in r.json()["error"]


@pytest.mark.parametrize(
    "hlen,words", [("abc", "not an integer"), ("999999", "outside the body"), ("-1", "outside the body")]
)
def test_bad_binary_header(server: ServerProc, hlen: str, words: str) -> None:
    r = server.post(INFER, data=b'{"inputs": []}', headers={"Inference-Header-Content-Length": hlen})
    assert r.status_code == 400 and words in r.json()["error"]


def test_binary_size_mismatch(server: ServerProc) -> None:
    raw = np.zeros((1, 64), dtype="<f4").tobytes()
    head = json.dumps(
        {
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 254}}
            ]
        }
    ).encode()
    r = server.post(INFER, data=head + raw[:254], headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "not a multiple" in r.json()["error"]
    head = json.dumps(
        {
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 512}}
            ]
        }
    ).encode()
    r = server.post(INFER, data=head + raw, headers={"Inference-Header-Content-Length": str(len(head))})
    assert r.status_code == 400 and "runs past" in r.json()["error"]
    head = json.dumps(
        {
            "inputs": [
                {"name": "X", "datatype": "FP32", "shape": [1, 64], "parameters": {"binary_data_size": 256}}
            ]
        }
    ).encode()
    r = server.post(
        INFER, data=head + raw + b"extra", headers={"Inference-Header-Content-Length": str(len(head))}
    )
    assert r.status_code == 400 and "not claimed" in r.json()["error"]


def test_garbage_on_the_socket_does_not_kill_the_server(server: ServerProc) -> None:
    for junk in (
        b"\x00\xff garbage\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
        b"POST " + b"/a" * 5000 + b" HTTP/1.1\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(junk)
            try:
                s.recv(4096)
            except OSError:
                pass
    assert server.post(INFER, json=infer_body(np.zeros((1, 64), dtype=np.float32))).status_code == 200


def test_error_metrics_use_fixed_labels(server: ServerProc) -> None:
    for i in range(5):
        server.post(f"/v2/models/junk{i}/infer", data=b"{}")
        server.get(f"/random/{i}")
    text = server.get("/metrics").text
    assert "junk" not in text and "random" not in text
    assert 'edgeml_errors_total{model="_unknown",type="unknown_model"}' in text
