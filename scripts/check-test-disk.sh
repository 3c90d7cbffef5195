#!/usr/bin/env bash
# Free disk for `make test`, checked before the layers start: a disk that fills up midway
# shows up as odd failures deep inside a layer (a podman load, a pip install, a registry
# that stops answering). Measured on the project's machine: from the start of the layers
# to their peak, the checkout grows by about 4 GiB (bundles, images, OS image and its
# root file system, VM disks) and podman's storage by about 4 GiB (lab images, lab hosts'
# volumes, Molecule images).
#   scripts/check-test-disk.sh            check, fail with what is missing
#   scripts/check-test-disk.sh --report   only print what is free (after a failure)
set -euo pipefail

checkout_gib=${EDGEML_TEST_CHECKOUT_GIB:-4}
storage_gib=${EDGEML_TEST_PODMAN_GIB:-4}

# podman's graph root: created on first use, so look at the nearest directory that exists.
storage=$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || echo /var/lib/containers/storage)
while [ ! -d "$storage" ]; do storage=$(dirname "$storage"); done

echo "== disk: free space for the suite =="
df -hT . "$storage" /var/tmp | awk 'NR == 1 || !seen[$0]++'
[ "${1:-}" = --report ] && exit 0

free_gib() { df -Pk "$1" | awk 'NR == 2 { printf "%d", $4 / 1048576 }'; }
if [ "$(stat -c %d .)" = "$(stat -c %d "$storage")" ]; then
  need=$((checkout_gib + storage_gib))
  have=$(free_gib .)
  where="the checkout and podman's storage ($storage) share a file system"
else
  need=$checkout_gib
  have=$(free_gib .)
  where="the checkout's file system"
  if [ "$have" -ge "$need" ]; then
    need=$storage_gib
    have=$(free_gib "$storage")
    where="podman's storage ($storage)"
  fi
fi
if [ "$have" -lt "$need" ]; then
  echo "make test needs about $need GiB free where $where; $have GiB is free." >&2
  echo "Free some space (podman system prune -a, a smaller .build), or move the checkout." >&2
  exit 1
fi
echo "== disk: $have GiB free where $where (needs about $need GiB) =="
