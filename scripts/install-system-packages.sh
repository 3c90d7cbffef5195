#!/bin/sh
# Install the system packages edgeml.fleet's lab, tests and demo need, on Debian/Ubuntu
# (apt) or RHEL/Fedora (dnf). Does nothing when everything is already there.
set -eu

need=""
# netavark drives iptables (Debian 12) or nft (Debian 13) for published ports; some
# minimal machines have neither, and then every container start fails. curl: the edge_host
# health check script runs for real in the unit tests (test_edge_host_templates.py), and a
# skip there would fail the suite (tests/skip-allowlist.yml).
# chromium: the report pages are checked in a real headless browser (tests/unit/test_report_pages.py).
for cmd in podman iptables nft debootstrap ssh rsync git curl shellcheck wrk qemu-system-x86_64 qemu-img mkfs.ext4 chromium java; do
  # sbin is not on a normal user's PATH on Debian: look there too.
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/sbin/$cmd" ] || need="$need $cmd"
done
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need="$need python3-venv"
[ -z "$need" ] && exit 0
echo "Installing system packages for:$need"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends \
    podman runc crun netavark aardvark-dns iptables nftables uidmap slirp4netns fuse-overlayfs \
    debootstrap debian-archive-keyring openssh-client rsync git ca-certificates curl shellcheck wrk \
    qemu-system-x86 qemu-utils e2fsprogs chromium openjdk-17-jre-headless \
    python3-venv
  # The downloaded packages are not needed once installed (about 2 GiB with qemu).
  $SUDO apt-get clean
elif command -v dnf >/dev/null 2>&1; then
  # curl only when there is none: RHEL's curl-minimal provides the command and conflicts
  # with the curl package.
  curl_pkg=""
  command -v curl >/dev/null 2>&1 || curl_pkg="curl"
  # debootstrap comes from EPEL on RHEL; Fedora has it in the main repositories.
  $SUDO dnf install -y podman runc crun netavark aardvark-dns iptables-nft nftables debootstrap \
    openssh-clients rsync git python3 ca-certificates ShellCheck wrk qemu-kvm-core qemu-img e2fsprogs chromium \
    java-17-openjdk-headless $curl_pkg
  $SUDO dnf clean packages
else
  echo "No apt-get or dnf here: install podman, debootstrap, openssh client, rsync, git, curl and python3-venv by hand." >&2
  exit 1
fi
