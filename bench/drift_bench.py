"""What drift monitoring costs a request: edgeml-server with and without it, same bundle.

The bundle is a scikit-learn digits MLP(64) packaged by the collection's own model_bundle
service with a reference profile of 450 held-out images (the example pipeline's shape).
The server runs twice: --drift-window 1000 (the default: every answered row binned and
compared with the profile) and --drift-window 0 (off). Load: wrk at c=1 and c=8, batch 1,
median of several runs (bench/server_bench.py's loop, answers checked first); a /metrics
scrape per second during the drift runs, so the exported PSI is computed as Prometheus
would make the server compute it.

    .venv/bin/python bench/drift_bench.py [--seconds 5] [--repeats 5]

Target (issue 13): the p50 at c=1 with drift at most 10% above the p50 without.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
from ansible.plugins.loader import init_plugin_loader

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
init_plugin_loader([str(ROOT / ".collections")])  # before any ansible_collections import

from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_client import BundleStore  # noqa: E402
from ansible_collections.edgeml.fleet.plugins.module_utils._bundle_service import (  # noqa: E402
    BundleRequest,
    BundleService,
)
from server_bench import Load, Target, bw, free_port, measure  # noqa: E402


def make_bundle(work: Path) -> tuple[Path, np.ndarray]:
    x = bw.digits_data()[0]
    src = work / "digits.onnx"
    src.write_bytes(bw.make_mlp_onnx(seed=0, hidden=64, max_iter=200))
    reference = work / "validation.npz"
    np.savez(reference, X=x[-450:])
    request = BundleRequest(
        src=str(src),
        dest=str(work / "bundles"),
        name="digits",
        version="1",
        sample_inputs=[{"X": [x[0].tolist()]}],
        reference_inputs_file=str(reference),
    )
    service = BundleService(BundleStore(request.dest))
    desired = service.desired(request)
    service.apply(request, desired, service.plan(request, desired), check_mode=False)
    (work / "bundles" / "digits" / "current").write_text("1\n")
    return work / "bundles", x


def target(bundles: Path, window: int) -> Target:
    port = free_port()
    cmd = [sys.executable, "-m", "edgeml_server", "--bundles", str(bundles), "--model", "digits"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--admin-port", "0", "--log-level", "warning"]
    cmd += ["--drift-window", str(window)]
    name = f"drift window {window}" if window else "drift off"
    return Target(name, cmd, port, env={"PYTHONPATH": str(ROOT / "server")})


class Scraper:
    """GET /metrics once a second while a measurement runs; keeps the last PSI seen."""

    def __init__(self, url: str) -> None:
        self.url = url + "/metrics"
        self.stop = threading.Event()
        self.psi: str | None = None
        self.scrapes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                text = requests.get(self.url, timeout=5).text
            except requests.RequestException:
                continue
            self.scrapes += 1
            for line in text.splitlines():
                if line.startswith("edgeml_drift_psi{"):
                    self.psi = line.rsplit(" ", 1)[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    a = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is missing: apt-get install -y wrk", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="edgeml-drift-bench-"))
    bundles, x = make_bundle(work)
    row = x[:1].astype(np.float32)
    body = json.dumps(
        {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 64], "data": row.reshape(-1).tolist()}]}
    ).encode()
    (work / "body.json").write_bytes(body)
    import onnxruntime as ort  # noqa: PLC0415 - the label every answer is checked against

    model = (bundles / "digits" / "1" / "model.onnx").read_bytes()
    want = int(ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(["label"], {"X": row})[0][0])
    load = Load(body, work / "body.json", want, [1, 8], a.seconds, 1.0, a.repeats)
    rows = []
    for window in (0, 1000, 0, 1000):  # interleaved: drift of the machine hits both alike
        t = target(bundles, window)
        scraper = Scraper(t.url)
        scraper.thread.start()
        res = measure(t, load)
        scraper.stop.set()
        res.update(window=window, scrapes=scraper.scrapes, last_psi=scraper.psi)
        rows.append(res)
        print(f"  {t.name}: c1 p50 {res.get('c1', {}).get('p50_us')} us, psi {scraper.psi}", flush=True)
    off = [r["c1"]["p50_us"] for r in rows if r["window"] == 0]
    on = [r["c1"]["p50_us"] for r in rows if r["window"]]
    p50_off, p50_on = float(np.median(off)), float(np.median(on))
    lines = [
        f"# Drift monitoring cost ({time.strftime('%Y-%m-%d')}, {len(rows)} server runs, wrk -t1, batch 1)",
        "",
        "| server | c=1 p50 us | c=1 p99 us | c=1 req/s | c=8 p50 us | c=8 req/s | scrapes | last PSI |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c1, c8 = r.get("c1", {}), r.get("c8", {})
        lines.append(
            f"| {r['name']} | {c1.get('p50_us')} | {c1.get('p99_us')} | {c1.get('rps', 0):.0f} | "
            f"{c8.get('p50_us')} | {c8.get('rps', 0):.0f} | {r['scrapes']} | {r['last_psi']} |"
        )
    lines += [
        "",
        f"c=1 p50: {p50_off:.0f} us without drift, {p50_on:.0f} us with: "
        f"{(p50_on / p50_off - 1) * 100:+.1f}% (target: at most +10%)",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (a.out / f"drift-{stamp}.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    (a.out / f"drift-{stamp}.md").write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
