"""Rollout benchmark (not a test): edgeml.fleet's gated ring rollout against the playbook a
user would write by hand (bench/baseline_deploy.yml), on lab fleets of 4, 8 and 16 hosts.

For each fleet size, in one run on the same hosts:
- wall time of a good rollout (1.0.0 -> 3.0.0), ours and the baseline's;
- failed requests and wrong answers seen by the known-answer load generator (tests/e2e/fleetops.py)
  during each, and during a failed rollout of
  ours (2.0.0, stopped at the canary);
- seconds from the failed gate to the previous version confirmed serving again, per host
  (reported by model_deployment);
- where the time of each good rollout goes, per phase: the task durations that Ansible's
  ansible.posix.json callback records (bundle verification, bundle transfer, image, unit
  rendering, bookkeeping tasks, report), the model_deployment task split into the gates it
  reports (readiness, smoke, latency, error-rate soak, live window) and the rest of the
  module (verify on the host, stage/load, switch, record, and its SSH round trip), and what
  no task accounts for (ansible-playbook start-up, play and batch changes, includes).

    .venv/bin/python bench/rollout_bench.py [--hosts 4 8 16] [--deploy-playbook playbooks/deploy_model.yml]

It brings up a separate lab (edgeml-bench, its own ports) per size and takes it down after.
Results: Markdown tables on stdout, and Markdown and JSON under bench/results/.
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
from typing import Any

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


def playbook(path: str, *args: str, check: bool = True, timed: bool = False) -> tuple[int, float]:
    """Run a playbook; with timed, its task timings are kept in TIMINGS[-1] (phases())."""
    env = _env()
    if timed:
        env.update(ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_JSON_INDENT="0")
    started = time.monotonic()
    result = subprocess.run(
        [BIN / "ansible-playbook", ROOT / path, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    if timed:
        try:
            doc = json.loads(result.stdout[result.stdout.index("{") :])
        except ValueError:
            doc = {"plays": []}
        TIMINGS.append({"wall": elapsed, "plays": doc.get("plays", [])})
    if check and result.returncode != 0:
        raise SystemExit(f"{path} failed:\n{result.stdout[-3000:]}\n{result.stderr[-1000:]}")
    return result.returncode, elapsed


TIMINGS: list[dict[str, Any]] = []

# Phases in the order the tables list them. A task is put in one by its name and file.
PHASE_ORDER = [
    "reachability and plan",
    "bundle verification (controller)",
    "bundle transfer",
    "image pull/load",
    "host ready: trust, bundle from a registry, image (one call)",
    "unit rendering",
    "module: verify, stage/load, switch, record (+ its SSH round trip)",
    "gate: readiness",
    "gate: smoke",
    "gate: latency",
    "gate: error-rate soak",
    "live window",
    "baseline: container restart",
    "baseline: wait until ready",
    "bookkeeping tasks (set_fact, ping, judging a batch)",
    "report",
    "no task: start-up, play/batch changes, includes",
]
STAGED = " [staging play]"


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp.rstrip("Z")).timestamp()


def task_seconds(task: dict[str, Any]) -> float | None:
    """Wall time of one task of the json callback (first host started to last done), or None
    when it did not end."""
    duration = task["duration"]
    if "end" not in duration:
        return None
    return _seconds(duration["end"]) - _seconds(duration["start"])


# (phase, the task file it is in, or words its name starts with, or words its name holds
# together), first match wins; anything else is bookkeeping.
RULES: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]] = [
    ("report", ("_rollout_report.yml",), ("report", "print the rollout", "write the report"), ()),
    ("baseline: wait until ready", (), ("wait until the model is ready",), ()),
    ("baseline: container restart", (), ("run the model server",), ()),
    (
        "reachability and plan",
        (),
        ("cut the rings", "put ", "ping the host", "describe the host", "remember the scope"),
        (),
    ),
    ("host ready: trust, bundle from a registry, image (one call)", (), (), (("host trusts",),)),
    ("bundle transfer", ("handle_bundle.yml",), (), (("bundle", "copy"), ("bundle", "deliver"))),
    ("bundle verification (controller)", ("handle_verify.yml",), (), (("bundle",), ("manifest",))),
    ("image pull/load", ("handle_image.yml", "handle_image_digest.yml"), (), (("image",), ("archive",))),
    ("unit rendering", (), (), (("render",), ("unit",))),
]


def _classify(task: dict[str, Any]) -> str:
    name = task["name"].lower()
    file = Path(task.get("path", "").split(":")[0]).name
    for phase, files, starts, holds in RULES:
        if file in files or name.startswith(starts) or any(all(w in name for w in words) for words in holds):
            return phase
    return "bookkeeping tasks (set_fact, ping, judging a batch)"


def _gate_seconds(result: dict[str, Any]) -> dict[str, float]:
    """Seconds of each gate, from what model_deployment returns: readiness and live are
    measured; the soak lasts its window; smoke and latency are their requests times the
    latency gate's p50."""
    gates = {gate.get("name"): gate for gate in result.get("gates") or []}
    latency = (gates.get("latency") or {}).get("measured") or {}
    p50 = (latency.get("p50_ms") or 0.0) / 1000.0
    seconds = {
        "gate: readiness": ((gates.get("readiness") or {}).get("measured") or {}).get("seconds_to_ready") or 0.0,
        "gate: smoke": (((gates.get("smoke") or {}).get("measured") or {}).get("vectors") or 0) * p50,
        "gate: latency": (latency.get("requests") or 0) * p50,
        "gate: error-rate soak": ((gates.get("error_rate") or {}).get("threshold") or {}).get("soak_seconds") or 0.0
        if "error_rate" in gates
        else 0.0,
        "live window": ((gates.get("live") or {}).get("measured") or {}).get("seconds") or 0.0,
    }
    return {phase: float(value) for phase, value in seconds.items()}


def phases(timing: dict[str, Any]) -> dict[str, Any]:
    """Seconds per phase of one timed playbook run, summing to its wall time.

    Task durations are wall times (first host started to last host done), so a task that
    runs on the hosts of a batch in parallel counts once per batch. The model_deployment
    task of a batch is split into the gates of its slowest host and the rest."""
    spent = dict.fromkeys(PHASE_ORDER, 0.0)
    batches = 0
    for play in timing["plays"]:
        play_name = play["play"]["name"]
        staged = "stage" in play_name.lower() or "_rollout_stage" in play["play"].get("path", "")
        for entry in play["tasks"]:
            task = entry["task"]
            seconds = task_seconds(task)
            if seconds is None:
                continue
            results = [r for r in entry["hosts"].values() if r.get("action") == "edgeml.fleet.model_deployment"]
            if results:
                batches += 1
                slowest = max((_gate_seconds(r) for r in results), key=lambda g: sum(g.values()))
                for phase, value in slowest.items():
                    spent[phase] += value
                spent["module: verify, stage/load, switch, record (+ its SSH round trip)"] += max(
                    0.0, seconds - sum(slowest.values())
                )
                continue
            phase = _classify(task)
            if staged and phase not in ("report", "reachability and plan"):
                phase += STAGED
                spent.setdefault(phase, 0.0)
            spent[phase] += seconds
    spent["no task: start-up, play/batch changes, includes"] = max(0.0, timing["wall"] - sum(spent.values()))
    return {"wall": timing["wall"], "batches": batches, "seconds": spent}


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


# The rollout playbook timed (--deploy-playbook).
SETTINGS = {"deploy_playbook": "playbooks/deploy_model.yml"}


def deploy(version: str, timed: bool = False, **extra) -> tuple[int, float]:
    settings = {
        "model_version": version,
        "model_deployment_registry_tls_verify": False,
        "model_deployment_gates": GATES,
        **extra,
    }
    return playbook(
        SETTINGS["deploy_playbook"],
        "-i",
        str(BENCH_DIR / "hosts.yml"),
        "-e",
        json.dumps(settings),
        check=False,
        timed=timed,
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


def push_server_image() -> None:
    """The model server image, built if needed, pushed to the bench lab's registry."""
    playbook(
        "playbooks/build_server_image.yml",
        "-e",
        f"model_server_image_push_registry=127.0.0.1:{REGISTRY_PORT}",
        "-e",
        "model_server_image_push_tls_verify=false",
    )


def measure(hosts: int) -> dict:
    playbook("playbooks/lab_up.yml", *lab_settings(hosts))
    push_server_image()
    urls = fleet_urls(hosts)
    row: dict = {"hosts": hosts}
    # Warm up: images pulled and 1.0.0 serving everywhere, outside the timings.
    assert deploy("1.0.0")[0] == 0, "warm-up rollout failed"
    inputs = known_inputs(ROOT / "examples" / "out" / "bundles")
    row["machine_before"] = machine()
    with LoadGenerator(urls, inputs, rolling_out="3.0.0") as traffic:
        code, row["ours_good_s"] = deploy("3.0.0", timed=True)
    row["ours_phases"] = phases(TIMINGS[-1])
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
            "bench/baseline_deploy.yml", *inventory, "-e", "model_version=3.0.0", check=False, timed=True
        )
    row["baseline_phases"] = phases(TIMINGS[-1])
    row["machine_after"] = machine()
    row["baseline_good_ok"], row["baseline_failed_requests"], row["baseline_requests"] = (
        code == 0,
        *bad_and_sent(traffic),
    )
    playbook("playbooks/lab_down.yml", *lab_settings(hosts))
    return row


def machine() -> str:
    """What else loads the machine: load averages and the busiest processes."""
    top = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True, check=False
    ).stdout.split("\n")[:6]
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    return f"load {load}; busiest: " + ", ".join(" ".join(line.split()[::-1]) + "%" for line in top if line.strip())


def phase_table(rows: list[dict]) -> str:
    """Seconds per phase of each good rollout, ours and the baseline's side by side."""
    names = [
        name
        for name in PHASE_ORDER + sorted({n for r in rows for n in r["ours_phases"]["seconds"] if STAGED in n})
        if any(r[f"{who}_phases"]["seconds"].get(name, 0.0) >= 0.05 for r in rows for who in ("ours", "baseline"))
    ]
    head = " | ".join(f"{r['hosts']} hosts: edgeml | baseline" for r in rows)
    lines = [f"| phase (s) | {head} |", "|---|" + "---|---|" * len(rows)]
    for name in names:
        cells = " | ".join(
            f"{r['ours_phases']['seconds'].get(name, 0.0):.1f} | {r['baseline_phases']['seconds'].get(name, 0.0):.1f}"
            for r in rows
        )
        lines.append(f"| {name} | {cells} |")
    walls = " | ".join(f"**{r['ours_good_s']:.1f}** | **{r['baseline_good_s']:.1f}**" for r in rows)
    lines.append(f"| **wall time** | {walls} |")
    batches = " | ".join(f"{r['ours_phases']['batches']} | 1" for r in rows)
    lines.append(f"| batches | {batches} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    lines = [
        "| hosts | edgeml rollout (s) | baseline (s) | ratio | failed or wrong answers: edgeml good / failed rollout | "
        "baseline | failed gate -> previous serving (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['hosts']} | {r['ours_good_s']:.1f}{'' if r['ours_good_ok'] else ' (FAILED)'} | "
            f"{r['baseline_good_s']:.1f}{'' if r['baseline_good_ok'] else ' (FAILED)'} | "
            f"{r['ours_good_s'] / r['baseline_good_s']:.1f}x | {r['ours_good_failed_requests']} of "
            f"{r['ours_good_requests']} / {r['ours_failed_failed_requests']} of {r['ours_failed_requests']} | "
            f"{r['baseline_failed_requests']} of {r['baseline_requests']} | {r['rollback_seconds']} |"
        )
    return "\n".join(lines)


def report(rows: list[dict], stamp: str, deploy_playbook: str) -> str:
    running = "\n".join(
        f"- {r['hosts']} hosts: before: {r['machine_before']}; after: {r['machine_after']}" for r in rows
    )
    return (
        f"# Rollout benchmark ({stamp}, {os.cpu_count()} CPUs, {deploy_playbook})\n\n{table(rows)}\n\n"
        f"## Where the time goes (good rollout 1.0.0 -> 3.0.0)\n\n{phase_table(rows)}\n\n"
        f"## What else ran on the machine\n\n{running}\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument(
        "--deploy-playbook",
        default=SETTINGS["deploy_playbook"],
        help="the rollout playbook to time, relative to the checkout (default: %(default)s)",
    )
    parser.add_argument(
        "--again",
        metavar="RESULTS_JSON",
        help="measure nothing: print the tables of an earlier run again (bench/results/rollout-*.json), "
        "with the phases worked out anew from its -tasks.json",
    )
    args = parser.parse_args()
    SETTINGS["deploy_playbook"] = args.deploy_playbook
    out = ROOT / "bench" / "results"
    if args.again:
        rows = json.loads(Path(args.again).read_text())
        timings = json.loads(Path(args.again.replace(".json", "-tasks.json")).read_text())
        for row, ours, baseline in zip(rows, timings[0::2], timings[1::2]):
            row["ours_phases"], row["baseline_phases"] = phases(ours), phases(baseline)
        stamp = Path(args.again).stem.replace("rollout-", "")
        print(report(rows, stamp, args.deploy_playbook))
        return 0
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    rows = [measure(hosts) for hosts in args.hosts]
    out.mkdir(exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    (out / f"rollout-{stamp}.json").write_text(json.dumps(rows, indent=2))
    # The raw task timings (ansible.posix.json) of every timed run, ours then the baseline's
    # per fleet size, to look into a phase (--again works the phases out from them).
    (out / f"rollout-{stamp}-tasks.json").write_text(json.dumps(TIMINGS))
    text = report(rows, stamp, args.deploy_playbook)
    (out / f"rollout-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
