#!/usr/bin/env bash
# Memory and idle CPU of a real pp-agent process (a kiosk), connected to a
# hub through mosquitto, doing nothing but staying connected.
#
#   bash edge-agent/bench/agent_idle.sh [SECONDS]      (default 60)
#
# Prints RSS (VmRSS, and the peak VmHWM) after start-up and the CPU it used
# over the window, from /proc. Everything runs on loopback in a temp dir.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/build/bin
window=${1:-60}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  bash "$root/packaging/broker.sh" stop "$work/broker" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/broker" "$work/dev"
port=$(bash "$root/packaging/broker.sh" start "$work/broker")
http=$((20000 + RANDOM % 10000))
PP_MQTT_PASSWORD=$(cat "$work/broker/hub.password") "$bin/pp-hub" --http "127.0.0.1:$http" \
  --db "sqlite:$work/hub.db" --mqtt "tcp://127.0.0.1:$port" >"$work/hub.out" 2>"$work/hub.err" &
pids+=($!)
until grep -q listening "$work/hub.out" 2>/dev/null; do sleep 0.1; done
curl -sf -XPOST "127.0.0.1:$http/api/v1/organizations" -H 'Content-Type: application/json' \
  -d '{"kind":"provider","name":"Warung Bu Sri","lat":51.5138,"lon":-0.0984}' >/dev/null
"$bin/pp-device" register --hub "http://127.0.0.1:$http" --id kiosk-idle --role kiosk --org 1 \
  --out "$work/dev" --broker "tcp://127.0.0.1:$port" --broker-dir "$work/broker" >/dev/null
ui=$((20000 + RANDOM % 10000))
python3 - "$work/dev/kiosk-idle.json" "$ui" <<'PY'
import json, sys
p, port = sys.argv[1], sys.argv[2]
c = json.load(open(p)); c["http_listen"] = f"127.0.0.1:{port}"; json.dump(c, open(p, "w"))
PY
"$bin/pp-agent" run --config "$work/dev/kiosk-idle.json" >"$work/agent.out" 2>"$work/agent.err" &
agent=$!
pids+=($agent)
until curl -sf "127.0.0.1:$ui/api/state" | grep -q '"online":true'; do sleep 0.1; done
# One post through, so the agent has done real work before it idles.
curl -sf -XPOST "127.0.0.1:$ui/api/posts" -H 'Content-Type: application/json' \
  -d '{"category":"bakery","description":"roti","quantity_kg":2,"best_before_in_min":120}' >/dev/null
until curl -sf "127.0.0.1:$ui/api/state" | grep -q '"queued":0'; do sleep 0.1; done
sleep 2

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$agent/stat"; }
c0=$(cpu); t0=$(date +%s.%N)
sleep "$window"   # the measurement window: the agent idles, connected
c1=$(cpu); t1=$(date +%s.%N)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$agent/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$agent/status")
threads=$(awk '/Threads/ {print $2}' "/proc/$agent/status")
python3 - "$c0" "$c1" "$t0" "$t1" "$ticks" "$rss" "$hwm" "$threads" <<'PY'
import sys
c0, c1, t0, t1, hz, rss, hwm, th = map(float, sys.argv[1:])
print(f"agent idle {t1 - t0:.0f} s: cpu={100 * (c1 - c0) / hz / (t1 - t0):.3f}% "
      f"({(c1 - c0) / hz * 1000:.0f} ms) rss={rss / 1024:.1f} MiB peak_rss={hwm / 1024:.1f} MiB threads={th:.0f}")
PY
