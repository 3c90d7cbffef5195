#!/usr/bin/env bash
# The whole suite (`make test`), packed onto a 2-core machine.
#
# The layers differ in what they wait on: lint, sanity, unit and server tests are pure CPU;
# the VM layer keeps one core busy with qemu (single-threaded TCG) for most of its run; the
# end-to-end scenarios mostly wait on SSH round trips, gates and soak windows (about 60 %
# of two cores). So two lanes run side by side:
# - the foreground lane: unit tests (two xdist workers) and server tests, with lint and
#   sanity beside them at a lower priority (none needs an artifact), then, once the shared
#   artifacts exist, the integration tests on the lab fleet and the e2e scenarios on two
#   xdist workers, each on a lab of its own (the main lab and edgeml-e2e2: their waits on
#   soak windows, gates and pauses overlap);
# - the background lane: what the foreground needs (the example bundles, the lab's Debian
#   13 base, the model server image), then the VM layer (image build, boot test, Molecule
#   in a VM), then the Automation Platform layer (the lab EE built with ansible-builder, job
#   templates and the release workflow run through ansible-runner in it, and the collection
#   installed from its tarball, on a lab of its own: tests/aap), the Molecule scenario of
#   edge_host in Debian 12 and 13 containers and the lab role's own test (a lab of its own
#   too: tests/integration/test_lab_play.py). None of them uses the e2e labs. These three
#   are shared: the foreground lane takes those not yet started once its e2e scenarios passed.
# Two lanes, not three: with the VM, the Automation Platform layer and the e2e scenarios
# all at once (load average 13 on 2 cores), good versions' latency gates measured over
# 500 ms and failed. The e2e latency gates allow 2.5 s p95, where good versions' single
# requests measured up to 1.6 s under load and the too-slow version takes about 5 s on an
# idle machine (tests/e2e/fleetops.py).
# A background lane's output goes to its log, printed when it ends; a failed lane stops
# the suite at the next layer boundary.
#
# Called by `make test` after `setup`. MAKE is the make that called us.
set -euo pipefail

make_cmd=${MAKE:-make}
log_dir=.build/logs
artifacts_done=$log_dir/shared-artifacts.done
mkdir -p "$log_dir"
rm -f "$artifacts_done" "$log_dir"/*.rc

started=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }
say() { echo "== [$(elapsed)] $* ($(date +%T)) =="; }

# A full disk shows up as odd failures deep inside a layer: check first, say what is free.
scripts/check-test-disk.sh

declare -A lane_pid=()
declare -A lane_reported=()

# start_lane NAME SHELL-COMMAND: run it in its own session (so that all of it can be
# stopped), its output in $log_dir/NAME.log and its exit status in $log_dir/NAME.rc.
start_lane() {
  local name=$1 command=$2
  # shellcheck disable=SC2016  # $1 and $2 are the inner shell's arguments
  setsid bash -c 'bash -c "$1"; echo $? >"$2"' "$name-lane" "$command" "$log_dir/$name.rc" \
    >"$log_dir/$name.log" 2>&1 &
  lane_pid[$name]=$!
  lane_reported[$name]=false
  say "$name lane started in the background (pid $!); its output: $log_dir/$name.log"
}

lane_status() { cat "$log_dir/$1.rc" 2>/dev/null || echo running; }

stop_lanes() {
  local name
  for name in "${!lane_pid[@]}"; do
    [ "$(lane_status "$name")" = running ] || continue
    kill -TERM -- "-${lane_pid[$name]}" 2>/dev/null || true
    wait "${lane_pid[$name]}" 2>/dev/null || true
  done
  # qemu daemonizes out of its lane's session: stop the VMs by their pid files.
  for pidfile in .vm/*/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if grep -qa qemu "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" || true; fi
  done
}

print_lane() {
  echo "== $1 lane output ($log_dir/$1.log, exit $(lane_status "$1")) =="
  cat "$log_dir/$1.log"
  echo "== $1 lane steps =="
  grep -E '^== \[[0-9:]+\] (started|passed): ' "$log_dir/$1.log" || true
  lane_reported[$1]=true
}

# CI shows only part of a long output, its end above all: a failure ends with the other
# lanes' output, then the failing lane's whole log or the failing layer's last lines, then
# one line saying what failed.
fail() {
  local status=$1 failed_lane=$2 layer_log=$3 name
  shift 3
  stop_lanes
  for name in "${!lane_pid[@]}"; do
    if [ "${lane_reported[$name]}" = false ] && [ "$name" != "$failed_lane" ]; then print_lane "$name" >&2; fi
  done
  scripts/check-test-disk.sh --report >&2 || true
  if [ -n "$failed_lane" ]; then
    print_lane "$failed_lane" >&2
  elif [ -s "$layer_log" ]; then
    echo "== the end of $layer_log ==" >&2
    tail -n 40 "$layer_log" >&2
  fi
  echo "== [$(elapsed)] FAILED: $* (exit $status) ==" >&2
  exit "$status"
}

check_lanes() {
  local name status
  for name in "${!lane_pid[@]}"; do
    status=$(lane_status "$name")
    if [ "$status" != running ] && [ "$status" != 0 ]; then fail "$status" "$name" "" "the $name lane failed"; fi
  done
}

finish_lane() {
  local name=$1 status
  say "waiting for the $name lane"
  wait "${lane_pid[$name]}" || true
  status=$(lane_status "$name")
  [ "$status" = 0 ] || fail "$status" "$name" "" "the $name lane failed"
  print_lane "$name"
  say "$name lane passed"
}

# run_layer LAYER [MAKE-ARGUMENTS...]
run_layer() {
  local layer=$1 layer_started=$SECONDS status=0 layer_log=$log_dir/$1.log
  check_lanes
  say "$layer"
  "$make_cmd" --no-print-directory "$@" 2>&1 | tee "$layer_log" || status=$?
  [ "$status" -eq 0 ] || fail "$status" "" "$layer_log" "$layer failed"
  say "$layer passed in $((SECONDS - layer_started))s"
}

# Each step of a background lane says when it started and when it passed, in lines that
# the suite repeats at its end (a CI log keeps only its last lines).
# shellcheck disable=SC2016  # expanded by the lane's shell
lane_step='step() { echo "== [$(date +%T)] started: $* =="; "$@" && echo "== [$(date +%T)] passed: $* =="; }'

# The layers after the VM layer are shared out: the background lane takes them longest
# first, the foreground lane, once its e2e scenarios passed, shortest first; each layer runs
# in the lane that claims it first (mkdir is atomic). Niced in the background lane: there
# they judge answers, not latency, and share the cores with the e2e scenarios, which do.
claims=$log_dir/claimed
rm -rf "$claims" && mkdir -p "$claims"
shared_layers=(aap-test molecule lab-play-test)
lane_claim="claim() { mkdir \"$claims/\$1\" 2>/dev/null; }"
eval "$lane_claim"
start_lane background "$lane_step; $lane_claim; \
  step $make_cmd --no-print-directory shared-artifacts && touch $artifacts_done \
  && step $make_cmd --no-print-directory vm-test \
  && for layer in ${shared_layers[*]}; do \
       if claim \$layer; then step nice -n 10 $make_cmd --no-print-directory \$layer || exit 1; fi; done"

# lint and sanity (pure CPU, niced) beside the unit tests on two xdist workers and the server
# tests, packed as `make check` packs them: the unit tests wait on podman and HTTP as much as
# on the CPU. CI20 ran the four one after the other: 624 s before the lab layers could start.
start_lane static "nice -n 10 $make_cmd --no-print-directory lint sanity"
run_layer unit unit UNIT_FLAGS="-n 2"
run_layer server-test
finish_lane static

say "waiting for the shared artifacts (lab base image, model server image, bundles)"
while [ ! -e "$artifacts_done" ] && [ "$(lane_status background)" = running ]; do sleep 5; done
[ -e "$artifacts_done" ] || fail "$(lane_status background)" background "" "the shared artifacts failed"

for layer in integration e2e; do run_layer "$layer"; done
for ((i = ${#shared_layers[@]} - 1; i >= 0; i--)); do
  if claim "${shared_layers[i]}"; then run_layer "${shared_layers[i]}"; fi
done

finish_lane background
say "whole suite passed"
