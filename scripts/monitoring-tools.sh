#!/usr/bin/env bash
# Installs the monitoring tools the integration tests drive (tests/integration/monitoring.rs):
# postgres_exporter (Debian package prometheus-postgres-exporter), which runs
# monitoring/postgres_exporter.yaml against a target, and promtool (package prometheus), which
# checks monitoring/alerts.yml. Their services are not started or needed.
set -euo pipefail
say() { printf '==> %s\n' "$*"; }
if [ "$(id -u)" -eq 0 ]; then as_root() { "$@"; }; else as_root() { sudo "$@"; }; fi
missing=()
for pkg in prometheus-postgres-exporter prometheus; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "installing monitoring tools: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages start their daemons where an init system runs; the tests start their own.
  for svc in prometheus prometheus-postgres-exporter; do as_root service "$svc" stop >/dev/null 2>&1 || true; done
else
  say "monitoring tools present"
fi
