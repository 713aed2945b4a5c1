#!/usr/bin/env bash
# Runs a mosquitto for the hub on loopback:
#   packaging/broker.sh start DIR [PORT]   config, users and data in DIR; prints the port
#   packaging/broker.sh stop DIR
#   packaging/broker.sh add-user DIR NAME PASSWORD   (then reloads the broker)
# The hub's own credentials are created at start (DIR/hub.password).
# PP_BROKER_MAX_QUEUED: messages the broker queues for one client, an
# offline device or a hub that pauses (default 100000, see
# mosquitto/mosquitto.conf.in; a test sets 1 to see what happens beyond it).
set -euo pipefail
cmd=$1
dir=$(realpath -m "$2")
here=$(cd "$(dirname "$0")" && pwd)

case $cmd in
  start)
    mkdir -p "$dir"
    want=${3:-0}
    [[ -f $dir/hub.password ]] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$dir/hub.password")
    [[ -f $dir/passwd ]] || mosquitto_passwd -c -b "$dir/passwd" pp-hub "$(cat "$dir/hub.password")"
    user=$(id -un)
    # Ports below the kernel's ephemeral range (32768+), so that no outgoing
    # connection can be holding the one we pick; a few tries if one is taken.
    for attempt in 1 2 3 4 5 6; do
      port=$want
      if [[ $port == 0 ]]; then
        port=$(( 20000 + RANDOM % 12000 ))
        (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && continue
      fi
      sed -e "s|@PORT@|$port|" -e "s|@HOST@|127.0.0.1|" -e "s|@DIR@|$dir|g" \
          -e "s|@ACL@|$here/mosquitto/acl|" -e "s|@USER@|$user|" \
          -e "s|@MAX_QUEUED@|${PP_BROKER_MAX_QUEUED:-100000}|" \
          "$here/mosquitto/mosquitto.conf.in" > "$dir/mosquitto.conf"
      mosquitto -c "$dir/mosquitto.conf" -d || true
      for _ in $(seq 30); do
        if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && [[ -f $dir/mosquitto.pid ]]; then
          echo "$port" > "$dir/port"; echo "$port"; exit 0
        fi
        sleep 0.1
      done
      [[ $want == 0 ]] || break
    done
    echo "mosquitto did not start; see $dir/mosquitto.log" >&2
    cat "$dir/mosquitto.log" >&2 || true
    exit 1
    ;;
  stop)
    # The broker may be exiting on its own as we look (a test stops it the
    # moment a client connects) and remove its pid file between a check
    # and a read: read once, and a missing file means nothing to stop.
    pid=$(cat "$dir/mosquitto.pid" 2>/dev/null || true)
    if [[ -n $pid ]]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$dir/mosquitto.pid"
    ;;
  add-user)
    mosquitto_passwd -b "$dir/passwd" "$3" "$4"
    [[ -f $dir/mosquitto.pid ]] && kill -HUP "$(cat "$dir/mosquitto.pid")" || true
    ;;
  *) echo "usage: $0 start|stop|add-user DIR ..." >&2; exit 2 ;;
esac
