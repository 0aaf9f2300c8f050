#!/usr/bin/env bash
# Ingress load benchmark: signed, unique webhooks at 32 connections against a release build, on a
# fresh database each run (the project-local cluster unless DATABASE_URL names a server), and the
# median of RUNS runs. Every 200 is sent only after its rows committed (synchronous_commit on).
# Usage: scripts/bench-ingress.sh [COUNT=60000] [RUNS=5] [CONCURRENCY=32]
# BENCH_VIA=pgbouncer, BENCH_POOL_MODE=transaction: see scripts/bench-via.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
count=${1:-60000}; runs=${2:-5}; conc=${3:-32}
cargo build --release --quiet -p sms-ingress -p sms-sim
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
. scripts/bench-via.sh
port=${BENCH_PORT:-18081}
export TWILIO_AUTH_TOKEN=bench-token PUBLIC_URL=http://127.0.0.1:$port BIND_ADDR=127.0.0.1:$port RUST_LOG=warn
results=()
for i in $(seq 1 "$runs"); do
  PGOPTIONS=--client-min-messages=warning psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_bench_ingress WITH (FORCE)" -c "CREATE DATABASE sms_bench_ingress"
  export DATABASE_URL=${server%/*}/sms_bench_ingress
  RUST_LOG=warn target/release/sms-ingress migrate
  DATABASE_URL=$service_base/sms_bench_ingress target/release/sms-ingress serve >/dev/null 2>&1 & ip=$!
  sleep 0.5
  target/release/sms-sim webhooks --url "$PUBLIC_URL/webhook/twilio/sms" --count 5000 --concurrency "$conc" >/dev/null
  out=$(target/release/sms-sim webhooks --url "$PUBLIC_URL/webhook/twilio/sms" --count "$count" --concurrency "$conc")
  rss=$(awk '/VmHWM/ {print $2}' /proc/$ip/status)
  kill $ip; wait $ip 2>/dev/null || true
  stored=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM sms_messages")
  line=$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print(f\"{r['throughput_rps']:.0f} {r['latency_ms']['p50']:.2f} {r['latency_ms']['p99']:.2f} {r['statuses'].get('200',0)}\")" "$out")
  echo "run $i: rps p50_ms p99_ms ok200 = $line; rows stored $stored; ingress peak RSS ${rss} kB" >&2
  results+=("$line")
done
printf '%s\n' "${results[@]}" | python3 -c "
import sys, statistics as s
rows=[list(map(float,l.split())) for l in sys.stdin if l.strip()]
print(f'median of {len(rows)} runs: {s.median(r[0] for r in rows):.0f} req/s, p50 {s.median(r[1] for r in rows):.2f} ms, p99 {s.median(r[2] for r in rows):.2f} ms')"
