-- Every worker caches "which tenant has this number". When a tenant's numbers change (a number
-- moves to another tenant, is removed, or is added), the numbers concerned are noted here by a
-- trigger, whoever made the change (the API, the Monitor copy, psql), and each worker drops them
-- from its cache within a second (`shared::tenants::TenantResolver::follow_changes`). Rows older
-- than a day are deleted by the reconciler.
CREATE TABLE directory_changes (
    id            BIGSERIAL PRIMARY KEY,
    phone_number  TEXT NOT NULL,
    changed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE FUNCTION note_directory_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO directory_changes (phone_number)
    SELECT n FROM (
        SELECT jsonb_array_elements_text(CASE WHEN TG_OP = 'INSERT' THEN '[]'::jsonb ELSE OLD.phone_numbers END) AS n
        UNION
        SELECT jsonb_array_elements_text(CASE WHEN TG_OP = 'DELETE' THEN '[]'::jsonb ELSE NEW.phone_numbers END)
    ) numbers
    -- An update notes only the numbers it added or removed.
    WHERE TG_OP <> 'UPDATE' OR NOT (OLD.phone_numbers ? n AND NEW.phone_numbers ? n);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenant_profiles_directory_change
    AFTER INSERT OR DELETE OR UPDATE OF phone_numbers ON tenant_profiles
    FOR EACH ROW EXECUTE FUNCTION note_directory_change();
