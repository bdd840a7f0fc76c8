#!/usr/bin/env bash
# Install the Debian packages the test suite uses (real servers and tools, not fakes):
# iproute2/nftables/ethtool for namespace labs, libpcap for BPF filters, tshark for the
# sniffer benchmark, curl as a real client, PostgreSQL and Prometheus for the sinks,
# Chromium to render the HTML report. Only as root; otherwise says what is missing.
set -euo pipefail
pkgs=(iproute2 nftables procps ethtool libpcap0.8 tcpdump tshark curl postgresql prometheus chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: not root; tests that need these will be skipped: ${missing[*]}" >&2
  exit 0
fi
echo "system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
