#!/usr/bin/env bash
# Runs the hub on this machine: installs what is missing (Debian packages),
# builds, starts its own mosquitto on a free loopback port (data and
# passwords in ./var/broker) and pp-hub on the embedded SQLite store
# (./var/hub.db) with the HTTP API on 127.0.0.1:8080.
#   packaging/run-hub.sh [extra pp-hub options...]    (see: build/bin/pp-hub --help)
# Register devices with build/bin/pp-device register ... --broker-dir var/broker.
# Ctrl-C stops both; every write the hub acknowledged is committed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash packaging/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target pp-hub pp-device pp-agent pp-token
mkdir -p var
# Tokens: the API is checked from the first request. The key pair stays in
# var/jwt; mint a token with build/bin/pp-token mint --key var/jwt/jwt.key ...
[[ -f var/jwt/jwt.key ]] || build/bin/pp-token keygen --out var/jwt >/dev/null
port=$(bash packaging/broker.sh start "$root/var/broker")
trap 'bash packaging/broker.sh stop "$root/var/broker"' EXIT
echo "mosquitto on tcp://127.0.0.1:$port (config and users in var/broker)"
echo "an admin token for 15 minutes: export TOKEN=\$(build/bin/pp-token mint --key var/jwt/jwt.key --role admin)"
build/bin/pp-hub --http "${PP_HTTP:-127.0.0.1:8080}" --db "${PP_DB:-sqlite:$root/var/hub.db}" \
  --mqtt "tcp://127.0.0.1:$port" --mqtt-password-file "$root/var/broker/hub.password" \
  --jwt-public-key "$root/var/jwt/jwt.pub" "$@"
