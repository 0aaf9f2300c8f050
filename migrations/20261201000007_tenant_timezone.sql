-- The tenant's time zone (IANA, e.g. America/Chicago) when known, from the Monitor or the tenants
-- API: quiet hours use it before the zones of the number's prefix.
ALTER TABLE tenant_profiles ADD COLUMN timezone TEXT;
