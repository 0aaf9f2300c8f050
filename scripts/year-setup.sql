-- The directory for scripts/bench-year.sh's messages (year.sql): `tenants` tenants holding
-- `convs` numbers round-robin (conversation k's number is +1 (2012000000 + k), its tenant
-- y-(1 + (k - 1) % tenants)); the `busy` busiest numbers' previous owners (y-prev-k) hold no
-- number now.
\set ON_ERROR_STOP on
INSERT INTO tenant_profiles (tenant_id, name, phone_numbers, created_at)
SELECT 'y-' || g, 'Tenant ' || g,
       (SELECT jsonb_agg('+1' || (2012000000 + k)) FROM generate_series(g, :convs, :tenants) k),
       :'start'::timestamptz - interval '30 days'
FROM generate_series(1, :tenants) g;
INSERT INTO tenant_profiles (tenant_id, name, created_at)
SELECT 'y-prev-' || k, 'Previous owner of busy number ' || k, :'start'::timestamptz - interval '60 days'
FROM generate_series(1, :busy) k;
INSERT INTO sms_conversations (id, phone_number, phone_number_original, tenant_id, last_message_at, created_at,
                               language_detected, language_confidence)
SELECT md5('c' || k)::uuid, '+1' || (2012000000 + k), '+1' || (2012000000 + k), 'y-' || (1 + (k - 1) % :tenants),
       :'start'::timestamptz + interval '365 days', :'start'::timestamptz, 'en', 0.93
FROM generate_series(1, :convs) k;
