#!/usr/bin/env bash
# Installs the Debian bookworm packages the project builds, runs and tests with.
# Idempotent: packages already present are skipped, so a warm machine pays ~1 s.
# Needs root (or passwordless sudo) only when something is missing.
set -euo pipefail

BUILD_PKGS=(
  build-essential cmake pkg-config ninja-build
  libsqlite3-dev libpqxx-dev libpq-dev
  libcpp-httplib-dev libssl-dev zlib1g-dev libbrotli-dev
  libpaho-mqttpp-dev libpaho-mqtt-dev
  libs2-dev libabsl-dev
  libsodium-dev nlohmann-json3-dev libjwt-dev openssl
  libjemalloc-dev
  libgtest-dev libgmock-dev
)
RUN_PKGS=(mosquitto mosquitto-clients)
# chromium: the pages are tested in a real browser (playwright-core from npm
# drives it; tests/browser). fonts-dejavu-core: readable screenshots.
# prometheus: its promtool checks the /metrics scrape and the alert rules.
TEST_PKGS=(postgresql-15 postgresql-client-15 curl chromium fonts-dejavu-core prometheus)

want=("${BUILD_PKGS[@]}" "${RUN_PKGS[@]}")
if [[ "${1:-}" == "--test" ]]; then
  want+=("${TEST_PKGS[@]}")
  # Node.js and npm for the browser tests, from Debian unless already there.
  command -v npm >/dev/null || want+=(nodejs npm)
fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends keeps the image small; policy-rc.d stops Debian from
# auto-starting a system mosquitto/postgres that would hold the default ports.
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
