"""Rollout benchmark (not a test): edgeml.fleet's gated ring rollout against the playbook a
user would write by hand (bench/baseline_deploy.yml), on lab fleets of 4, 8 and 16 hosts.

For each fleet size, in one run on the same hosts:
- wall time of a good rollout (1.0.0 -> 3.0.0), ours and the baseline's;
- failed requests and wrong answers seen by the known-answer load generator (tests/e2e/fleetops.py)
  during each, and during a failed rollout of
  ours (2.0.0, stopped at the canary);
- seconds from the failed gate to the previous version confirmed serving again, per host
  (reported by model_deployment).

    .venv/bin/python bench/rollout_bench.py [--hosts 4 8 16]

It brings up a separate lab (edgeml-bench, its own ports) per size and takes it down after.
Results: a Markdown table on stdout and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "e2e")]

from fleetops import GATES, LoadGenerator, known_inputs  # noqa: E402  (shared with the e2e tests)

BIN = Path(sys.executable).parent
BENCH_DIR = ROOT / ".build" / "bench"
LAB = "edgeml-bench"
REGISTRY_PORT = 5097


def _env() -> dict[str, str]:
    probe = ROOT / "roles" / "lab" / "files" / "podman-conf-probe.sh"
    conf = subprocess.run([probe], check=True, capture_output=True, text=True).stdout.strip()
    return dict(
        os.environ,
        CONTAINERS_CONF=conf,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
    )


def playbook(path: str, *args: str, check: bool = True) -> tuple[int, float]:
    started = time.monotonic()
    result = subprocess.run(
        [BIN / "ansible-playbook", ROOT / path, *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if check and result.returncode != 0:
        raise SystemExit(f"{path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-1000:]}")
    return result.returncode, elapsed


def lab_settings(hosts: int) -> list[str]:
    return [
        "-e",
        json.dumps(
            {
                "lab_name": LAB,
                "lab_host_count": hosts,
                "lab_ssh_port_base": 2500,
                "lab_model_port_base": 19000,
                "lab_registry_port": REGISTRY_PORT,
                "lab_dir": str(BENCH_DIR / "lab"),
                "lab_inventory_path": str(BENCH_DIR / "hosts.yml"),
                "lab_remove_base_image": False,
            }
        ),
    ]


def fleet_urls(hosts: int) -> dict[str, str]:
    return {f"edge-{n}": f"http://127.0.0.1:{19000 + n}" for n in range(1, hosts + 1)}


def latest_report() -> dict:
    return json.loads(sorted((ROOT / ".build" / "reports").glob("rollout-*.json"))[-1].read_text())


def deploy(version: str, **extra) -> tuple[int, float]:
    settings = {
        "model_version": version,
        "model_deployment_registry_tls_verify": False,
        "model_deployment_gates": GATES,
        **extra,
    }
    return playbook(
        "playbooks/deploy_model.yml", "-i", str(BENCH_DIR / "hosts.yml"), "-e", json.dumps(settings), check=False
    )


def remove_our_units(hosts: int) -> None:
    subprocess.run(
        [
            BIN / "ansible",
            "-i",
            BENCH_DIR / "hosts.yml",
            "edge",
            "-m",
            "ansible.builtin.shell",
            "-a",
            "systemctl stop 'edgeml-digits-*.service'; rm -f /etc/containers/systemd/edgeml-digits-*.container "
            "/var/lib/edgeml/state/digits.json; systemctl daemon-reload",
        ],
        cwd=ROOT,
        env=_env(),
        check=True,
        capture_output=True,
    )


def bad_and_sent(traffic: LoadGenerator) -> tuple[int, int]:
    """Requests that failed or got a wrong answer or version, and requests sent, fleet-wide."""
    hosts = traffic.per_host.values()
    return sum(t.bad() for t in hosts), sum(t.sent for t in hosts)


def measure(hosts: int) -> dict:
    playbook("playbooks/lab_up.yml", *lab_settings(hosts))
    playbook(
        "playbooks/build_server_image.yml",
        "-e",
        f"model_server_image_push_registry=127.0.0.1:{REGISTRY_PORT}",
        "-e",
        "model_server_image_push_tls_verify=false",
    )
    urls = fleet_urls(hosts)
    row: dict = {"hosts": hosts}
    # Warm up: images pulled and 1.0.0 serving everywhere, outside the timings.
    assert deploy("1.0.0")[0] == 0, "warm-up rollout failed"
    inputs = known_inputs(ROOT / "examples" / "out" / "bundles")
    with LoadGenerator(urls, inputs, rolling_out="3.0.0") as traffic:
        code, row["ours_good_s"] = deploy("3.0.0")
    row["ours_good_ok"], row["ours_good_failed_requests"], row["ours_good_requests"] = (
        code == 0,
        *bad_and_sent(traffic),
    )
    # 2.0.0 answers wrongly: a request it answered counts as failed here.
    with LoadGenerator(urls, inputs) as traffic:
        code, row["ours_failed_s"] = deploy("2.0.0")
    row["ours_failed_stopped"] = code != 0
    row["ours_failed_failed_requests"], row["ours_failed_requests"] = bad_and_sent(traffic)
    canary = next(r for r in latest_report()["hosts"] if r["outcome"] == "rolled_back")
    row["rollback_seconds"] = canary.get("rollback_seconds")
    # The baseline on the same hosts: our units removed, the plain container in their place.
    remove_our_units(hosts)
    inventory = ["-i", str(BENCH_DIR / "hosts.yml")]
    playbook("bench/baseline_deploy.yml", *inventory, "-e", "model_version=1.0.0")
    with LoadGenerator(urls, inputs, rolling_out="3.0.0") as traffic:
        code, row["baseline_good_s"] = playbook(
            "bench/baseline_deploy.yml", *inventory, "-e", "model_version=3.0.0", check=False
        )
    row["baseline_good_ok"], row["baseline_failed_requests"], row["baseline_requests"] = (
        code == 0,
        *bad_and_sent(traffic),
    )
    playbook("playbooks/lab_down.yml", *lab_settings(hosts))
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| hosts | edgeml rollout (s) | baseline (s) | ratio | failed or wrong answers: edgeml good / failed rollout | "
        "baseline | failed gate -> previous serving (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hosts']} | {r['ours_good_s']:.1f} | {r['baseline_good_s']:.1f} | "
            f"{r['ours_good_s'] / r['baseline_good_s']:.1f}x | {r['ours_good_failed_requests']} of "
            f"{r['ours_good_requests']} / {r['ours_failed_failed_requests']} of {r['ours_failed_requests']} | "
            f"{r['baseline_failed_requests']} of {r['baseline_requests']} | {r['rollback_seconds']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[4, 8, 16])
    args = parser.parse_args()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    rows = [measure(hosts) for hosts in args.hosts]
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    (out / f"rollout-{stamp}.json").write_text(json.dumps(rows, indent=2))
    text = f"# Rollout benchmark ({stamp}, {os.cpu_count()} CPUs)\n\n{table(rows)}\n"
    (out / f"rollout-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
