#!/usr/bin/env bash
# Runs every test: installs what is missing (Debian packages, PostgreSQL 15
# and mosquitto among them), builds, and runs ctest. ctest itself starts a
# throw-away PostgreSQL on a free loopback port (tests/support/pg_fixture.sh)
# and the tests start their own mosquitto brokers (packaging/broker.sh), all
# stopped at the end. Browser tests drive Debian's chromium, headless. Then
# the self-contained suites and the sync suite run again under
# AddressSanitizer and UBSan.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash packaging/install-deps.sh --test
# playwright-core (pinned by tests/browser/package-lock.json) drives Debian's chromium.
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j2 --timeout 600

# Sanitizers: the suites that need no PostgreSQL, the sync suite (its own
# mosquitto; the relay's and the MQTT client's threads and callbacks), and
# the hub core (the group committer's writers; ctest starts the PostgreSQL
# fixture it needs).
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Asan >/dev/null
cmake --build build-asan -j"$(nproc)" --target common_test http_api_test matching_test sync_test hub_service_test
ctest --test-dir build-asan --output-on-failure -R '^(common_test|http_api_test|matching_test|sync_test|hub_service_test)$' --timeout 600
