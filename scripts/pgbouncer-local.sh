#!/usr/bin/env bash
# Starts a project-local PgBouncer in transaction mode (Debian's `pgbouncer` package) in front of
# the PostgreSQL server of SERVER_URL, in $SMS_DATA_DIR/pgbouncer (default .data/pgbouncer) on
# $SMS_PGBOUNCER_PORT (default 56432) with $SMS_PGBOUNCER_POOL server connections per database
# (default 20), and prints its base URL (append /<database>). Nothing else is set: no
# ignore_startup_parameters, no max_prepared_statements (1.18 has none). PGBOUNCER_BIN runs another
# build (e.g. 1.25); PGBOUNCER_MAX_PREPARED_STATEMENTS sets max_prepared_statements (1.21+).
# Usage: scripts/pgbouncer-local.sh start SERVER_URL | stop
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SMS_DATA_DIR:-$root/.data}/pgbouncer
port=${SMS_PGBOUNCER_PORT:-56432}
pool=${SMS_PGBOUNCER_POOL:-20}
bin=${PGBOUNCER_BIN:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
prepared=${PGBOUNCER_MAX_PREPARED_STATEMENTS:+max_prepared_statements = $PGBOUNCER_MAX_PREPARED_STATEMENTS}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop() {
  [ -f "$dir/pgbouncer.pid" ] && kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  for _ in $(seq 1 50); do [ -f "$dir/pgbouncer.pid" ] || return 0; sleep 0.1; done
}

case "${1:-}" in
  start)
    server=${2:?usage: $0 start SERVER_URL}
    [ -x "$bin" ] || { echo "pgbouncer not found: apt-get install pgbouncer" >&2; exit 1; }
    hostport=${server#*@}; hostport=${hostport%%/*}
    host=${hostport%:*}; sport=${hostport##*:}
    stop
    mkdir -p "$dir"
    echo '"postgres" ""' >"$dir/userlist.txt"
    cat >"$dir/pgbouncer.ini" <<INI
[databases]
* = host=$host port=$sport user=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
stats_users = postgres
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 2000
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
$prepared
INI
    [ "$(id -u)" = 0 ] && chown -R postgres "$dir"
    as_owner "$bin" -d "$dir/pgbouncer.ini"
    for _ in $(seq 1 50); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "postgres://postgres@127.0.0.1:$port"; exit 0; }
      sleep 0.1
    done
    echo "PgBouncer did not start; its log: $dir/pgbouncer.log" >&2; exit 1
    ;;
  stop) stop ;;
  *) echo "usage: $0 start SERVER_URL | stop" >&2; exit 2 ;;
esac
