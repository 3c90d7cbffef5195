#!/usr/bin/env bash
# Free disk for `make test`, checked before the layers start: a disk that fills up midway
# shows up as odd failures deep inside a layer (a podman load, a pip install, a registry
# that stops answering). Measured on the project's machine (clean clone, 2026-12-03): the
# disk in use grew by 6.0 GB from the start of the layers to their peak, about 4 GB of it
# podman's storage (lab images, lab hosts' volumes, Molecule images) and the rest the
# checkout (bundles, OS image and its root file system while it is built, VM disks).
# The defaults below leave a margin over that.
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
require() {
  local dir=$1 need=$2 where=$3 have
  have=$(free_gib "$dir")
  if [ "$have" -lt "$need" ]; then
    echo "make test needs about $need GiB free $where; $have GiB is free." >&2
    echo "Free some space (podman system prune -a, a smaller .build), or move the checkout." >&2
    exit 1
  fi
  echo "== disk: $have GiB free $where (needs about $need GiB) =="
}

if [ "$(stat -c %d .)" = "$(stat -c %d "$storage")" ]; then
  require . $((checkout_gib + storage_gib)) "where the checkout and podman's storage ($storage) share a file system"
else
  require . "$checkout_gib" "on the checkout's file system"
  require "$storage" "$storage_gib" "in podman's storage ($storage)"
fi
