-- The operator console (/console): sessions made from an API key at sign-in. Only a hash of the
-- session token is stored; a session ends at its expiry, at sign-out, or when its key is revoked
-- or expires (checked on every request).
CREATE TABLE console_sessions (
    token_hash  TEXT PRIMARY KEY,
    api_key_id  UUID NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    csrf_token  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);

-- Messages in and out per minute over the last hour (the console's health page): a BRIN index
-- on the append-mostly creation time costs next to nothing on insert.
CREATE INDEX sms_messages_created_brin ON sms_messages USING brin (created_at);
