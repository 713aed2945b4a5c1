#!/usr/bin/env bash
# Runs the system on this machine: installs what is missing (Debian
# packages), builds, starts its own mosquitto on a free loopback port (data
# and passwords in ./var/broker) and pp-hub on the embedded SQLite store
# (./var/hub.db) with the HTTP API and dashboard on 127.0.0.1:8080, tokens
# checked from the first request (key pair in ./var/jwt).
#
# Then a small simulated London plays the 10 PM rush against it (pp-sim: 20
# kiosks and 5 NGO vans, real agents through the broker): watch posts being
# offered, claimed and delivered on the dashboard. PP_DEMO=0 skips it.
#
#   packaging/run-hub.sh [extra pp-hub options...]    (see: build/bin/pp-hub --help)
#
# Ctrl-C stops everything it started and prints the simulation's summary;
# every write the hub acknowledged is committed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash packaging/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target pp-hub pp-device pp-agent pp-token pp-sim
mkdir -p var
[[ -f var/jwt/jwt.key ]] || build/bin/pp-token keygen --out var/jwt >/dev/null
port=$(bash packaging/broker.sh start "$root/var/broker")
http=${PP_HTTP:-127.0.0.1:8080}
hub_pid="" sim_pid=""
stop() {
  trap - INT TERM EXIT
  # Every step, whatever the one before returned (set -e would end the
  # cleanup at a simulator that exits non-zero, leaving hub and broker up).
  set +e
  # The simulator first: at its end it reads the hub's store (lost or
  # doubled posts), so the hub stops after it.
  [[ -n "$sim_pid" ]] && kill "$sim_pid" 2>/dev/null && wait "$sim_pid" 2>/dev/null
  [[ -n "$hub_pid" ]] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null
  bash packaging/broker.sh stop "$root/var/broker"
  if [[ -f var/sim/results.json ]]; then
    echo "--- the simulated rush (var/sim/results.json, var/sim/timeline.svg) ---"
    cat var/sim/results.json
  fi
}
trap stop INT TERM EXIT

echo "mosquitto on tcp://127.0.0.1:$port (config and users in var/broker)"
# The last run's file says "listening" too: without this the wait below
# could read it before tee empties the file, and start the demo too early
# (seen once: pp-sim's first request found no hub).
rm -f var/hub.out
# Ctrl-C reaches every process of the terminal's foreground group at once.
# The hub runs in a session of its own, and its output's tee ignores
# SIGINT, so that stop() ends it after the simulator.
setsid build/bin/pp-hub --http "$http" --db "${PP_DB:-sqlite:$root/var/hub.db}" \
  --mqtt "tcp://127.0.0.1:$port" --mqtt-password-file "$root/var/broker/hub.password" \
  --jwt-public-key "$root/var/jwt/jwt.pub" "$@" > >(trap '' INT; exec tee var/hub.out) 2> var/hub.log &
hub_pid=$!
until grep -q "listening" var/hub.out 2>/dev/null; do
  kill -0 "$hub_pid" 2>/dev/null || { echo "pp-hub did not start; see var/hub.log"; exit 1; }
  sleep 0.2
done
echo "dashboard: http://$http/dashboard/   sign in with a token:"
echo "  build/bin/pp-token mint --key var/jwt/jwt.key --role operator"
echo "hub logs: var/hub.log     Ctrl-C stops everything"

if [[ "${PP_DEMO:-1}" != "0" ]]; then
  rm -f var/sim/results.json
  build/bin/pp-sim --hub "http://$http" --broker-dir var/broker \
    --token "$(build/bin/pp-token mint --key var/jwt/jwt.key --role admin)" \
    --kiosks 20 --vehicles 5 --window 20s --delay 2s --speed-up 300 --out var/sim &
  sim_pid=$!
fi
wait "$hub_pid"
