#!/usr/bin/env bash
# Starts or stops the throw-away PostgreSQL 15 that the tests use:
#   pg_fixture.sh start STATE_DIR   initdb in a fresh folder under /tmp, listen on
#                                   a free loopback port, write the URL to
#                                   STATE_DIR/pg.url (and the folder to STATE_DIR/pg.dir)
#   pg_fixture.sh stop STATE_DIR
# Run by ctest as the setup/cleanup of the "postgres" fixture. PostgreSQL
# refuses to run as root, so as root it runs as the 'postgres' system user;
# its data lives under /tmp because that user may not reach the checkout
# (a home folder with mode 700, say).
set -euo pipefail
cmd=$1
state=$(realpath -m "$2")
mkdir -p "$state"
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)

as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $cmd in
  start)
    "$0" stop "$state" >/dev/null 2>&1 || true
    pgdir=$(mktemp -d /tmp/pp-pg.XXXXXX)
    chmod 755 "$pgdir"
    echo "$pgdir" > "$state/pg.dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$pgdir"
    as_pg "$bin/initdb" -D "$pgdir/data" -U pp -A trust --no-sync -E UTF8 >"$pgdir/initdb.log" 2>&1 \
      || { cat "$pgdir/initdb.log" >&2; exit 1; }
    for attempt in 1 2 3 4 5 6 7 8; do
      port=$(( 20000 + RANDOM % 12000 ))  # below the ephemeral range (32768+)
      # Something answering on the port means it is taken.
      if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then continue; fi
      if as_pg "$bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w -t 30 \
           -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB" \
           start >/dev/null; then
        echo "postgresql://pp@127.0.0.1:$port/postgres" > "$state/pg.url"
        echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($pgdir)"
        exit 0
      fi
    done
    cat "$pgdir/server.log" >&2
    exit 1
    ;;
  stop)
    pgdir=$(cat "$state/pg.dir" 2>/dev/null || true)
    [[ -n $pgdir && -d $pgdir ]] || { rm -f "$state/pg.url" "$state/pg.dir"; exit 0; }
    if [[ -f $pgdir/data/postmaster.pid ]]; then
      as_pg "$bin/pg_ctl" -D "$pgdir/data" -m fast -w stop >/dev/null
    fi
    rm -rf "$pgdir" "$state/pg.url" "$state/pg.dir"
    ;;
  *) echo "usage: $0 start|stop STATE_DIR" >&2; exit 2 ;;
esac
