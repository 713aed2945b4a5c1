#!/usr/bin/env bash
# Runs the hub on this machine: installs what is missing (Debian packages),
# builds, and starts pp-hub on the embedded SQLite store in ./var/.
#   packaging/run-hub.sh [pp-hub options...]     (see: build/bin/pp-hub --help)
# Ctrl-C stops it; every write it acknowledged is committed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash packaging/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target pp-hub
mkdir -p var
args=("$@")
[[ ${#args[@]} -eq 0 ]] && args=(--http "${PP_HTTP:-127.0.0.1:8080}" --db "${PP_DB:-sqlite:$root/var/hub.db}")
exec build/bin/pp-hub "${args[@]}"
