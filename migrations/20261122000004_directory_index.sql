-- The directory index must serve "which tenant has this number" from the first row on: with GIN's
-- fast update, new entries wait in a pending list until a vacuum, and the planner, pricing that
-- list, falls back to a sequential scan. Tenants change rarely, so entries go straight in.
ALTER INDEX tenant_profiles_phone_numbers_idx SET (fastupdate = off);
SELECT gin_clean_pending_list('tenant_profiles_phone_numbers_idx'::regclass);
