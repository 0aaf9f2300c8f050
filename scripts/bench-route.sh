#!/usr/bin/env bash
# Routing benchmark: signed inbound webhooks at RATE/s for SECONDS through the ingress, processed
# and routed by one `sms-worker --queues inbound,route` to an agent that answers at once, for
# 1,000 tenants. Latency per message = routing decision time - webhook commit time - the agent's
# own round trip; reports p50/p99 and the directory cache's hit rate.
# Usage: scripts/bench-route.sh [RATE=200] [SECONDS=30]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
rate=${1:-200}; seconds=${2:-30}
count=$((rate * seconds))
cargo build --release --quiet -p sms-ingress -p sms-worker -p sms-sim
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
export TWILIO_AUTH_TOKEN=bench-token TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_PHONE_NUMBER=+15550001000 PUBLIC_URL=http://127.0.0.1:18084 BIND_ADDR=127.0.0.1:18084 RUST_LOG=warn LOG_FORMAT=json WORKER_METRICS_ADDR=off
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_bench_route" -c "CREATE DATABASE sms_bench_route" 2>/dev/null
export DATABASE_URL=${server%/*}/sms_bench_route
target/release/sms-ingress migrate 2>/dev/null
psql -q "$DATABASE_URL" -c "INSERT INTO tenant_profiles (tenant_id, phone_numbers)
  SELECT 't-' || g, jsonb_build_array('+1555200' || lpad(g::text, 4, '0')) FROM generate_series(1, 1000) g" -c "VACUUM ANALYZE tenant_profiles"
# The simulator's agent in its `silent` mode: verifies the signature and answers 200 at once
# (its time is excluded from the figure anyway).
target/release/sms-sim serve --bind 127.0.0.1:18091 --agent-secret bench-agent-secret-0001 >/dev/null 2>&1 & pids+=($!)
sleep 0.5
AGENT_SIGNING_SECRET=bench-agent-secret-0001 target/release/sms-ingress route add --default --url http://127.0.0.1:18091/agent/silent >/dev/null
target/release/sms-ingress serve >/dev/null 2>&1 & pids+=($!)
target/release/sms-worker --queues inbound,route >/dev/null 2>&1 & wp=$!; pids+=($wp)
sleep 0.5
target/release/sms-sim webhooks --url "$PUBLIC_URL/webhook/twilio/sms" --count "$count" --rate "$rate" --concurrency 16 --numbers 1000 \
  | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"sent {r['sent']} at {r['throughput_rps']:.0f}/s, webhook p99 {r['latency_ms']['p99']:.1f} ms\")"
until [ "$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM sms_messages WHERE route_status IN ('routed', 'unroutable', 'skipped')")" = "$count" ]; do
  kill -0 $wp 2>/dev/null || { echo "sms-worker exited early" >&2; exit 1; }
  sleep 0.5
done
psql -tA "$DATABASE_URL" -c "
  WITH l AS (
    SELECT extract(epoch FROM d.decided_at - m.created_at) * 1000 - d.latency_ms AS ms, d.latency_ms AS agent_ms,
           extract(epoch FROM m.processed_at - m.created_at) * 1000 AS inbound_ms
    FROM sms_routing_decisions d JOIN sms_messages m ON m.id = d.message_id WHERE d.outcome = 'delivered')
  SELECT format('routed %s messages: inbound-to-agent latency (agent excluded) p50 %s ms, p99 %s ms, max %s ms; agent round trip p50 %s ms',
    count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms)::numeric, 1),
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY agent_ms)::numeric, 1)) FROM l
  UNION ALL
  SELECT format('  of which webhook commit -> inbound processed: p50 %s ms, p99 %s ms',
    round(percentile_cont(0.5) WITHIN GROUP (ORDER BY inbound_ms)::numeric, 1),
    round(percentile_cont(0.99) WITHIN GROUP (ORDER BY inbound_ms)::numeric, 1)) FROM l"
