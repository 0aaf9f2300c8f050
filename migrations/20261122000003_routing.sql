-- Routing inbound messages to the agent that serves their tenant.

-- A route names an agent (URL + signing secret) by tenant (most specific), by workflow type, or as
-- the default; exactly one of the three per route.
CREATE TABLE agent_routes (
    id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id       TEXT,
    workflow_type   TEXT,
    is_default      BOOLEAN NOT NULL DEFAULT false,
    agent_url       TEXT NOT NULL,
    signing_secret  TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((tenant_id IS NOT NULL)::int + (workflow_type IS NOT NULL)::int + is_default::int = 1)
);
CREATE UNIQUE INDEX agent_routes_tenant_key ON agent_routes (tenant_id) WHERE tenant_id IS NOT NULL;
CREATE UNIQUE INDEX agent_routes_workflow_key ON agent_routes (workflow_type) WHERE workflow_type IS NOT NULL;
CREATE UNIQUE INDEX agent_routes_default_key ON agent_routes (is_default) WHERE is_default;

ALTER TABLE sms_messages
    ADD COLUMN route_status TEXT CHECK (route_status IN ('pending', 'routed', 'unroutable', 'skipped'));

-- Every routing decision: which route and why, the agent's answer and how long it took.
CREATE TABLE sms_routing_decisions (
    id           BIGSERIAL PRIMARY KEY,
    message_id   UUID NOT NULL REFERENCES sms_messages (id),
    attempt      INTEGER NOT NULL,
    route_id     UUID,
    reason       TEXT NOT NULL,
    agent_url    TEXT,
    agent_status INTEGER,
    outcome      TEXT NOT NULL,
    detail       TEXT,
    latency_ms   INTEGER,
    decided_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sms_routing_decisions_message_idx ON sms_routing_decisions (message_id, id);

-- The quarantine: messages that could not be routed, for the operator to list and replay.
CREATE TABLE sms_unroutable (
    message_id   UUID PRIMARY KEY REFERENCES sms_messages (id),
    tenant_id    TEXT,
    reason       TEXT NOT NULL,
    detail       TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    replayed_at  TIMESTAMPTZ
);
CREATE INDEX sms_unroutable_open_idx ON sms_unroutable (created_at) WHERE replayed_at IS NULL;
CREATE INDEX sms_unroutable_tenant_idx ON sms_unroutable (tenant_id, created_at);
