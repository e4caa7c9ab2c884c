#!/usr/bin/env bash
# Packaging checks (run by .ci/run): the systemd unit's security score, the Prometheus alert
# rules (promtool check + unit tests), and with --deb: build the .deb with cargo-deb and
# check its layout in a scratch root (dpkg -x), its control files and the packaged binary.
# Arguments after --deb go to cargo deb (e.g. --no-build to package an existing binary).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "packaging/check.sh: $*" >&2; exit 1; }

# --- systemd unit: hardened to "OK" (exposure <= 2.0) ---------------------------------
unit=packaging/allstar-nexus.service
report=$(systemd-analyze security --offline=true "$unit" 2>&1) || fail "systemd-analyze failed: $report"
score=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score in: $report"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "unit exposure $score > 2.0"
echo "unit security exposure: $score (<= 2.0)"

# --- Prometheus alert rules ----------------------------------------------------------
promtool check rules docs/prometheus/alerts.yml
(cd docs/prometheus && promtool test rules alerts.test.yml)

[ "${1:-}" = "--deb" ] || exit 0
shift

# --- the .deb ------------------------------------------------------------------------
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
start=$(date +%s)
cargo deb "$@" --output "$scratch/allstar-nexus.deb"
echo "cargo deb took $(( $(date +%s) - start )) s"
deb="$scratch/allstar-nexus.deb"
dpkg-deb --info "$deb"
root="$scratch/root"
dpkg -x "$deb" "$root"
dpkg-deb -e "$deb" "$scratch/control"

unitdir=""
for d in lib/systemd/system usr/lib/systemd/system; do
  [ -f "$root/$d/allstar-nexus.service" ] && unitdir=$d
done
[ -n "$unitdir" ] || fail "no systemd unit in the package"
for f in usr/bin/allstar-nexus etc/allstar-nexus/config.yaml etc/allstar-nexus/scripts/README \
         usr/share/allstar-nexus/plugins/alerts.lua usr/share/allstar-nexus/plugins/voter.lua \
         usr/share/allstar-nexus/plugins/adaptive_polling.lua usr/share/allstar-nexus/scripts \
         usr/share/doc/allstar-nexus/install.md usr/share/doc/allstar-nexus/config.example.yaml \
         usr/share/doc/allstar-nexus/prometheus/alerts.yml usr/share/doc/allstar-nexus/grafana-dashboard.json; do
  [ -e "$root/$f" ] || fail "missing in the package: /$f"
done
cmp -s "$root/$unitdir/allstar-nexus.service" "$unit" || fail "packaged unit differs from $unit"
grep -qx /etc/allstar-nexus/config.yaml "$scratch/control/conffiles" || fail "config.yaml is not a conffile"
grep -q "adduser --system" "$scratch/control/postinst" || fail "postinst does not create the user"
grep -q "deb-systemd-helper\|systemctl" "$scratch/control/postinst" || fail "postinst does not enable the unit"
grep -q "^Depends:.*adduser" "$scratch/control/control" || fail "Depends lacks adduser"
[ "$(stat -c %a "$root/etc/allstar-nexus/config.yaml")" = 640 ] || fail "config.yaml mode"

bin="$root/usr/bin/allstar-nexus"
"$bin" --version | grep -q "(git " || fail "--version has no git revision"
# The packaged config, as a fresh install has it: check-config names what is missing.
if "$bin" check-config "$root/etc/allstar-nexus/config.yaml" >"$scratch/cc.out" 2>&1; then
  fail "check-config accepted an unfinished config"
fi
grep -q "ami_password_file\|nodes" "$scratch/cc.out" || fail "check-config: $(cat "$scratch/cc.out")"
echo "package layout OK: $(dpkg-deb -c "$deb" | wc -l) entries"
