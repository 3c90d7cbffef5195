#!/bin/sh
# Unpack promtool, amtool, prometheus and alertmanager from Debian's packages into DIR/bin
# (no install, no service started): the controller-side tools of the monitoring tests
# (`promtool test rules`, `promtool check config`, `amtool check-config`).
# Usage: scripts/fetch-prometheus-tools.sh DIR
set -eu
dir=$1
# Debian's Alertmanager reads its notification templates from /usr/share.
am_templates=/usr/share/prometheus/alertmanager
[ -x "$dir/bin/promtool" ] && [ -x "$dir/bin/amtool" ] && [ -f "$am_templates/email.tmpl" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "No apt-get here: put promtool and amtool (Prometheus 2.42+, Alertmanager 0.25+) in $dir/bin by hand." >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
debs="$dir/debs"
rm -rf "$debs" && mkdir -p "$debs" "$dir/bin"
# apt-get download needs package lists; a fresh machine may have none yet.
(cd "$debs" && apt-get download prometheus prometheus-alertmanager >/dev/null 2>&1) || {
  $SUDO apt-get update -qq
  (cd "$debs" && apt-get download prometheus prometheus-alertmanager >/dev/null)
}
for deb in "$debs"/*.deb; do
  dpkg-deb -x "$deb" "$debs/root"
done
for tool in promtool amtool prometheus prometheus-alertmanager; do
  install -m 0755 "$debs/root/usr/bin/$tool" "$dir/bin/$tool"
done
for template in default.tmpl email.tmpl; do
  $SUDO install -D -m 0644 "$debs/root$am_templates/$template" "$am_templates/$template"
done
rm -rf "$debs"
"$dir/bin/promtool" --version | head -n 1
