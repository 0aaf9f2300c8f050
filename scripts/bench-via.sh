# Sourced by the bench scripts after `server` is set: how the service reaches the database.
# BENCH_VIA=pgbouncer: through a local PgBouncer in transaction mode (scripts/pgbouncer-local.sh,
# DATABASE_POOL_MODE=transaction, or BENCH_POOL_MODE); migrations and checks still go direct.
# BENCH_POOL_MODE=transaction with a direct connection measures the unnamed statements alone;
# BENCH_POOL_MODE=transaction-named with PGBOUNCER_BIN (1.21+) and PGBOUNCER_MAX_PREPARED_STATEMENTS
# measures named statements through a pooler that tracks them. Sets `service_base` (append
# /<database>).
via=${BENCH_VIA:-direct}
case "$via" in
  direct) service_base=${server%/*}; export DATABASE_POOL_MODE=${BENCH_POOL_MODE:-session} ;;
  pgbouncer) service_base=$(scripts/pgbouncer-local.sh start "$server"); export DATABASE_POOL_MODE=${BENCH_POOL_MODE:-transaction}
    trap 'scripts/pgbouncer-local.sh stop' EXIT ;;
  *) echo "BENCH_VIA must be direct or pgbouncer" >&2; exit 2 ;;
esac
echo "service database connections: $via" >&2

# Statements the pooler has passed for DATABASE so far (SHOW STATS' total_query_count; empty when
# direct): the difference over a drain, divided by its messages, is round trips a message.
pooler_queries() { # database
  [ "$via" = pgbouncer ] || return 0
  psql -A -F'|' "$service_base/pgbouncer" -c "SHOW STATS" | python3 -c "
import sys
rows = [l.rstrip('\\n').split('|') for l in sys.stdin if '|' in l]
head = rows[0]
for r in rows[1:]:
    if r[0] == sys.argv[1]:
        print(r[head.index('total_query_count')])" "$1"
}
