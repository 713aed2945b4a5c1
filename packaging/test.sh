#!/usr/bin/env bash
# Runs every test: installs what is missing (Debian packages, PostgreSQL 15
# among them), builds, and runs ctest. ctest itself starts a throw-away
# PostgreSQL on a free loopback port (tests/support/pg_fixture.sh) and stops
# it at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash packaging/install-deps.sh --test
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j2 --timeout 600
