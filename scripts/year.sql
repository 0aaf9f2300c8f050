-- A year of traffic in the service's own shapes, for scripts/bench-year.sh (issue 21). Variables:
-- n (messages), lo and hi (this chunk's message numbers, 1-based, hi exclusive), start (the
-- year's first instant), tenants, convs, busy. Message i is deterministic: its id, sid,
-- conversation and time follow from i, so chunks can be written in any order and re-run.
--
-- Shapes, per message: every tenth one belongs to one of `busy` very busy conversations (each
-- ~1% of all traffic; their numbers changed hands halfway through the year, so the first half
-- is the previous tenant's), the rest are spread over all conversations. Half inbound (the
-- webhook's form as raw_webhook_data, a routing decision; 7% quarantined, most replayed; one in
-- a thousand an opt-out with its ledger event), half outbound (a send attempt, three status
-- callbacks with Twilio's payloads; 2% undelivered).
\set ON_ERROR_STOP on
SET synchronous_commit = off;

INSERT INTO sms_messages (id, conversation_id, direction, message_content, twilio_sid, delivery_status,
                          raw_webhook_data, from_number, to_number, num_segments, num_media, processed_at,
                          created_at, updated_at, route_status, tenant_id, send_attempts, status_updated_at,
                          encoding, messaging_service_sid, language_detected, language_confidence)
SELECT md5('m' || i)::uuid, md5('c' || k)::uuid, CASE WHEN inbound THEN 'inbound' ELSE 'outbound' END,
       body, sid,
       CASE WHEN inbound THEN 'received' WHEN i % 50 = 3 THEN 'undelivered' ELSE 'delivered' END,
       CASE WHEN inbound THEN jsonb_build_object(
           'ToCountry', 'US', 'ToState', 'CA', 'SmsMessageSid', sid, 'NumMedia', '0', 'ToCity', 'SAN FRANCISCO',
           'FromZip', '94107', 'SmsSid', sid, 'FromState', 'CA', 'SmsStatus', 'received', 'FromCity', 'SAN FRANCISCO',
           'Body', body, 'FromCountry', 'US', 'To', '+14155550100', 'MessagingServiceSid', 'MG' || md5('svc'),
           'ToZip', '94105', 'NumSegments', '1', 'MessageSid', sid, 'AccountSid', 'AC' || md5('account'),
           'From', phone, 'ApiVersion', '2010-04-01') END,
       CASE WHEN inbound THEN phone ELSE '+14155550100' END,
       CASE WHEN inbound THEN '+14155550100' ELSE phone END,
       1 + (i % 97 = 0)::int, 0, at + interval '40 ms', at, at + interval '3 s',
       CASE WHEN NOT inbound THEN NULL WHEN i % 14 = 1 THEN 'unroutable' ELSE 'routed' END,
       tenant, (NOT inbound)::int, CASE WHEN NOT inbound THEN at + interval '3 s' END,
       CASE WHEN NOT inbound THEN 'GSM-7' END, CASE WHEN NOT inbound THEN 'MG' || md5('svc') END,
       CASE WHEN inbound THEN 'en' END, CASE WHEN inbound THEN 0.93 END
FROM generate_series(:lo, :hi - 1) i
CROSS JOIN LATERAL (
    SELECT CASE WHEN i % 10 = 0 THEN 1 + (i / 10) % :busy ELSE 1 + (hashint8(i::bigint)::bigint & 2147483647) % :convs END AS k,
           :'start'::timestamptz + (i::float8 / :n) * interval '365 days' AS at,
           i % 2 = 0 AS inbound,
           'SM' || md5('s' || i) AS sid) p
CROSS JOIN LATERAL (
    SELECT '+1' || (2012000000 + k) AS phone,
           CASE WHEN k <= :busy AND i < :n / 2 THEN 'y-prev-' || k ELSE 'y-' || (1 + (k - 1) % :tenants) END AS tenant,
           CASE WHEN inbound THEN 'Hi, this is about unit ' || (i % 500) || ': the kitchen tap is leaking again, can someone come by this week?'
                ELSE 'Reminder: rent for unit ' || (i % 500) || ' is due on the 1st. Reply HELP for help, STOP to opt out.' END AS body) q;

-- Outbound: the attempt that handed it to Twilio and the three callbacks Twilio sent.
INSERT INTO sms_send_attempts (message_id, attempt, started_at, finished_at, outcome, http_status)
SELECT md5('m' || i)::uuid, 1, at, at + interval '180 ms', 'accepted', 201
FROM generate_series(:lo, :hi - 1) i,
     LATERAL (SELECT :'start'::timestamptz + (i::float8 / :n) * interval '365 days' AS at) p
WHERE i % 2 = 1;

INSERT INTO sms_status_callbacks (message_sid, message_status, our_message_id, error_code, raw, received_at, applied_at)
SELECT 'SM' || md5('s' || i), s.status, md5('m' || i)::uuid, CASE WHEN s.status = 'undelivered' THEN '30003' END,
       jsonb_build_object('SmsSid', 'SM' || md5('s' || i), 'SmsStatus', s.status, 'MessageStatus', s.status,
           'To', '+1' || (2012000000 + 1 + (hashint8(i::bigint)::bigint & 2147483647) % :convs), 'MessagingServiceSid', 'MG' || md5('svc'),
           'MessageSid', 'SM' || md5('s' || i), 'AccountSid', 'AC' || md5('account'), 'From', '+14155550100',
           'ApiVersion', '2010-04-01', 'RawDlrDoneDate', to_char(at, 'YYMMDDHH24MI'),
           'ErrorCode', CASE WHEN s.status = 'undelivered' THEN '30003' END),
       at + s.after, at + s.after + interval '20 ms'
FROM generate_series(:lo, :hi - 1) i,
     LATERAL (SELECT :'start'::timestamptz + (i::float8 / :n) * interval '365 days' AS at) p,
     LATERAL (VALUES ('queued', interval '1 s'), ('sent', interval '2 s'),
                     (CASE WHEN i % 50 = 3 THEN 'undelivered' ELSE 'delivered' END, interval '3 s')) s(status, after)
WHERE i % 2 = 1;

-- Inbound: the routing decision, the quarantine, opt-outs.
INSERT INTO sms_routing_decisions (message_id, attempt, reason, agent_url, agent_status, outcome, latency_ms, decided_at)
SELECT md5('m' || i)::uuid, 1, CASE WHEN i % 14 = 1 THEN 'no_route' ELSE 'tenant' END,
       CASE WHEN i % 14 = 1 THEN NULL ELSE 'https://agents.example.com/sms' END,
       CASE WHEN i % 14 = 1 THEN NULL ELSE 200 END,
       CASE WHEN i % 14 = 1 THEN 'unroutable' ELSE 'delivered' END, 35,
       :'start'::timestamptz + (i::float8 / :n) * interval '365 days' + interval '40 ms'
FROM generate_series(:lo, :hi - 1) i WHERE i % 2 = 0;

INSERT INTO sms_unroutable (message_id, tenant_id, reason, detail, created_at, replayed_at)
SELECT md5('m' || i)::uuid, NULL, 'no_route', 'no route for this tenant, workflow or default', at,
       CASE WHEN i < :n - :n / 100 THEN at + interval '2 hours' END
FROM generate_series(:lo, :hi - 1) i,
     LATERAL (SELECT :'start'::timestamptz + (i::float8 / :n) * interval '365 days' AS at) p
WHERE i % 2 = 0 AND i % 14 = 1;

INSERT INTO sms_opt_out_events (our_number, their_number, change, source, keyword, rule, message_id, tenant_id, occurred_at)
SELECT '+14155550100', '+1' || (2012000000 + 1 + (hashint8(i::bigint)::bigint & 2147483647) % :convs), 'opt_out', 'sms', 'STOP', 'keyword',
       md5('m' || i)::uuid, 'y-' || (1 + ((hashint8(i::bigint)::bigint & 2147483647) % :convs) % :tenants),
       :'start'::timestamptz + (i::float8 / :n) * interval '365 days'
FROM generate_series(:lo, :hi - 1) i WHERE i % 2 = 0 AND i % 1000 = 2;

INSERT INTO sms_opt_outs (our_number, their_number, opted_out, keyword, opt_out_type, message_id, changed_at, rule)
SELECT DISTINCT ON (their_number) our_number, their_number, true, keyword, 'keyword', message_id, occurred_at, rule
FROM sms_opt_out_events WHERE message_id IN (SELECT md5('m' || i)::uuid FROM generate_series(:lo, :hi - 1) i WHERE i % 1000 = 2)
ORDER BY their_number, occurred_at DESC
ON CONFLICT (our_number, their_number) DO UPDATE SET changed_at = EXCLUDED.changed_at, message_id = EXCLUDED.message_id;
