"""No memory growth over a long run of bad and good requests."""

from __future__ import annotations

import json

import numpy as np

from conftest import infer_body

ROUNDS = 6
PER_ROUND = 400


def test_rss_bounded_over_many_requests(make_server, bundle_root, rows: np.ndarray) -> None:
    s = make_server(bundle_root)
    assert s.wait_ready()
    good = json.dumps(infer_body(rows[:8])).encode()
    bads = [
        b"{broken",
        json.dumps(
            {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 3}]}
        ).encode(),
        json.dumps(
            {"inputs": [{"name": "nope", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}
        ).encode(),
    ]

    def round_() -> None:
        for i in range(PER_ROUND):
            if i % 2:
                assert s.post("/v2/models/digits/infer", data=good).status_code == 200
            else:
                assert s.post("/v2/models/digits/infer", data=bads[i % 3]).status_code == 400
                s.get(f"/v2/models/m{i}")  # unknown names must not create series
            if i % 50 == 0:
                s.get("/metrics")

    round_()  # warm-up: allocator pools, label children, caches
    base = s.rss_kib()
    for _ in range(ROUNDS - 1):
        round_()
    grown = s.rss_kib() - base
    # 2000 more requests; a per-request leak of even 5 KiB would show as 10 MiB.
    assert grown < 8 * 1024, f"RSS grew by {grown} KiB"
