-- API key lifecycle: an optional expiry (checked on every request, so an expired key is refused
-- at once on every replica) and when the key was last used (written at most once a minute).
ALTER TABLE api_keys
    ADD COLUMN expires_at TIMESTAMPTZ,
    ADD COLUMN last_used_at TIMESTAMPTZ;
