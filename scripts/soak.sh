#!/usr/bin/env bash
# Soak: a steady mix for MINUTES minutes through the real binaries: signed inbound webhooks at
# IN_RATE/s (1,000 numbers, half of them known tenants, routed to the simulator's agent) and API
# sends at SEND_RATE/s (the simulator plays Twilio and posts delivery callbacks). Every 10 s it
# samples the RSS of the ingress and the worker, the proportional memory (PSS) of Postgres, and the queue depth and oldest due job;
# at the end it compares the first and last quarter and checks that nothing was lost.
# Usage: scripts/soak.sh [MINUTES=10] [IN_RATE=100] [SEND_RATE=20]
# Samples: target/soak/samples.csv; summary on stdout and in target/soak/summary.txt.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
minutes=${1:-10}; in_rate=${2:-100}; send_rate=${3:-20}
seconds=$((minutes * 60))
out=target/soak; mkdir -p "$out"
cargo build --release --quiet -p sms-ingress -p sms-worker -p sms-sim
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
export TWILIO_AUTH_TOKEN=soak-token TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_PHONE_NUMBER=+15550001000
export PUBLIC_URL=http://127.0.0.1:18085 BIND_ADDR=127.0.0.1:18085 TWILIO_API_BASE=http://127.0.0.1:18090
export MONITOR_API_URL=http://127.0.0.1:18090 SEND_RATE_PER_SENDER=0 WORKER_METRICS_ADDR=127.0.0.1:19091
export RUST_LOG=warn LOG_FORMAT=json
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_soak" -c "CREATE DATABASE sms_soak" 2>/dev/null
export DATABASE_URL=${server%/*}/sms_soak
target/release/sms-ingress migrate 2>/dev/null
# Half the load generator's 1,000 numbers (+15552000001...) belong to tenants.
psql -q "$DATABASE_URL" -c "INSERT INTO tenant_profiles (tenant_id, phone_numbers)
  SELECT 't-' || g, jsonb_build_array('+1555200' || lpad(g::text, 4, '0')) FROM generate_series(1, 500) g"
target/release/sms-sim serve --bind 127.0.0.1:18090 --auth-token soak-token >/dev/null 2>&1 & pids+=($!)
sleep 0.5
AGENT_SIGNING_SECRET=soak-agent-secret-0001 target/release/sms-ingress route add --default --url http://127.0.0.1:18090/agent/silent >/dev/null
key=$(target/release/sms-ingress api-key create --name soak --scope send)
target/release/sms-ingress serve >/dev/null 2>&1 & ingress=$!; pids+=($ingress)
target/release/sms-worker >/dev/null 2>&1 & worker=$!; pids+=($worker)
sleep 1
pg_pid=$(head -1 "$(psql -tA "$DATABASE_URL" -c 'SHOW data_directory')/postmaster.pid" 2>/dev/null || true)

target/release/sms-sim webhooks --url "$PUBLIC_URL/webhook/twilio/sms" --count $((in_rate * seconds)) --rate "$in_rate" \
  --concurrency 16 --numbers 1000 --max-seconds $((seconds + 60)) >"$out/webhooks.json" & load=$!; pids+=($load)
# Sends at a steady rate, each a new message to one of 1,000 numbers.
python3 - "$PUBLIC_URL/sms/send" "$key" "$send_rate" "$seconds" >"$out/sends.txt" <<'PY' & sends=$!; pids+=($sends)
import json, sys, threading, time, urllib.request
url, key, rate, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
ok = failed = 0
lock = threading.Lock()
def one(i):
    global ok, failed
    body = json.dumps({"to": "+1415400%04d" % (i % 1000), "body": "Soak message %d" % i}).encode()
    req = urllib.request.Request(url, body, {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            good = r.status == 202
    except Exception:
        good = False
    with lock:
        if good: ok += 1
        else: failed += 1
start = time.time(); i = 0
while time.time() - start < seconds:
    due = start + i / rate
    if due > time.time(): time.sleep(due - time.time())
    threading.Thread(target=one, args=(i,)).start(); i += 1
while threading.active_count() > 1: time.sleep(0.1)
print(json.dumps({"accepted": ok, "failed": failed}))
PY

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
pg_pss() { # proportional memory of all this cluster's processes in kB (RSS would count the shared
  # buffers once per backend)
  [ -n "$pg_pid" ] || { echo 0; return; }
  local total=0 p v
  for p in "$pg_pid" $(ps --ppid "$pg_pid" -o pid=); do
    v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
echo "t_s,ingress_rss_kb,worker_rss_kb,postgres_pss_kb,queue_due,queue_oldest_s,inbound_stored,outbound_delivered" >"$out/samples.csv"
start=$(date +%s)
while :; do
  t=$(( $(date +%s) - start ))
  q=$(psql -tA -F, "$DATABASE_URL" -c "SELECT count(*), COALESCE(round(extract(epoch FROM now() - min(run_at))::numeric, 1), 0)
        FROM apalis.jobs WHERE status = 'Pending' AND run_at <= now()")
  c=$(psql -tA -F, "$DATABASE_URL" -c "SELECT count(*) FILTER (WHERE direction = 'inbound'), count(*) FILTER (WHERE direction = 'outbound' AND delivery_status = 'delivered') FROM sms_messages")
  echo "$t,$(rss $ingress),$(rss $worker),$(pg_pss),$q,$c" >>"$out/samples.csv"
  if [ "$t" -ge "$seconds" ]; then break; fi
  sleep 10
done
wait "$load" "$sends" 2>/dev/null || true
# Drain: everything accepted is processed, delivered or routed.
for _ in $(seq 120); do
  left=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM apalis.jobs WHERE status IN ('Pending', 'Queued', 'Running') AND run_at <= now()")
  [ "$left" = 0 ] && break; sleep 1
done
python3 - "$out" "$DATABASE_URL" <<'PY' | tee "$out/summary.txt"
import csv, json, statistics, subprocess, sys
out, db = sys.argv[1], sys.argv[2]
rows = [dict((k, float(v)) for k, v in r.items()) for r in csv.DictReader(open(f"{out}/samples.csv"))]
q = max(1, len(rows) // 4)
first, last = rows[1:q + 1], rows[-q:]   # skip the very first sample (start-up)
def med(rs, k): return statistics.median(r[k] for r in rs)
web = json.load(open(f"{out}/webhooks.json")); sends = json.loads(open(f"{out}/sends.txt").read())
sql = lambda s: subprocess.run(["psql", "-tA", db, "-c", s], capture_output=True, text=True).stdout.strip()
stored = int(sql("SELECT count(*) FROM sms_messages WHERE direction = 'inbound'"))
processed = int(sql("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL"))
delivered = int(sql("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'"))
outbound = int(sql("SELECT count(*) FROM sms_messages WHERE direction = 'outbound'"))
print(f"soak: {rows[-1]['t_s']:.0f} s, {len(rows)} samples; webhooks answered 200: {web['statuses'].get('200', 0)} of {web['sent']}; sends accepted: {sends['accepted']} (failed {sends['failed']})")
print(f"inbound stored {stored}, processed {processed}; outbound {outbound}, delivered {delivered}")
for k, name in [("ingress_rss_kb", "ingress RSS"), ("worker_rss_kb", "worker RSS"), ("postgres_pss_kb", "Postgres PSS")]:
    a, b = med(first, k) / 1024, med(last, k) / 1024
    print(f"{name}: first quarter median {a:.1f} MB, last quarter median {b:.1f} MB (ratio {b / a if a else 0:.2f})")
print(f"due jobs: first quarter median {med(first, 'queue_due'):.0f}, last quarter median {med(last, 'queue_due'):.0f}, max {max(r['queue_due'] for r in rows):.0f}")
print(f"oldest due job: first quarter median {med(first, 'queue_oldest_s'):.1f} s, last quarter median {med(last, 'queue_oldest_s'):.1f} s, max {max(r['queue_oldest_s'] for r in rows):.1f} s")
PY
