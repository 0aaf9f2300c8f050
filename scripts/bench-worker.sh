#!/usr/bin/env bash
# Worker benchmark: COUNT inbound messages stored through the ingress from 1,000 known tenants
# (cached after first sight), then one `sms-worker --queues inbound` drains them; the rate is
# messages over the span between the first and last processed_at, and over the span until the
# last inbound job is done (jobs whose messages another job took along still run). Median of
# RUNS runs. Through a pooler, the statements it passed during the drain, per message.
# Usage: scripts/bench-worker.sh [COUNT=30000] [RUNS=3]
# BENCH_VIA=pgbouncer, BENCH_POOL_MODE=transaction: see scripts/bench-via.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
count=${1:-30000}; runs=${2:-3}
cargo build --release --quiet -p sms-ingress -p sms-worker -p sms-sim
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
. scripts/bench-via.sh
port=${BENCH_PORT:-18082}
export TWILIO_AUTH_TOKEN=bench-token PUBLIC_URL=http://127.0.0.1:$port BIND_ADDR=127.0.0.1:$port RUST_LOG=warn WORKER_METRICS_ADDR=off
results=()
# Waits until the count SQL gives is 0, while the worker ($wp) runs.
until_none() { # sql
  while [ "$(psql -tA "$DATABASE_URL" -c "$1")" != 0 ]; do
    kill -0 $wp 2>/dev/null || { echo "sms-worker exited early (exit $(wait $wp; echo $?))" >&2; exit 1; }
    sleep 0.5
  done
}
for i in $(seq 1 "$runs"); do
  PGOPTIONS=--client-min-messages=warning psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_bench_worker WITH (FORCE)" -c "CREATE DATABASE sms_bench_worker"
  export DATABASE_URL=${server%/*}/sms_bench_worker
  RUST_LOG=warn target/release/sms-ingress migrate
  # 1,000 tenants with two numbers each; the load generator's senders are +15552000001...
  psql -q "$DATABASE_URL" -c "INSERT INTO tenant_profiles (tenant_id, phone_numbers)
    SELECT 't-' || g, jsonb_build_array('+1555200' || lpad(g::text, 4, '0'), '+1555300' || lpad(g::text, 4, '0'))
    FROM generate_series(1, 1000) g"
  # A deployment's directory has statistics; these 1,000 rows were written a second ago.
  psql -q "$DATABASE_URL" -c "ANALYZE tenant_profiles"
  DATABASE_URL=$service_base/sms_bench_worker target/release/sms-ingress serve >/dev/null 2>&1 & ip=$!
  sleep 0.5
  target/release/sms-sim webhooks --url "$PUBLIC_URL/webhook/twilio/sms" --count "$count" --concurrency 32 --numbers 1000 >/dev/null
  kill $ip; wait $ip 2>/dev/null || true
  q0=$(pooler_queries sms_bench_worker)
  DATABASE_URL=$service_base/sms_bench_worker target/release/sms-worker --queues inbound >/dev/null 2>/tmp/sms-bench-worker.err & wp=$!
  until_none "SELECT count(*) FROM sms_messages WHERE processed_at IS NULL"
  # Then the jobs whose messages others took along, until the queue is empty: each still runs
  # (and finds its messages processed).
  until_none "SELECT count(*) FROM apalis.jobs WHERE job_type = 'inbound' AND status NOT IN ('Done', 'Failed', 'Killed')"
  rss=$(awk '/VmHWM/ {print $2}' /proc/$wp/status)
  kill $wp; wait $wp 2>/dev/null || true
  line=$(psql -tA -F' ' "$DATABASE_URL" -c "SELECT round(count(*) / extract(epoch FROM max(processed_at) - min(processed_at))),
    count(*) FILTER (WHERE conversation_id IS NULL), (SELECT count(*) FROM sms_conversations WHERE tenant_id IS NULL),
    round(count(*) / extract(epoch FROM (SELECT max(done_at) FROM apalis.jobs WHERE job_type = 'inbound') - min(processed_at)))
    FROM sms_messages")
  q1=$(pooler_queries sms_bench_worker)
  trips=${q0:+; $(python3 -c "print(f'{($q1 - $q0) / $count:.2f}')") statements through the pooler a message}
  echo "run $i: msgs/s unlinked conversations_without_tenant msgs/s_until_queue_empty = $line; worker peak RSS ${rss} kB$trips" >&2
  results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c "
import sys, statistics as s
rows=[list(map(float,l.split())) for l in sys.stdin if l.strip()]
print(f'median of {len(rows)} runs: {s.median(r[0] for r in rows):.0f} inbound messages/s processed, {s.median(r[3] for r in rows):.0f} until the queue is empty')"
