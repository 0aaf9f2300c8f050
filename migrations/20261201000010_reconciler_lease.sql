-- One reconciler pass at a time across replicas. A lease row, not a session advisory lock: behind a
-- transaction pooler (PgBouncer, Supabase) a session lock and its unlock can land on different
-- server connections, leaving the lock held and every later pass skipped. A lease works through
-- any pooler and expires by itself if its holder dies.
CREATE TABLE reconciler_lease (
    id          BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
