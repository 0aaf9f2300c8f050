#!/usr/bin/env bash
# A year of data (issue 21): generates MESSAGES messages over 365 days in the service's own
# shapes (scripts/year.sql: conversations, tenants, busy numbers that changed hands, attempts,
# callbacks, routing decisions, quarantine, opt-outs; MESSAGES/100 tenants, MESSAGES/40
# conversations, 10 busy ones) and a fresh database of 10,000 messages in the same shapes, then
# measures the same reads and writes on both with the release binaries, same session, same
# client, and prints each figure with its ratio (big / fresh). Each read is timed one request at
# a time (its latency: p50/p99) and then at 8 connections (its throughput, and the p99 of a queue
# on 2 cores shared with the client). Sizes of the big database's tables and bytes per message
# are printed too.
# Usage: scripts/bench-year.sh [MESSAGES=10000000] [REQUESTS=2000]
# The big database (sms_year_MESSAGES) is kept and reused by the next run (set
# BENCH_YEAR_REGENERATE=1 to build it again, BENCH_YEAR_GENERATE_ONLY=1 to stop once it is
# built); the fresh one is rebuilt each time. BENCH_YEAR_WRITES_ONLY=N runs only the writes, N times
# alternately on each, and prints the medians; BENCH_YEAR_INGEST=N
# sets the webhooks a write run stores (30,000 by default); BENCH_YEAR_COLD=1 starts each
# database's reads cold (see cold()). Generation takes about a minute per million
# messages on a 2-core machine, then the ledger's fold and VACUUM ANALYZE.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
messages=${1:-10000000}; requests=${2:-2000}
cargo build --release --quiet -p sms-ingress -p sms-worker -p sms-sim
DATABASE_URL_GIVEN=${DATABASE_URL:-}
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
port=${BENCH_PORT:-18087}
export TWILIO_AUTH_TOKEN=bench-token PUBLIC_URL=http://127.0.0.1:$port BIND_ADDR=127.0.0.1:$port \
  RUST_LOG=warn WORKER_METRICS_ADDR=off METRICS_ADDR=off
# The year ends now, so that the default /usage window (the last 30 days) holds a month of it.
start=$(date -u -d '365 days ago' +%Y-%m-%dT%H:%M:%SZ)
chunk=1000000
ingest_count=${BENCH_YEAR_INGEST:-30000}

generate() { # db n
  local db=$1 n=$2 url=${server%/*}/$1
  PGOPTIONS=--client-min-messages=warning psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
  DATABASE_URL=$url target/release/sms-ingress migrate
  local tenants=$(( n / 100 > 10 ? n / 100 : 10 )) convs=$(( n / 40 > 20 ? n / 40 : 20 ))
  local vars=(-v n="$n" -v start="$start" -v tenants="$tenants" -v convs="$convs" -v busy=10)
  psql -q "$url" "${vars[@]}" -f scripts/year-setup.sql
  local lo=1 t0=$SECONDS
  while [ "$lo" -le "$n" ]; do
    local hi=$(( lo + chunk > n + 1 ? n + 1 : lo + chunk ))
    psql -q "$url" "${vars[@]}" -v lo="$lo" -v hi="$hi" -f scripts/year.sql
    echo "$db: $(( hi - 1 )) of $n messages ($(( SECONDS - t0 )) s)" >&2
    lo=$hi
  done
  # The usage ledger's changes into their days, as the reconciler does each pass in service.
  DATABASE_URL=$url TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_PHONE_NUMBER=+14155550100 \
    TWILIO_API_BASE=http://127.0.0.1:9 target/release/sms-worker --queues reconciler >/dev/null 2>&1 & local wp=$!
  while [ "$(psql -tA "$url" -c "SELECT count(*) FROM sms_usage_deltas")" != 0 ]; do sleep 1; done
  kill $wp; wait $wp 2>/dev/null || true
  psql -q "$url" -c "VACUUM ANALYZE"
}

big=sms_year_$messages fresh=sms_year_fresh
if [ -n "${BENCH_YEAR_REGENERATE:-}" ] || ! psql -tA "$admin" -c "SELECT 1 FROM pg_database WHERE datname = '$big'" | grep -q 1; then
  generate "$big" "$messages"
fi
[ -n "${BENCH_YEAR_GENERATE_ONLY:-}" ] && exit 0
generate "$fresh" 10000

# An earlier run's writes leave jobs no process here runs (the route jobs of the inbound messages
# drained; in service a route worker would have done them): removed, so that each run starts
# from the same queues and the health page counts what a running service would hold.
settle() {
  psql -q "$DATABASE_URL" -c "DELETE FROM apalis.jobs WHERE status <> 'Done'" -c "VACUUM ANALYZE apalis.jobs"
}

# BENCH_YEAR_COLD=1: each database's reads start cold (the local cluster restarted and the OS
# page cache dropped; root, local cluster only), so that runs compare alike whatever ran before.
cold() {
  [ -n "${BENCH_YEAR_COLD:-}" ] || return 0
  [ -z "${DATABASE_URL_GIVEN:-}" ] || { echo "BENCH_YEAR_COLD needs the local cluster" >&2; exit 2; }
  scripts/pg-local.sh stop >/dev/null; sync; echo 1 >/proc/sys/vm/drop_caches; scripts/pg-local.sh start >/dev/null
}

# Figures for one database, as JSON on stdout.
measure() { # db
  local db=$1
  cold
  export DATABASE_URL=${server%/*}/$db
  target/release/sms-ingress migrate
  settle
  psql -q "$DATABASE_URL" -c "DELETE FROM api_keys WHERE name LIKE 'year-%'" -c "ANALYZE"
  local n tenants
  # The year's numbers (+1 201 2xx xxxx), not the ones the write runs' webhooks add.
  n=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM sms_conversations WHERE phone_number LIKE '+1201%'")
  tenants=$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM tenant_profiles WHERE tenant_id NOT LIKE 'y-prev-%'")
  local unscoped keys
  unscoped=$(target/release/sms-ingress api-key create --name year-admin --scope read --scope admin)
  # Keys for 100 random tenants' numbers, and for the busy numbers' current and previous owners.
  keys=$(
    for g in $(python3 -c "import random; random.seed(7); print(*random.sample(range(11, $tenants + 1), min(100, $tenants - 10)))"); do
      echo "tenant $g $(target/release/sms-ingress api-key create --name "year-$g" --scope read --tenant "y-$g")"
    done
    for k in $(seq 1 10); do
      echo "busy $k $(target/release/sms-ingress api-key create --name "year-b$k" --scope read --tenant "y-$k")"
      echo "prev $k $(target/release/sms-ingress api-key create --name "year-p$k" --scope read --tenant "y-prev-$k")"
    done
  )
  target/release/sms-ingress serve >/dev/null 2>&1 & local ip=$!
  # As in service, a worker runs the reconciler (it folds the usage ledger every 5 s).
  TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000 TWILIO_PHONE_NUMBER=+14155550100 \
    TWILIO_API_BASE=http://127.0.0.1:9 target/release/sms-worker --queues reconciler >/dev/null 2>&1 & local rp=$!
  sleep 6
  python3 - "$PUBLIC_URL" "$requests" "$n" "$tenants" "$unscoped" "$keys" <<'PY'
import http.client, json, random, re, statistics, sys, threading, time, urllib.parse
base, requests, convs, tenants, unscoped, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
host = urllib.parse.urlparse(base)
keys = [l.split() for l in keys.splitlines() if l.strip()]
tenant_keys = [(int(g), k) for kind, g, k in keys if kind == "tenant"]
busy = {int(g): k for kind, g, k in keys if kind == "busy"}
prev = {int(g): k for kind, g, k in keys if kind == "prev"}
phone = lambda k: f"%2B1{2012000000 + k}"
out = {}

def timed(pick, count, conc, headers):
    """count GETs of pick(rnd) -> (path, key) at conc connections: sorted latencies (ms), wall
    seconds, response sizes, non-200 statuses."""
    lat, size, errors, lock = [], [], {}, threading.Lock()
    def worker(seed):
        rnd = random.Random(seed)
        c = http.client.HTTPConnection(host.hostname, host.port)
        for _ in range(count // conc):
            path, key = pick(rnd)
            h = {"Authorization": f"Bearer {key}"} if key else {}
            h.update(headers())
            t = time.perf_counter()
            c.request("GET", path, headers=h)
            r = c.getresponse(); body = r.read()
            dt = (time.perf_counter() - t) * 1000
            with lock:
                lat.append(dt); size.append(len(body))
                if r.status != 200:
                    errors[r.status] = errors.get(r.status, 0) + 1
    start = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(s,)) for s in range(conc)]
    [t.start() for t in ts]; [t.join() for t in ts]
    return sorted(lat), time.perf_counter() - start, size, errors

def run(label, pick, count=requests, headers=lambda: {}):
    """A read's latency (p50/p99 ms, one request at a time: what a caller waits for) and its
    throughput at 8 connections (req/s, and the p99 there, which on 2 cores shared with this
    client is mostly the queue in front of the cores)."""
    pct = lambda lat, q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2)
    alone, _, size, errors = timed(pick, count // 2, 1, headers)
    busy, wall, size8, errors8 = timed(pick, count, 8, headers)
    for status, n in errors8.items():
        errors[status] = errors.get(status, 0) + n
    out[label] = {"p50_ms": pct(alone, 0.5), "p99_ms": pct(alone, 0.99), "p99_8_ms": pct(busy, 0.99),
                  "rps": round(len(busy) / wall), "bytes": int(statistics.median(size + size8)), "errors": errors}

def numbers_of(g):
    return [k for k in range(g, convs + 1, tenants)]

run("conversation, tenant-scoped key", lambda r: (lambda g, key: (f"/conversations/{phone(r.choice(numbers_of(g)))}?limit=50", key))(*r.choice(tenant_keys)))
run("conversation, unscoped key", lambda r: (f"/conversations/{phone(r.randint(11, convs))}?limit=50", unscoped))
run("busiest conversations' first page, tenant-scoped", lambda r: (lambda k: (f"/conversations/{phone(k)}?limit=50", busy[k]))(r.randint(1, 10)))
run("a number's previous owner (wrote half a busy year)", lambda r: (lambda k: (f"/conversations/{phone(k)}?limit=50", prev[k]))(r.randint(1, 10)))
run("usage, default 30 days, first page", lambda r: ("/usage", unscoped), count=requests // 4)
run("usage, 365 days, first page", lambda r: (f"/usage?from={time.strftime('%Y-%m-%d', time.gmtime(time.time() - 365 * 86400))}", unscoped), count=requests // 4)
run("usage, 365 days, tenant-scoped", lambda r: (lambda g, key: (f"/usage?from={time.strftime('%Y-%m-%d', time.gmtime(time.time() - 365 * 86400))}", key))(*r.choice(tenant_keys)), count=requests // 4)

# The console: sign in with the unscoped key, then the replay-all confirmation (its count) and
# the health page.
c = http.client.HTTPConnection(host.hostname, host.port)
c.request("GET", "/console/login"); r = c.getresponse(); page = r.read().decode()
login_cookie = r.getheader("Set-Cookie").split(";")[0]
csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
c.request("POST", "/console/login", body=urllib.parse.urlencode({"key": unscoped, "csrf": csrf}),
          headers={"Content-Type": "application/x-www-form-urlencoded", "Cookie": login_cookie})
r = c.getresponse(); r.read()
session = [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and "sms_console_login" not in v.split(";")[0] and v.split(";")[0].split("=")[1]][0]
run("console: replay-all count", lambda r: ("/console/quarantine/replay-all", None), count=requests // 4, headers=lambda: {"Cookie": session})
run("console: health", lambda r: ("/console/health", None), count=requests // 4, headers=lambda: {"Cookie": session})
json.dump(out, sys.stdout)
PY
  kill $ip $rp; wait $ip $rp 2>/dev/null || true
}

# Writes on one database: BENCH_YEAR_INGEST (default 30,000) signed webhooks at 32 connections
# right after a checkpoint (the worst moment of a checkpoint cycle: every index page an insert
# touches first is written whole to the WAL), then one worker draining them. A larger count
# measures a sustained burst: its first part pays the page images, the rest mostly not.
writes() { # db
  local db=$1
  export DATABASE_URL=${server%/*}/$db
  settle
  psql -q "$DATABASE_URL" -c "CHECKPOINT"
  local before wal0 wal1
  before=$(psql -tA "$DATABASE_URL" -c "SELECT now()")
  # The WAL the ingest writes (whole-page images and bytes, cluster-wide; nothing else runs):
  # steadier than its rate, and what a larger table costs it.
  wal0=$(psql -tA -F' ' "$DATABASE_URL" -c "SELECT wal_fpi, wal_bytes FROM pg_stat_wal")
  target/release/sms-ingress serve >/dev/null 2>&1 & local ip=$!
  sleep 0.5
  local ingest
  ingest=$(target/release/sms-sim webhooks --url "$PUBLIC_URL/webhook/twilio/sms" --count "$ingest_count" --concurrency 32 --numbers 1000)
  kill $ip; wait $ip 2>/dev/null || true
  wal1=$(psql -tA -F' ' "$DATABASE_URL" -c "SELECT wal_fpi, wal_bytes FROM pg_stat_wal")
  target/release/sms-worker --queues inbound >/dev/null 2>/tmp/sms-bench-year-worker.err & local wp=$!
  while [ "$(psql -tA "$DATABASE_URL" -c "SELECT count(*) FROM sms_messages WHERE processed_at IS NULL AND created_at >= '$before'")" != 0 ]; do
    kill -0 $wp 2>/dev/null || { echo "sms-worker exited early" >&2; exit 1; }
    sleep 0.5
  done
  kill $wp; wait $wp 2>/dev/null || true
  local drain
  drain=$(psql -tA "$DATABASE_URL" -c "SELECT round(count(*) / extract(epoch FROM max(processed_at) - min(processed_at))) FROM sms_messages WHERE created_at >= '$before'")
  python3 -c "import json,sys; r=json.loads(sys.argv[1]); n=int(sys.argv[3]); w0, w1 = (list(map(int, a.split())) for a in sys.argv[4:6]); print(json.dumps({f'webhook ingest, {n:,} at 32 connections': {'rps': round(r['throughput_rps']), 'p99_ms': r['latency_ms']['p99'], 'ok': r['statuses'].get('200', 0), 'fpi_per_msg': round((w1[0] - w0[0]) / n, 2), 'wal_kb_per_msg': round((w1[1] - w0[1]) / n / 1024, 2)}, f'one worker draining {n:,} inbound': {'rps': int(sys.argv[2])}}))" "$ingest" "$drain" "$ingest_count" "$wal0" "$wal1"
}

sizes() { # db
  psql -tA -F' ' "${server%/*}/$1" -c "
    SELECT c.relname, pg_total_relation_size(c.oid), pg_relation_size(c.oid)
    FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace
    WHERE s.nspname IN ('public', 'apalis') AND c.relkind = 'r' ORDER BY 2 DESC LIMIT 12"
}

# BENCH_YEAR_WRITES_ONLY=N: only the writes, fresh and big alternately N times, each figure and
# the medians (the writes vary most from run to run on a shared machine).
if [ -n "${BENCH_YEAR_WRITES_ONLY:-}" ]; then
  runs=()
  for _ in $(seq 1 "$BENCH_YEAR_WRITES_ONLY"); do
    runs+=("$(writes "$fresh")" "$(writes "$big")")
    echo "fresh: ${runs[-2]}"; echo "big:   ${runs[-1]}"
  done
  python3 - "${runs[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(a) for a in sys.argv[1:]]
for label in runs[0]:
    f = statistics.median(r[label]["rps"] for r in runs[0::2])
    b = statistics.median(r[label]["rps"] for r in runs[1::2])
    wal = lambda rs, k: statistics.median(r[label][k] for r in rs)
    extra = "" if "fpi_per_msg" not in runs[0][label] else f"; WAL a message: {wal(runs[0::2], 'fpi_per_msg')} / {wal(runs[1::2], 'fpi_per_msg')} page images, {wal(runs[0::2], 'wal_kb_per_msg')} / {wal(runs[1::2], 'wal_kb_per_msg')} KB"
    print(f"{label}: median {f:,.0f} / {b:,.0f} per s, {b / f:.2f}x{extra}")
PY
  exit 0
fi

f_reads=$(measure "$fresh"); b_reads=$(measure "$big")
f_writes=$(writes "$fresh"); b_writes=$(writes "$big")
python3 - "$f_reads" "$b_reads" "$f_writes" "$b_writes" "$messages" <<'PY'
import json, sys
fr, br, fw, bw = (json.loads(a) for a in sys.argv[1:5])
fresh, big = {**fr, **fw}, {**br, **bw}
print(f"| read or write | 10,000 messages | {int(sys.argv[5]):,} messages | ratio |")
print("|---|---|---|---|")
for label in fresh:
    f, b = fresh[label], big[label]
    if "p50_ms" in f:
        cell = lambda x: f"p50 {x['p50_ms']} / p99 {x['p99_ms']} ms; at 8: p99 {x['p99_8_ms']} ms, {x['rps']} req/s; {x['bytes']:,} B" + (f", not 200: {x['errors']}" if x['errors'] else "")
        ratio = f"p99 {b['p99_ms'] / f['p99_ms']:.2f}x; at 8 {b['p99_8_ms'] / f['p99_8_ms']:.2f}x"
    elif "p99_ms" in f:
        cell = lambda x: f"{x['rps']:,} req/s, p99 {x['p99_ms']:.1f} ms, {x['ok']:,} answered 200; WAL a message: {x['fpi_per_msg']} page images, {x['wal_kb_per_msg']} KB"
        ratio = f"{b['rps'] / f['rps']:.2f}x rate"
    else:
        cell = lambda x: f"{x['rps']:,} msg/s"
        ratio = f"{b['rps'] / f['rps']:.2f}x rate"
    print(f"| {label} | {cell(f)} | {cell(b)} | {ratio} |")
PY
echo
echo "largest tables of $big (table, total bytes, heap bytes):"
sizes "$big"
psql -tA "${server%/*}/$big" -c "SELECT 'database ' || pg_size_pretty(pg_database_size(current_database())) || ', ' ||
  round(pg_database_size(current_database())::numeric / (SELECT count(*) FROM sms_messages)) || ' bytes per message'"
