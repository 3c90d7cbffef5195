#!/usr/bin/env bash
# The whole suite (`make test`), in an order that fits a 2-core machine.
#
# The VM layer (qemu under TCG: image build, boot test, Molecule in a VM; about 12 min)
# keeps about one core busy. The container layers (lint, sanity, unit, server, Molecule in
# containers, integration) leave a core idle most of the time, so the VM layer runs beside
# them, with its output in a log printed when it ends. The e2e scenarios run last and
# alone: their latency gates measure the lab hosts' CPU, which a running VM would steal.
#
# Called by `make test` after `setup` and `shared-artifacts` (what both sides use, made
# once so that they never build it at the same time). MAKE is the make that called us.
set -euo pipefail

make_cmd=${MAKE:-make}
log_dir=.build/logs
vm_log=$log_dir/vm-test.log
mkdir -p "$log_dir"

started=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - started) / 60)) $(((SECONDS - started) % 60)); }

# Its own session, so that a failure on this side can stop all of it.
setsid "$make_cmd" --no-print-directory vm-test >"$vm_log" 2>&1 &
vm_pid=$!
echo "== VM layer started in the background (pid $vm_pid); its output: $vm_log =="

stop_vm_layer() {
  kill -TERM -- "-$vm_pid" 2>/dev/null || true
  wait "$vm_pid" 2>/dev/null || true
  # qemu daemonizes out of that session: stop the VMs by their pid files.
  for pidfile in .vm/*/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    if grep -qa qemu "/proc/$pid/cmdline" 2>/dev/null; then kill "$pid" || true; fi
  done
}

container_status=0
"$make_cmd" --no-print-directory lint sanity unit server-test molecule integration || container_status=$?
if [ "$container_status" -ne 0 ]; then
  echo "== container layers failed (exit $container_status) after $(elapsed): stopping the VM layer ==" >&2
  stop_vm_layer
  echo "== VM layer output so far ($vm_log) ==" >&2
  cat "$vm_log" >&2
  exit "$container_status"
fi

echo "== container layers passed after $(elapsed); waiting for the VM layer =="
vm_status=0
wait "$vm_pid" || vm_status=$?
echo "== VM layer output ($vm_log) =="
cat "$vm_log"
if [ "$vm_status" -ne 0 ]; then
  echo "== VM layer failed (exit $vm_status) after $(elapsed) ==" >&2
  exit "$vm_status"
fi
echo "== VM layer passed; $(elapsed) so far =="

"$make_cmd" --no-print-directory e2e
echo "== whole suite passed in $(elapsed) =="
