#!/usr/bin/env bash
# The whole suite (`make test`), in an order that fits a 2-core machine.
#
# Two lanes run side by side, then the e2e scenarios run alone:
# - the artifact lane (its own session, in the background): what both lanes need (the
#   example bundles, the lab's Debian 13 base, the model server image), then the VM layer
#   (qemu under TCG: image build, boot test, Molecule in a VM; about 12 min on an idle
#   machine), which keeps about one core busy. Its output goes to a log, printed when it ends.
# - the container lane (in the foreground): lint, sanity, unit and server tests need none
#   of those artifacts and start at once; Molecule in containers and the integration tests
#   wait for them.
# - the e2e scenarios last and alone: their latency gates measure the lab hosts' CPU, which
#   a running VM would steal.
#
# Called by `make test` after `setup`. MAKE is the make that called us.
set -euo pipefail

make_cmd=${MAKE:-make}
log_dir=.build/logs
lane_log=$log_dir/vm-test.log
artifacts_done=$log_dir/shared-artifacts.done
mkdir -p "$log_dir"
rm -f "$artifacts_done"

started=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }
say() { echo "== [$(elapsed)] $* =="; }

# A full disk shows up as odd failures deep inside a layer: check first, say what is free.
scripts/check-test-disk.sh

# Its own session, so that a failure on the other side can stop all of it.
# shellcheck disable=SC2016  # $1 and $2 are the inner shell's arguments
setsid bash -c '"$1" --no-print-directory shared-artifacts && touch "$2" && "$1" --no-print-directory vm-test' \
  artifact-lane "$make_cmd" "$artifacts_done" >"$lane_log" 2>&1 &
lane_pid=$!
say "artifact lane started in the background (pid $lane_pid): shared artifacts, then the VM layer; its output: $lane_log"

stop_artifact_lane() {
  kill -TERM -- "-$lane_pid" 2>/dev/null || true
  wait "$lane_pid" 2>/dev/null || true
  # qemu daemonizes out of that session: stop the VMs by their pid files.
  for pidfile in .vm/*/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if grep -qa qemu "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" || true; fi
  done
}

lane_reported=false
fail() {
  local status=$1
  shift
  echo "== [$(elapsed)] $* (exit $status) ==" >&2
  if [ "$lane_reported" = false ]; then
    echo "== stopping the artifact lane; its output so far ($lane_log) ==" >&2
    stop_artifact_lane
    cat "$lane_log" >&2
  fi
  scripts/check-test-disk.sh --report >&2 || true
  exit "$status"
}

run_layer() {
  local layer=$1 layer_started=$SECONDS status=0
  say "$layer"
  "$make_cmd" --no-print-directory "$layer" || status=$?
  [ "$status" -eq 0 ] || fail "$status" "$layer failed"
  say "$layer passed in $((SECONDS - layer_started))s"
}

for layer in lint sanity unit server-test; do run_layer "$layer"; done

say "waiting for the shared artifacts (lab base image, model server image, bundles)"
while [ ! -e "$artifacts_done" ] && kill -0 "$lane_pid" 2>/dev/null; do sleep 5; done
[ -e "$artifacts_done" ] || fail 1 "the shared artifacts failed"

for layer in molecule integration; do run_layer "$layer"; done

say "container lane passed; waiting for the VM layer"
lane_status=0
wait "$lane_pid" || lane_status=$?
echo "== artifact lane output ($lane_log) =="
cat "$lane_log"
lane_reported=true
[ "$lane_status" -eq 0 ] || fail "$lane_status" "the VM layer failed"
say "VM layer passed"

run_layer e2e
say "whole suite passed"
