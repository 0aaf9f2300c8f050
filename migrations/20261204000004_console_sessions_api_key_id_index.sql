-- no-transaction
-- The index the foreign key on console_sessions.api_key_id needs: removing a key checks the
-- console's sessions for references to it, a sequential scan without this index.
-- CONCURRENTLY, alone in its file (a multi-statement file is one implicit transaction).
-- squawk-ignore require-lock-timeout, require-statement-timeout
CREATE INDEX CONCURRENTLY IF NOT EXISTS console_sessions_api_key_id_idx
    ON console_sessions (api_key_id);
