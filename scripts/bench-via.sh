# Sourced by the bench scripts after `server` is set: how the service reaches the database.
# BENCH_VIA=pgbouncer: through a local PgBouncer in transaction mode (scripts/pgbouncer-local.sh,
# DATABASE_POOL_MODE=transaction); migrations and checks still go direct. BENCH_POOL_MODE=transaction
# with a direct connection measures the unnamed statements alone. Sets `service_base` (append
# /<database>).
via=${BENCH_VIA:-direct}
case "$via" in
  direct) service_base=${server%/*}; export DATABASE_POOL_MODE=${BENCH_POOL_MODE:-session} ;;
  pgbouncer) service_base=$(scripts/pgbouncer-local.sh start "$server"); export DATABASE_POOL_MODE=transaction
    trap 'scripts/pgbouncer-local.sh stop' EXIT ;;
  *) echo "BENCH_VIA must be direct or pgbouncer" >&2; exit 2 ;;
esac
echo "service database connections: $via" >&2
