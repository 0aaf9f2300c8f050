#!/usr/bin/env bash
# GET /conversations latency: 2,000 conversations of 60 messages each (120,000 messages; half of
# the numbers changed hands halfway through their history), then REQUESTS reads of a random
# conversation's newest page (limit 50) at CONCURRENCY connections, once with an unscoped key and
# once with tenant-scoped keys (each reading its own tenant's part), RUNS times. Latency as the
# client sees it (a Python client: it shares the 2 cores) and the ingress's own mean time for the
# route (from its /metrics histogram's sum and count).
# Usage: scripts/bench-conversations.sh [REQUESTS=4000] [RUNS=3] [CONCURRENCY=16]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd); cd "$root"
requests=${1:-4000}; runs=${2:-3}; conc=${3:-16}
cargo build --release --quiet -p sms-ingress
server=${DATABASE_URL:-$(scripts/pg-local.sh start)}
admin=${server%/*}/postgres
port=${BENCH_PORT:-18086}
export TWILIO_AUTH_TOKEN=bench-token PUBLIC_URL=http://127.0.0.1:$port BIND_ADDR=127.0.0.1:$port RUST_LOG=warn
psql -q "$admin" -c "DROP DATABASE IF EXISTS sms_bench_conv" -c "CREATE DATABASE sms_bench_conv" 2>/dev/null
export DATABASE_URL=${server%/*}/sms_bench_conv
target/release/sms-ingress migrate 2>/dev/null
# Tenant t-N held +1415200NNNN for the first half of the history; for odd N, t-(N+2000) holds it now.
psql -q "$DATABASE_URL" <<'SQL'
INSERT INTO tenant_profiles (tenant_id) SELECT 't-' || g FROM generate_series(1, 4000) g;
INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id, last_message_at)
SELECT '+1415200' || lpad(g::text, 4, '0'), '+1415200' || lpad(g::text, 4, '0'),
       't-' || CASE WHEN g % 2 = 1 THEN g + 2000 ELSE g END, now()
FROM generate_series(1, 2000) g;
INSERT INTO sms_messages (conversation_id, direction, message_content, delivery_status, from_number, to_number,
                          num_segments, processed_at, created_at, route_status)
SELECT c.id, 'inbound', 'message ' || i, 'received', c.phone_number, '+15550001000', 1, now(),
       now() - make_interval(mins => 60 - i), 'routed'
FROM sms_conversations c, generate_series(1, 60) i;
-- Where the schema records a message's tenant, the first half is the old owner's.
DO $$ BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'sms_messages' AND column_name = 'tenant_id') THEN
    UPDATE sms_messages m SET tenant_id = CASE WHEN m.message_content::text ~ ' ([1-9]|[12][0-9]|30)$' AND right(c.phone_number, 4)::int % 2 = 1
                                           THEN 't-' || right(c.phone_number, 4)::int ELSE c.tenant_id END
    FROM sms_conversations c WHERE c.id = m.conversation_id;
  END IF;
END $$;
-- Each conversation's messages together on disk, as a history written over time would mostly be.
CLUSTER sms_messages USING sms_messages_conversation_created_idx;
VACUUM ANALYZE;
SQL
unscoped=$(target/release/sms-ingress api-key create --name bench --scope read)
# Keys of the current owners of the first 200 numbers.
keys=$(for n in $(seq 1 200); do
  owner=$n; if [ $((n % 2)) = 1 ]; then owner=$((n + 2000)); fi
  echo "$n $(target/release/sms-ingress api-key create --name "b$n" --scope read --tenant "t-$owner")"
done)
target/release/sms-ingress serve >/dev/null 2>&1 & ip=$!
trap 'kill $ip 2>/dev/null || true' EXIT
sleep 0.5
for i in $(seq 1 "$runs"); do
  python3 - "$PUBLIC_URL" "$requests" "$conc" "$unscoped" "$keys" <<'PY'
import http.client, json, random, statistics, sys, threading, time, urllib.parse
base, requests, conc, unscoped, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
host = urllib.parse.urlparse(base)
scoped = [(int(l.split()[0]), l.split()[1]) for l in keys.splitlines() if l.strip()]
def server_time():
    """The ingress's own time for the route so far: (seconds, requests), from /metrics."""
    c = http.client.HTTPConnection(host.hostname, host.port)
    c.request("GET", "/metrics", headers={"Authorization": f"Bearer {unscoped}"}); text = c.getresponse().read().decode()
    total = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in total:
            if line.startswith(f"sms_http_request_duration_seconds_{kind}{{") and 'route="/conversations/{phone_number}"' in line:
                total[kind] += float(line.rsplit(" ", 1)[1])
    return total["sum"], total["count"]
def run(label, pick):
    lat, errors, lock = [], [0], threading.Lock()
    before = server_time()
    per = requests // conc
    def worker(seed):
        rnd = random.Random(seed)
        c = http.client.HTTPConnection(host.hostname, host.port)
        for _ in range(per):
            n, key = pick(rnd)
            t = time.perf_counter()
            c.request("GET", f"/conversations/%2B1415200{n:04d}?limit=50", headers={"Authorization": f"Bearer {key}"})
            r = c.getresponse(); body = r.read()
            dt = (time.perf_counter() - t) * 1000
            with lock:
                lat.append(dt)
                if r.status != 200 or not json.loads(body)["messages"]:
                    errors[0] += 1
    start = time.perf_counter()
    ts = [threading.Thread(target=worker, args=(s,)) for s in range(conc)]
    [t.start() for t in ts]; [t.join() for t in ts]
    wall = time.perf_counter() - start
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    after = server_time()
    mean = (after[0] - before[0]) / max(1, after[1] - before[1]) * 1000
    print(f"{label}: {len(lat)/wall:.0f} req/s, client p50 {p(0.5):.2f} ms, p99 {p(0.99):.2f} ms; ingress mean {mean:.3f} ms; errors {errors[0]}")
run("unscoped", lambda rnd: (rnd.randint(1, 2000), unscoped))
run("tenant-scoped", lambda rnd: rnd.choice(scoped))
PY
done
