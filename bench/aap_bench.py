"""Automation Platform at fleet scale (not a test): what forks, job slicing and the execution
environment cost or buy, measured with the jobs run as Automation Platform runs them
(ansible-runner, process isolation in the lab EE; tests/aap/aapjobs.py).

On a lab of its own (edgeml-aapbench, --hosts hosts), after a warm-up provision job:
- the EE's own cost: the fleet status job of the canary ring (one host), with and without
  process isolation;
- the provision job and the fleet status job over every host, each as one job with forks
  5 (Ansible's default, and AWX's when a template sets none) and with forks = hosts, and as
  N slices (AWX's job slicing: slice k of N holds hosts k, k+N, ...; the slices run at
  once, as on N execution nodes; here they share the one machine).

    .venv/bin/python bench/aap_bench.py [--hosts 12] [--slices 4]

Results: a Markdown table on stdout and under bench/results/. The lab is taken down after.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "aap")]

from aapjobs import JobRunner, controller_config, job_inventory  # noqa: E402  (shared with tests/aap)
from labtools import run_playbook  # noqa: E402

BENCH_DIR = ROOT / ".build" / "aap-bench"
LAB = "edgeml-aapbench"


def lab_settings(hosts: int) -> dict:
    return {
        "lab_name": LAB,
        "lab_host_count": hosts,
        "lab_ssh_port_base": 2600,
        "lab_model_port_base": 19100,
        "lab_registry_port": 5098,
        "lab_dir": str(BENCH_DIR / "lab"),
        "lab_inventory_path": str(BENCH_DIR / "lab-hosts.yml"),
        "lab_remove_base_image": False,
    }


def timed(run) -> tuple[float, bool]:
    started = time.monotonic()
    ok = run()
    return time.monotonic() - started, ok


def measure(hosts: int, slices: int) -> list[dict]:
    run_playbook("lab_up.yml", "-e", json.dumps(lab_settings(hosts)))
    run_playbook("build_ee.yml")
    (BENCH_DIR / "bundles").mkdir(parents=True, exist_ok=True)
    runner = JobRunner(
        work_dir=BENCH_DIR / "jobs",
        inventory=job_inventory(BENCH_DIR / "lab-hosts.yml", BENCH_DIR / "job-hosts.yml", latency_budget_ms=5000),
        ssh_key=BENCH_DIR / "lab" / "ssh" / "id_ed25519",
        bundles_dir=BENCH_DIR / "bundles",
    )
    config = controller_config()
    template = {t["name"]: t for t in config["controller_templates"]}
    provision, status = template["edgeml - provision edge hosts"], template["edgeml - fleet status"]
    names = [f"edge-{n}" for n in range(1, hosts + 1)]

    def job(tmpl, extra=None, **options) -> bool:
        return runner.run(tmpl, extra or {}, **options).status == "successful"

    assert job(provision, forks=hosts), "the warm-up provision job failed"
    rows = []
    # The EE's own cost: a job that touches one host.
    ee_seconds, _ = timed(lambda: job(status, {"status_hosts": "canary"}))
    isolation = runner.container_options
    runner.container_options = lambda: {}
    bare_seconds, _ = timed(lambda: job(status, {"status_hosts": "canary"}))
    runner.container_options = isolation
    rows.append(
        {
            "job": "fleet_status.yml, 1 host",
            "variant": "in the EE / without process isolation",
            "seconds": f"{ee_seconds:.1f} / {bare_seconds:.1f}",
            "ok": True,
        }
    )
    for tmpl in (provision, status):
        for forks in (5, hosts):
            seconds, ok = timed(lambda tmpl=tmpl, forks=forks: job(tmpl, forks=forks))
            rows.append(
                {"job": tmpl["playbook"], "variant": f"1 job, forks {forks}", "seconds": f"{seconds:.1f}", "ok": ok}
            )

        def sliced(tmpl=tmpl) -> bool:
            with concurrent.futures.ThreadPoolExecutor(slices) as pool:
                parts = [",".join(names[k::slices]) for k in range(slices)]
                return all(pool.map(lambda limit: job(tmpl, limit=limit, forks=hosts), parts))

        seconds, ok = timed(sliced)
        rows.append(
            {"job": tmpl["playbook"], "variant": f"{slices} slices at once", "seconds": f"{seconds:.1f}", "ok": ok}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=12)
    parser.add_argument("--slices", type=int, default=4)
    args = parser.parse_args()
    try:
        rows = measure(args.hosts, args.slices)
    finally:
        run_playbook("lab_down.yml", "-e", json.dumps(lab_settings(args.hosts)), check=False)
    today = datetime.date.today().isoformat()
    lines = [
        f"AAP jobs on {args.hosts} lab hosts, {os.cpu_count()} CPUs, {today} (bench/aap_bench.py)",
        "",
        "| job | variant | seconds | succeeded |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['job']} | {r['variant']} | {r['seconds']} | {r['ok']} |" for r in rows]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"aap-{today}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
