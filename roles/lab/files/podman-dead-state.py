"""Clear what podman and netavark keep of containers whose processes died unseen.

When every process on a machine is killed without a reboot (how a sandbox or a CI job
ends; an OOM kill of conmon does it to one container), /run survives, and with it
- podman's record that the containers are running: ``state: started`` then leaves them
  dead, and ``podman start`` refuses them ("container state improper");
- netavark's port forwards (iptables nat rules) to their addresses: a container started
  later on the same host port is shadowed by the older forward, and connections to the
  port hang (seen as a lab registry that "does not answer" for minutes).
A reboot clears both, since /run is a tmpfs there. This does the same for just what is
dead, so it is safe beside containers that are alive:
1. every container podman lists as running (or stopping) whose conmon process is gone gets the exit
   file conmon would have written (code 137, killed) in podman's tmp dir: podman then
   records it as exited, and a later start starts it with its file system, volumes and
   address. (``podman stop`` cannot do it: podman 4.3 leaves such a container "stopping"
   for good, waiting for that file);
2. every netavark forward whose destination address no running container holds is
   removed, with the jump to it when no living forward is left on that port.
3. when no container is alive at all (nothing then owns it), the rest of what a reboot
   clears: netavark's iptables chains, aardvark-dns's records (they would answer with dead
   addresses, or listen on a gateway the network no longer has) and its process, podman's
   bridges and the containers' network namespaces.
Only netavark's iptables driver is handled (netavark 1.x as Debian 12 and 13 ship it);
a machine without iptables or without podman has nothing to clear.

Prints a JSON report: {"changed": bool, "stopped": [names], "removed_rules": [rules],
"reset_network": [what was cleared]} (the last only when no container is alive).
With --check it reports what it would do and does nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

KILLED = 137  # 128 + SIGKILL: what a shell reports for a process killed that way
DNAT_CHAIN_PREFIX = "NETAVARK-DN-"
HOSTPORT_DNAT_CHAIN = "NETAVARK-HOSTPORT-DNAT"
_DESTINATION = re.compile(r"--to-destination (?:\[([0-9a-fA-F:]+)\]|([0-9.]+)):\d+")
_DPORT = re.compile(r"--dport (\d+)")
_JUMP = re.compile(r"-j (\S+)")


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# Podman 4.3 leaves a container whose conmon died "stopping" for good after `podman stop`.
_LIVE_STATES = ("running", "paused", "stopping")


def podman_live() -> list[dict]:
    """Every container podman takes for alive (running, paused or stopping)."""
    ids = run("podman", "ps", "--all", "--quiet", "--no-trunc").split()
    containers = json.loads(run("podman", "inspect", "--type", "container", *ids)) if ids else []
    return [c for c in containers if c["State"]["Status"] in _LIVE_STATES]


def podman_tmp_dir() -> Path:
    """Where podman keeps its run-time state (conmon writes exit codes to its exits/)."""
    debug = subprocess.run(["podman", "--log-level=debug", "info"], capture_output=True, text=True, check=True)
    found = re.search(r'Using tmp dir ([^"\s]+)', debug.stderr)
    if not found:
        sys.exit("podman did not say where its tmp dir is (`podman --log-level=debug info`, 'Using tmp dir')")
    return Path(found.group(1))


def is_dead(container: dict, proc: Path = Path("/proc")) -> bool:
    """Podman says running, but its conmon (the process that would record the exit) is gone.

    A killed conmon stays a zombie until PID 1 reaps it (seen here for about 1.5 s): that is
    dead too.
    """
    conmon_pid = container["State"].get("ConmonPid") or 0
    if conmon_pid <= 0:
        return True
    try:
        stat = (proc / str(conmon_pid) / "stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def addresses(container: dict) -> set[str]:
    networks = container.get("NetworkSettings", {}).get("Networks") or {}
    found = set()
    for network in networks.values():
        found.update(a for a in (network.get("IPAddress"), network.get("GlobalIPv6Address")) if a)
    return found


def orphan_forwards(rules: list[str], live_addresses: set[str]) -> list[str]:
    """The `-A` rules of ``iptables -S`` output that forward to no living address.

    In a NETAVARK-DN-<network> chain, a DNAT rule to an address no running container holds
    is orphaned; so is every other rule of that chain on a port left with no living DNAT
    (its mark rules). In NETAVARK-HOSTPORT-DNAT, a jump on such a port to such a chain is
    orphaned too; ports of a chain that still has a living DNAT keep their jump.
    """
    dnat: dict[tuple[str, str], list[str]] = {}  # (chain, port) -> destination addresses
    for rule in rules:
        chain, port, destination = _chain(rule), _port(rule), _destination(rule)
        if chain.startswith(DNAT_CHAIN_PREFIX) and port and destination:
            dnat.setdefault((chain, port), []).append(destination)
    dead_ports = {key for key, dests in dnat.items() if not set(dests) & live_addresses}
    orphaned = []
    for rule in rules:
        chain, port, destination = _chain(rule), _port(rule), _destination(rule)
        if chain.startswith(DNAT_CHAIN_PREFIX):
            if (chain, port) in dead_ports or (destination and destination not in live_addresses):
                orphaned.append(rule)
        elif chain == HOSTPORT_DNAT_CHAIN:
            jump = _JUMP.search(rule)
            if jump and (jump.group(1), port) in dead_ports:
                orphaned.append(rule)
    return orphaned


# What to report of a leftover, and the commands that clear it.
Leftover = tuple[str, list[list[str]]]


def network_leftovers(run_dir: Path = Path("/run")) -> list[Leftover]:
    """What netavark and podman leave of containers once none is alive, in clearing order."""
    rules: list[Leftover] = []
    chains: list[Leftover] = []
    if shutil.which("iptables"):
        for table in ("nat", "filter"):
            for rule in run("iptables", "-t", table, "-S").splitlines():
                if "NETAVARK" not in rule:
                    continue
                what = f"iptables -t {table} {rule}"
                option, name = rule.split()[:2]
                if option == "-A":
                    rules.append((what, [delete_rule(table, rule)]))
                elif option == "-N":
                    chains.append((what, [["iptables", "-t", table, flag, name] for flag in ("-F", "-X")]))
    dns = run_dir / "containers" / "networks" / "aardvark-dns"
    files = [p for p in sorted(dns.glob("*")) if p.is_file() and not p.name.endswith(".lock")]
    namespaces = sorted((run_dir / "netns").glob("netns-*"))
    return [
        *rules,
        *[(str(path), [["rm", "-f", str(path)]]) for path in files],
        *[(str(path), [["ip", "netns", "delete", path.name]]) for path in namespaces],
        *[(f"link {name}", [["ip", "link", "delete", name]]) for name in _podman_bridges()],
        # Chains last: iptables deletes a chain only once no rule jumps to it.
        *chains,
    ]


def delete_rule(table: str, rule: str) -> list[str]:
    """The iptables command that deletes an `-A CHAIN ...` line of ``iptables -S``."""
    return ["iptables", "-t", table, "-D", *shlex.split(rule)[1:]]


def _running(process_name: str) -> bool:
    """Whether a process of that name runs (another podman may be setting a network up)."""
    return subprocess.run(["pgrep", "-x", process_name], capture_output=True, check=False).returncode == 0


def _podman_bridges() -> list[str]:
    links = json.loads(run("ip", "-json", "link", "show", "type", "bridge") or "[]")
    return [link["ifname"] for link in links if re.fullmatch(r"podman\d+", link["ifname"])]


def reset_network(leftovers: list[Leftover]) -> None:
    subprocess.run(["pkill", "-x", "aardvark-dns"], check=False)
    for _what, commands in leftovers:
        for argv in commands:
            subprocess.run(argv, check=True)


def _chain(rule: str) -> str:
    parts = rule.split()
    return parts[1] if len(parts) > 1 and parts[0] == "-A" else ""


def _destination(rule: str) -> str:
    match = _DESTINATION.search(rule)
    return (match.group(1) or match.group(2)) if match else ""


def _port(rule: str) -> str:
    match = _DPORT.search(rule)
    return match.group(1) if match else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report what would be done, do nothing")
    check = parser.parse_args().check
    report: dict = {"changed": False, "stopped": [], "removed_rules": []}
    if not shutil.which("podman"):
        print(json.dumps(report))
        return 0

    dead: list[dict] = []
    alive: list[dict] = []
    for container in podman_live():
        (dead if is_dead(container) else alive).append(container)
    exits = podman_tmp_dir() / "exits" if dead else None
    for container in dead:
        name = container["Name"].lstrip("/")
        if not check:
            exit_file = exits / container["Id"]
            if not exit_file.exists():
                exit_file.write_text(str(KILLED))
            # Tear its network down now, before anything is started: done later, lazily, it
            # can take the network's forwards of containers started meanwhile with it.
            subprocess.run(["podman", "container", "cleanup", container["Id"]], capture_output=True, check=False)
            state = json.loads(run("podman", "inspect", "--type", "container", container["Id"]))[0]["State"]
            if state["Running"] or state["Status"] == "stopping":
                sys.exit(
                    f"podman still lists {name} as {state['Status']} after its exit file was written "
                    f"to {exit_file}: `podman rm -f {name}` removes it (and what its file system held)"
                )
        report["stopped"].append(name)

    if shutil.which("iptables"):
        # A container started after `alive` was read would lose its forwards: the lab role
        # runs this before it starts anything, and the suite's other lanes publish no ports.
        live_addresses = set().union(*(addresses(c) for c in alive))
        rules = run("iptables", "-t", "nat", "-S").splitlines()
        for rule in orphan_forwards(rules, live_addresses):
            if not check:
                subprocess.run(delete_rule("nat", rule), check=True)
            report["removed_rules"].append(rule)

    if not alive and not _running("conmon") and not _running("podman"):
        leftovers = network_leftovers()
        report["reset_network"] = [what for what, _commands in leftovers]
        if leftovers and not check:
            reset_network(leftovers)

    report["changed"] = bool(report["stopped"] or report["removed_rules"] or report.get("reset_network"))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
