#!/usr/bin/env bash
# Starts (creating once) a project-local PostgreSQL cluster in $SMS_DATA_DIR (default .data/pg)
# on $SMS_PG_PORT (default 55433, away from a system server's 5432) and prints its URL.
# Usage: scripts/pg-local.sh start|stop|url
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
data_dir=${SMS_DATA_DIR:-$root/.data/pg}
port=${SMS_PG_PORT:-55433}
db=${SMS_PG_DB:-sms}

find_bin() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  if command -v initdb >/dev/null 2>&1; then dirname "$(command -v initdb)"; return; fi
  echo "PostgreSQL server binaries not found. Install them (Debian/Ubuntu: apt-get install postgresql;" >&2
  echo "macOS: brew install postgresql@15) or set DATABASE_URL to an existing server." >&2
  exit 1
}

# initdb and postgres refuse to run as root: run them as the postgres user then.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql --shell /bin/sh postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

url="postgres://postgres@127.0.0.1:$port/$db"

case "${1:-start}" in
  url) echo "$url" ;;
  start)
    bin=$(find_bin)
    mkdir -p "$data_dir"
    [ "$(id -u)" = 0 ] && { id postgres >/dev/null 2>&1 || useradd --system --shell /bin/sh postgres; chown -R postgres "$data_dir" "$(dirname "$data_dir")"; }
    if [ ! -f "$data_dir/PG_VERSION" ]; then
      echo "creating a local PostgreSQL cluster in $data_dir" >&2
      as_owner "$bin/initdb" -D "$data_dir" -A trust -U postgres -E UTF8 --locale=C >/dev/null
    fi
    if ! as_owner "$bin/pg_ctl" -D "$data_dir" status >/dev/null 2>&1; then
      as_owner "$bin/pg_ctl" -D "$data_dir" -l "$data_dir/server.log" -w \
        -o "-p $port -k $data_dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
    fi
    as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" postgres | grep -q 1 \
      || as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE $db" postgres
    echo "$url"
    ;;
  stop)
    bin=$(find_bin)
    as_owner "$bin/pg_ctl" -D "$data_dir" -m fast stop >/dev/null 2>&1 || true
    ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
