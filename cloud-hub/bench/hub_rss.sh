#!/bin/bash
# The hub's memory with a big store: fills a SQLite store with N posts
# through the hub core (pp-store-bench: each posted, then claimed), starts
# mosquitto and pp-hub on it, prints pp-hub's VmRSS/VmHWM once it is ready,
# plays a rush against it (pp-sim), and prints them again.
#
#   cloud-hub/bench/hub_rss.sh [POSTS=1000000] [DIR=/tmp/pp-hub-rss]
#
# Run from the repository root after building (pp-store-bench pp-hub pp-sim pp-token).
set -euo pipefail
posts=${1:-1000000}
dir=${2:-/tmp/pp-hub-rss}
bin=build/bin
rm -rf "$dir" && mkdir -p "$dir"
hub_pid=""
cleanup() {
  [[ -n "$hub_pid" ]] && kill "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null || true
  bash packaging/broker.sh stop "$dir/broker" >/dev/null 2>&1 || true
}
trap cleanup EXIT
memory() { grep -E "VmRSS|VmHWM" "/proc/$hub_pid/status" | tr -s ' \t' ' ' | tr '\n' ' '; echo; }

"$bin/pp-store-bench" --db "sqlite:$dir/hub.db" --posts "$posts"
echo "store: $(du -h "$dir/hub.db" | cut -f1) for $posts posts"
port=$(bash packaging/broker.sh start "$dir/broker")
"$bin/pp-token" keygen --out "$dir/jwt" >/dev/null
"$bin/pp-hub" --http 127.0.0.1:0 --db "sqlite:$dir/hub.db" --mqtt "tcp://127.0.0.1:$port" \
  --mqtt-password-file "$dir/broker/hub.password" --jwt-public-key "$dir/jwt/jwt.pub" \
  > "$dir/hub.out" 2> "$dir/hub.log" &
hub_pid=$!
until grep -q "listening" "$dir/hub.out" 2>/dev/null; do
  kill -0 "$hub_pid" 2>/dev/null || { echo "pp-hub did not start; see $dir/hub.log"; exit 1; }
  sleep 0.1  # waiting for the hub's first line
done
http=$(grep -o "127.0.0.1:[0-9]*" "$dir/hub.out" | head -1)
echo "pp-hub ready with $posts posts stored: $(memory)"
"$bin/pp-sim" --hub "http://$http" --broker-dir "$dir/broker" \
  --token "$("$bin/pp-token" mint --key "$dir/jwt/jwt.key" --role admin)" \
  --kiosks 1000 --posts-per-kiosk 2 --vehicles 100 --window 5s --speed-up 600 --out "$dir/sim" 2>/dev/null |
  grep -oE '"(posts_accepted|delivered|lost|duplicated)":[0-9]+' | tr '\n' ' ' | sed 's/^/rush: /'
echo
echo "pp-hub after the rush: $(memory)"
