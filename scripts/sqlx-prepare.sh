#!/usr/bin/env bash
# Regenerates the committed sqlx query cache (.sqlx/) without sqlx-cli: a scratch database gets
# apalis-postgres's migrations and ours, then every crate is checked with the macros online and
# SQLX_OFFLINE_DIR set, which makes them write each query's description there.
# Usage: scripts/sqlx-prepare.sh   (uses DATABASE_URL's server when set, else scripts/pg-local.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
db=${server%/*}/sms_sqlx_prepare
psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_sqlx_prepare" -c "CREATE DATABASE sms_sqlx_prepare"
apalis=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/apalis-postgres-1.0.0/migrations | head -n 1)
psql -q "$db" -c "CREATE EXTENSION IF NOT EXISTS hstore" -c "CREATE SCHEMA IF NOT EXISTS apalis"
for f in "$apalis"/*.sql; do PGOPTIONS='-c search_path=apalis,public' psql -q -v ON_ERROR_STOP=1 "$db" -f "$f" >/dev/null; done
# Each in one transaction, as sqlx applies them, unless it starts with `-- no-transaction`.
for f in migrations/*.sql; do
  one=-1; head -1 "$f" | grep -q '^-- no-transaction' && one=
  psql -q $one -v ON_ERROR_STOP=1 "$db" -f "$f" >/dev/null
done
rm -f .sqlx/query-*.json
find shared ingress worker sim tests -name '*.rs' -exec touch {} +
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$root/.sqlx" DATABASE_URL=$db cargo check --workspace --all-targets --quiet
echo "$(ls .sqlx | wc -l) queries cached in .sqlx/"
