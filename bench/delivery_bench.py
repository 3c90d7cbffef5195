"""Bundle delivery benchmark (not a test): a model of at least 200 MB to 16 lab hosts in two
sites, over SSH (the default: the controller copies the bundle to every host) and through
the site registries (model_deployment_bundle_delivery=registry: pushed once to each site's
registry, pulled by digest by every host from its own), in one run on the same hosts.

For each way: wall time of model_deployment's stage (bundle verified on the controller,
delivered, checked on the host; the server image is already there), and the bytes the control
node sent into the lab network (the tx counter of the lab's bridge on the control node: SSH
sessions and registry pushes go through it, registry-to-host pulls do not). Then the cost of
signing and verifying that model with model-signing, on the controller.

    .venv/bin/python bench/delivery_bench.py [--hosts 16] [--megabytes 200]

It brings up its own lab (edgeml-bench, its own ports, a second registry for site_b) and takes
it down after. Results: a Markdown table on stdout, and Markdown and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from rollout_bench import (
    BENCH_DIR,
    BIN,
    LAB,
    REGISTRY_PORT,
    ROOT,
    TIMINGS,
    _env,
    lab_settings,
    machine,
    playbook,
    push_server_image,
    task_seconds,
)

sys.path.insert(0, str(ROOT / ".collections"))
from ansible_collections.edgeml.fleet.plugins.module_utils import _bundle_signing as signing

MODEL = "big"
VERSION = "1.0.0"
SITE_B_REGISTRY_PORT = REGISTRY_PORT - 1
SIGNING_KEY = ROOT / "examples" / "out" / "keys" / "digits-signing.pem"
TRUSTED_KEY = ROOT / "examples" / "out" / "keys" / "digits-signing.pub"
RESULTS = ROOT / "bench" / "results"


def big_model(megabytes: int) -> bytes:
    """A model whose weights weigh MEGABYTES (random float32: as incompressible as real ones),
    answering a 64-float input with 10 scores and the sum of its big table."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal(megabytes * 1024 * 1024 // 4, dtype=np.float32)
    weights = rng.standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["scores"]),
            helper.make_node("ReduceSum", ["table"], ["table_sum"], keepdims=0),
        ],
        "big",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 64])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("table_sum", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_bundle(megabytes: int) -> tuple[Path, dict]:
    """The bundle (model_bundle, signed with the example key) and what signing and verifying cost."""
    work = BENCH_DIR / "delivery"
    shutil.rmtree(work, ignore_errors=True)  # a version is immutable: a bundle of another size is another model
    work.mkdir(parents=True)
    source = work / "big.onnx"
    source.write_bytes(big_model(megabytes))
    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    sample = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 64)
    session.run(None, {"X": sample})
    args = {
        "src": str(source),
        "dest": str(work / "bundles"),
        "name": MODEL,
        "version": VERSION,
        "sample_inputs": [{"X": sample.tolist()}],
    }
    subprocess.run(
        [BIN / "ansible", "localhost", "-m", "edgeml.fleet.model_bundle", "-a", json.dumps(args)],
        cwd=ROOT,
        env=_env(),
        check=True,
        capture_output=True,
    )
    bundle = work / "bundles" / MODEL / VERSION
    (bundle / signing.SIGNATURE_FILE).unlink(missing_ok=True)
    started = time.monotonic()
    signing.sign_bundle(str(bundle), str(SIGNING_KEY))
    signed = time.monotonic() - started
    started = time.monotonic()
    signing.verify_bundle(str(bundle), [str(TRUSTED_KEY)])
    verified = time.monotonic() - started
    size = sum(path.stat().st_size for path in bundle.iterdir())
    return work / "bundles", {"bundle_bytes": size, "sign_s": signed, "verify_s": verified}


def lab_bridge() -> str:
    return subprocess.run(
        ["podman", "network", "inspect", "--format", "{{.NetworkInterface}}", LAB],
        env=_env(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def tx_bytes(bridge: str) -> int:
    return int(Path(f"/sys/class/net/{bridge}/statistics/tx_bytes").read_text())


def start_site_b_registry() -> None:
    name = f"{LAB}-registry-site-b"
    subprocess.run(["podman", "rm", "--force", "--ignore", name], env=_env(), check=True, capture_output=True)
    subprocess.run(
        ["podman", "run", "--detach", "--name", name, "--network", LAB, "--label", f"io.edgeml.lab={LAB}",
         "--publish", f"127.0.0.1:{SITE_B_REGISTRY_PORT}:5000", f"localhost/{LAB}-registry:latest"],
        env=_env(), check=True, capture_output=True,
    )  # fmt: skip
    time.sleep(3)


def site_registries_inventory() -> Path:
    """Each site's hosts pull from their own registry (as the hosts and as the controller reach it)."""
    registries = {
        "site_a": (f"{LAB}-registry:5000", f"127.0.0.1:{REGISTRY_PORT}"),
        "site_b": (f"{LAB}-registry-site-b:5000", f"127.0.0.1:{SITE_B_REGISTRY_PORT}"),
    }
    groups = {
        site: {"vars": {"edgeml_bundle_registry": inside, "edgeml_bundle_registry_from_controller": outside}}
        for site, (inside, outside) in registries.items()
    }
    overlay = BENCH_DIR / "site-registries.yml"
    overlay.write_text(json.dumps({"all": {"children": groups}}))
    return overlay


def deliver(bundles: Path, delivery: str, overlay: Path, bridge: str) -> dict:
    settings = {
        "model_deployment_name": MODEL,
        "model_deployment_version": VERSION,
        "model_deployment_bundle_src": str(bundles),
        "model_deployment_bundle_delivery": delivery,
        "model_deployment_registry_tls_verify": False,
    }
    inventory = ["-i", str(BENCH_DIR / "hosts.yml"), "-i", str(overlay)]
    before = tx_bytes(bridge)
    code, seconds = playbook(
        "bench/deliver_bundle.yml", *inventory, "-e", json.dumps(settings), check=False, timed=True
    )
    sent = tx_bytes(bridge) - before
    return {"ok": code == 0, "seconds": seconds, "controller_sent_bytes": sent, "slowest_tasks": slowest_tasks()}


def slowest_tasks(count: int = 6) -> list[tuple[str, float]]:
    """The stage's slowest tasks of the last timed run: wall time, first host started to last done."""
    tasks = []
    for play in TIMINGS[-1]["plays"]:
        for entry in play.get("tasks", []):
            seconds = task_seconds(entry["task"])
            if seconds is not None:
                tasks.append((entry["task"]["name"], round(seconds, 1)))
    return sorted(tasks, key=lambda task: -task[1])[:count]


def remove_bundle(hosts: int) -> None:
    subprocess.run(
        [BIN / "ansible", "-i", BENCH_DIR / "hosts.yml", "edge", "-m", "ansible.builtin.file",
         "-a", f"path=/var/lib/edgeml/bundles/{MODEL} state=absent"],
        cwd=ROOT, env=_env(), check=True, capture_output=True,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=16)
    parser.add_argument("--megabytes", type=int, default=200)
    options = parser.parse_args()
    bundles, cost = make_bundle(options.megabytes)
    row: dict = {"hosts": options.hosts, **cost}
    playbook("playbooks/lab_up.yml", *lab_settings(options.hosts))
    try:
        push_server_image()
        start_site_b_registry()
        overlay = site_registries_inventory()
        bridge = lab_bridge()
        # Warm-up, outside the timings: the server image on every host (with a small bundle).
        examples = {
            "model_deployment_name": "digits",
            "model_deployment_version": "1.0.0",
            "model_deployment_bundle_src": str(ROOT / "examples" / "out" / "bundles"),
            "model_deployment_registry_tls_verify": False,
        }
        inventory = ["-i", str(BENCH_DIR / "hosts.yml"), "-i", str(overlay)]
        playbook("bench/deliver_bundle.yml", *inventory, "-e", json.dumps(examples))
        row["machine_before"] = machine()
        for delivery in ("ssh", "registry"):
            remove_bundle(options.hosts)
            row[delivery] = deliver(bundles, delivery, overlay, bridge)
        row["machine_after"] = machine()
    finally:
        playbook("playbooks/lab_down.yml", *lab_settings(options.hosts), check=False)
    report(row)


def report(row: dict) -> None:
    megabytes = row["bundle_bytes"] / 1e6
    lines = [
        f"Bundle delivery, {megabytes:.0f} MB bundle to {row['hosts']} lab hosts in 2 sites "
        f"({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {machine()})",
        "",
        "| delivery | ok | wall time (s) | bytes the controller sent (MB) | bundles' worth |",
        "|---|---|---|---|---|",
    ]
    for delivery in ("ssh", "registry"):
        result = row[delivery]
        sent = result["controller_sent_bytes"]
        lines.append(
            f"| {delivery} | {result['ok']} | {result['seconds']:.1f} | {sent / 1e6:.0f} | "
            f"{sent / row['bundle_bytes']:.1f} |"
        )
    for delivery in ("ssh", "registry"):
        tasks = "; ".join(f"{name} {seconds:.1f} s" for name, seconds in row[delivery].get("slowest_tasks", []))
        lines.append(f"\nSlowest tasks, {delivery}: {tasks}.")
    lines += [
        "",
        f"Signing the bundle (model-signing, the example P-256 key): {row['sign_s']:.2f} s; "
        f"verifying it: {row['verify_s']:.2f} s.",
        f"Machine before: {row['machine_before']}; after: {row['machine_after']}.",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = f"{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%S}"
    (RESULTS / f"delivery-{stamp}.md").write_text(text + "\n")
    (RESULTS / f"delivery-{stamp}.json").write_text(json.dumps(row, indent=2) + "\n")


if __name__ == "__main__":
    main()
