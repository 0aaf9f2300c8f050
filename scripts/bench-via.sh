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
