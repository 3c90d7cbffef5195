#!/usr/bin/env bash
# Print the path of the project's containers.conf when this control node needs it,
# and nothing when podman's defaults work. Callers export the result as
# CONTAINERS_CONF (an empty value leaves podman on its defaults).
#
# Podman's defaults (crun, systemd cgroup manager, nofile=1048576) fail when:
# - the cgroup hierarchy is not pure cgroup v2 (v1 or hybrid: crun refuses hybrid);
# - PID 1 is not systemd (the systemd cgroup manager has nobody to talk to);
# - the hard RLIMIT_NOFILE is below what crun tries to set.
set -eu
conf="$(cd "$(dirname "$0")" && pwd)/containers.conf"
needed=no
[ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ] || needed=yes
[ "$(cat /proc/1/comm 2>/dev/null)" = systemd ] || needed=yes
hard_nofile=$(ulimit -Hn)
if [ "$hard_nofile" != unlimited ] && [ "$hard_nofile" -lt 1048576 ]; then
  needed=yes
fi
if [ "$needed" = yes ]; then
  printf '%s\n' "$conf"
fi
