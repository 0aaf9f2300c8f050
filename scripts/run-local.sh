#!/usr/bin/env bash
# One command for a local run: a project-local Postgres (created once, reused), migrations, the
# simulator standing in for the Collections Monitor with demo tenants, the ingress and a worker.
# With DATABASE_URL set, that database is used instead of the local cluster. Ctrl-C stops all.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

echo "building (release)..." >&2
cargo build --release --quiet -p sms-ingress -p sms-worker -p sms-sim
bin="$root/target/release"

started_pg=0
if [ -z "${DATABASE_URL:-}" ]; then
  DATABASE_URL=$(scripts/pg-local.sh start)
  started_pg=1
fi
export DATABASE_URL
export BIND_ADDR=${BIND_ADDR:-127.0.0.1:8080}
export PUBLIC_URL=${PUBLIC_URL:-http://$BIND_ADDR}
export LOG_FORMAT=${LOG_FORMAT:-pretty}
# No load balancer to leave: Ctrl-C stops the ingress at once.
export SHUTDOWN_DRAIN_SECS=${SHUTDOWN_DRAIN_SECS:-0}
# The simulator's agent listens on loopback, which agent routes may not reach by default.
export AGENT_ALLOWED_NETWORKS=${AGENT_ALLOWED_NETWORKS:-127.0.0.0/8,::1}
sim_addr=${SIM_ADDR:-127.0.0.1:8089}
if [ -z "${TWILIO_AUTH_TOKEN:-}" ]; then
  # No Twilio credentials: the simulator plays Twilio's REST API and signs its callbacks.
  export TWILIO_AUTH_TOKEN=local-dev-token
  export TWILIO_ACCOUNT_SID=AC00000000000000000000000000000000
  export TWILIO_PHONE_NUMBER=+15550001000
  export TWILIO_API_BASE=http://$sim_addr
  export SEND_RATE_PER_SENDER=${SEND_RATE_PER_SENDER:-5}
fi
if [ -z "${MONITOR_API_URL:-}" ]; then
  export MONITOR_API_URL=http://$sim_addr
  run_sim=1
else
  run_sim=0
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo "stopping..." >&2
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$started_pg" = 1 ]; then scripts/pg-local.sh stop; fi
}
trap cleanup INT TERM EXIT

"$bin/sms-ingress" migrate
if [ "$run_sim" = 1 ]; then
  "$bin/sms-sim" serve --bind "$sim_addr" --seed-demo & pids+=($!)
fi
"$bin/sms-ingress" serve & pids+=($!)
"$bin/sms-worker" & pids+=($!)
key=$("$bin/sms-ingress" api-key create --name local-dev --scope read --scope send --scope admin)
route_note="a default route already exists; messages go where it says"
if [ "$run_sim" = 1 ] && ! "$bin/sms-ingress" route list | grep -q $'\tdefault\t'; then
  # No route yet: inbound messages go to the simulator's echo agent, which answers each one.
  AGENT_SIGNING_SECRET=local-agent-secret "$bin/sms-ingress" route add --default --url "http://$sim_addr/agent/echo" >/dev/null
  route_note="default route -> the simulator's echo agent (http://$sim_addr/agent/echo)"
fi
sleep 1

cat <<MSG

SMS Foundation is running.
  ingress        $PUBLIC_URL   (health: $PUBLIC_URL/health, metrics: $PUBLIC_URL/metrics with the key below)
  API docs       $PUBLIC_URL/docs   (OpenAPI: $PUBLIC_URL/openapi.json)
  worker metrics http://${WORKER_METRICS_ADDR:-127.0.0.1:9091}/metrics
  database       $DATABASE_URL
  monitor (sim)  $MONITOR_API_URL
  API key        $key
  agent route    $route_note
  console        $PUBLIC_URL/console   (sign in with the API key above)

Send a signed test SMS from a demo tenant's number. The echo agent answers it; the answer is sent
through the simulated Twilio and reaches "delivered". Watch it in the console (Numbers, search
(415) 555-0101) or read the conversation:
  $bin/sms-sim send-one --url $PUBLIC_URL/webhook/twilio/sms --auth-token $TWILIO_AUTH_TOKEN --from +14155550101 --body "Sí, gracias"
  curl -s -H "Authorization: Bearer $key" $PUBLIC_URL/conversations/+14155550101

Send an SMS (the simulator plays Twilio and posts delivery callbacks back):
  curl -s -X POST $PUBLIC_URL/sms/send -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \\
    -d '{"to": "+14155550101", "body": "Your receipt is ready"}'

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
