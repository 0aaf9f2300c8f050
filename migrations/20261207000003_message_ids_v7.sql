-- New messages get time-ordered ids (UUIDv7: 48 bits of milliseconds, then random bits), so
-- each insert lands at the right edge of the primary key's B-tree instead of a random page of
-- it: on a table of millions, random ids make every insert read and dirty an index page that is
-- rarely in memory (issue 21). Ids already stored keep their values; both kinds are UUIDs, so
-- nothing that reads them changes. PostgreSQL 18 has uuidv7(); this is the same layout for 15.
SET lock_timeout = '5s';
SET statement_timeout = '30s';

CREATE FUNCTION sms_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    -- gen_random_uuid()'s bytes with the first six replaced by the Unix time in milliseconds,
    -- and the version nibble turned from 4 (0100) to 7 (0111).
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
               PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
               FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;

-- A default's change is a catalog update: brief, and old binaries (which never name the id on
-- insert) get the new ids too.
ALTER TABLE sms_messages ALTER COLUMN id SET DEFAULT sms_uuid_v7();
