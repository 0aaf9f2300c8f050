#!/usr/bin/env bash
# Send benchmark: COUNT outbound messages (stored with their send jobs, as POST /sms/send stores
# them) drained by one `sms-worker --queues outbound-send,outbound-status` against the simulator
# playing Twilio, with the ingress receiving the simulator's signed status callbacks.
# Reports sends/s with pacing off, then how closely pacing holds RATE per sender.
# Usage: scripts/bench-send.sh [COUNT=20000] [RATE=20]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
count=${1:-20000}; rate=${2:-20}
cargo build --release --quiet -p sms-ingress -p sms-worker -p sms-sim
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
export TWILIO_AUTH_TOKEN=bench-token TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_PHONE_NUMBER=+15550001000
export PUBLIC_URL=http://127.0.0.1:18083 BIND_ADDR=127.0.0.1:18083 TWILIO_API_BASE=http://127.0.0.1:18089 RUST_LOG=warn LOG_FORMAT=json WORKER_METRICS_ADDR=off
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
target/release/sms-sim serve --bind 127.0.0.1:18089 --auth-token bench-token >/dev/null 2>&1 & pids+=($!)
faults() { curl -s -X POST http://127.0.0.1:18089/_sim/twilio/faults -H 'content-type: application/json' -d "$1" >/dev/null; }
sleep 0.5
run() { # $1 = messages, $2 = SEND_RATE_PER_SENDER
  psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_bench_send" -c "CREATE DATABASE sms_bench_send" 2>/dev/null
  export DATABASE_URL=${server%/*}/sms_bench_send
  target/release/sms-ingress migrate 2>/dev/null
  psql -q "$DATABASE_URL" -c "WITH m AS (
      INSERT INTO sms_messages (direction, message_content, delivery_status, to_number, from_number, num_segments, encoding, status_updated_at)
      SELECT 'outbound', 'Rent reminder ' || g, 'pending', '+1555400' || lpad((g % 10000)::text, 4, '0'), '+15550001000', 1, 'GSM-7', now()
      FROM generate_series(1, $1) g RETURNING id)
    INSERT INTO apalis.jobs (id, job_type, job, status, max_attempts, run_at, priority, metadata)
    SELECT apalis.generate_ulid(), 'outbound-send', convert_to(json_build_object('message_id', id)::text, 'UTF8'), 'Pending', 25, now(), 0, ''::hstore FROM m"
  target/release/sms-ingress serve >/dev/null 2>&1 & local ip=$!
  SEND_RATE_PER_SENDER=$2 target/release/sms-worker --queues outbound-send,outbound-status,reconciler >/dev/null 2>&1 & local wp=$!
  while [ "$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM sms_messages WHERE twilio_sid IS NULL")" != 0 ]; do sleep 0.3; done
  local rss; rss=$(awk '/VmHWM/ {print $2}' /proc/$wp/status)
  if [ "${3:-callbacks}" = callbacks ]; then
    while [ "$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM sms_messages WHERE delivery_status <> 'delivered'")" != 0 ]; do sleep 0.3; done
  fi
  kill $wp $ip; wait $wp $ip 2>/dev/null || true
  echo "worker peak RSS ${rss} kB" >&2
}
# The send path alone: the simulator accepts but posts no callbacks.
faults '{"no_callbacks": true}'
run "$count" 0 no-callbacks
psql -tA -F' ' "$DATABASE_URL" -c "SELECT count(*), round(count(*) / extract(epoch FROM max(finished_at) - min(started_at))) FROM sms_send_attempts WHERE outcome = 'accepted'" \
  | awk '{print "pacing off, send path alone: " $1 " messages handed to Twilio at " $2 " sends/s"}'
# The whole loop: three signed callbacks per message back through the ingress and applied, with
# the reconciler catching up on callbacks the simulator failed to deliver (Twilio does not retry
# callbacks either).
faults '{}'
export RECONCILE_STUCK_AFTER_SECS=5 RECONCILE_INTERVAL_SECS=2
loop_count=$((count / 10))
run "$loop_count" 0
psql -tA -F' ' "$DATABASE_URL" -c "SELECT count(*), round(count(*) / extract(epoch FROM max(finished_at) - min(started_at))) FROM sms_send_attempts WHERE outcome = 'accepted'" \
  | awk '{print "pacing off, whole loop: " $1 " messages handed to Twilio at " $2 " sends/s"}'
psql -tA -F' ' "$DATABASE_URL" -c "SELECT round(count(*) / extract(epoch FROM max(updated_at) - min(created_at))) FROM sms_messages" \
  | awk '{print "pacing off, whole loop: stored -> delivered at " $1 " messages/s"}'
psql -tA "$DATABASE_URL" -c "SELECT 'callbacks stored: ' || count(*) || ' of ' || 3 * $loop_count || ', statuses set by the reconciler: ' || count(*) FILTER (WHERE raw->>'source' = 'reconciler') FROM sms_status_callbacks"
n=$((rate * 10))
run "$n" "$rate"
psql -tA "$DATABASE_URL" -c "WITH s AS (SELECT started_at, started_at - lag(started_at) OVER (ORDER BY started_at) AS gap FROM sms_send_attempts)
  SELECT format('pacing at %s/s: %s sends over %s s = %s/s; gap between sends p50 %s ms, p99 %s ms (target %s ms)',
    $rate, count(*), round(extract(epoch FROM max(started_at) - min(started_at))::numeric, 2),
    round(((count(*) - 1) / extract(epoch FROM max(started_at) - min(started_at)))::numeric, 2),
    round((percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM gap)) * 1000)::numeric, 1),
    round((percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM gap)) * 1000)::numeric, 1),
    round(1000.0 / $rate, 1)) FROM s"
