//! Properties of the migrated schema that every later migration must keep.

use harness::pg;

/// Every foreign key has an index starting with its column: deleting or re-keying the row it
/// points at checks the referencing table, a sequential scan without one (issue 21: 94% of the
/// cost of deleting one message on a year of data).
#[tokio::test]
async fn every_foreign_key_has_the_index_its_checks_need() {
    let db = pg::fresh_db().await;
    let missing: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT c.conrelid::regclass::text, a.attname::text, c.conname::text
         FROM pg_constraint c
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
         WHERE c.contype = 'f'
           AND NOT EXISTS (
               SELECT 1 FROM pg_index i
               WHERE i.indrelid = c.conrelid
                 AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] = c.conkey)
         ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(count >= 10, "foreign keys found: {count}");
    assert!(
        missing.is_empty(),
        "foreign keys without an index: {missing:?}"
    );
}

/// Every status list the schema holds (CHECK constraints, the reconciler's partial index) is
/// the enum the code writes from: adding a state to an enum without its migration, or the other
/// way round, fails here rather than as a constraint violation in production.
#[tokio::test]
async fn every_status_list_in_the_schema_is_the_enums() {
    use shared::{
        delivery::{self, AttemptOutcome, Evidence, ReconcileStopped},
        routing::{RouteReason, RouteStatus},
        twilio::status::DeliveryStatus,
    };
    use std::collections::BTreeSet;
    use worker::route::{Quarantine, RoutingOutcome};

    let db = pg::fresh_db().await;
    // The quoted literals of a definition (`... = ANY (ARRAY['a'::text, 'b'::text])`).
    let literals = |def: &str| -> BTreeSet<String> {
        def.split('\'')
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, l)| l.to_owned())
            .collect()
    };
    let set =
        |items: Vec<&str>| -> BTreeSet<String> { items.into_iter().map(str::to_owned).collect() };
    let cases: Vec<(&str, &str, BTreeSet<String>)> = vec![
        (
            "sms_messages",
            "delivery_status",
            set(DeliveryStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_messages",
            "route_status",
            set(RouteStatus::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_messages",
            "reconcile_stopped",
            set(ReconcileStopped::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_send_attempts",
            "outcome",
            set(AttemptOutcome::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_send_attempts",
            "evidence",
            set(Evidence::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_routing_decisions",
            "reason",
            set(RouteReason::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_routing_decisions",
            "outcome",
            set(RoutingOutcome::ALL.iter().map(|s| s.as_str()).collect()),
        ),
        (
            "sms_unroutable",
            "reason",
            set(Quarantine::ALL.iter().map(|s| s.as_str()).collect()),
        ),
    ];
    for (table, column, expected) in cases {
        let defs: Vec<String> = sqlx::query_scalar(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
             WHERE c.contype = 'c' AND c.conrelid = $1::regclass AND a.attname = $2",
        )
        .bind(table)
        .bind(column)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(defs.len(), 1, "one CHECK on {table}.{column}: {defs:?}");
        assert_eq!(
            literals(&defs[0]),
            expected,
            "{table}.{column}: {}",
            defs[0]
        );
    }
    // The reconciler's index holds exactly what it can act on: the open statuses at Twilio, with
    // a sid, not stopped.
    let index: String =
        sqlx::query_scalar("SELECT pg_get_indexdef('sms_messages_reconcilable_idx'::regclass)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let mut covered = literals(&index);
    covered.remove("outbound");
    assert_eq!(
        covered,
        set(delivery::open_at_twilio()),
        "the reconciler's index: {index}"
    );
    for condition in ["(twilio_sid IS NOT NULL)", "(reconcile_stopped IS NULL)"] {
        assert!(index.contains(condition), "{condition} missing: {index}");
    }
    let old: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('sms_messages_outbound_open_idx')::text")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(old, None, "the index it replaced is gone");
}

/// New messages get UUIDv7 ids (version 7, the creation time in milliseconds in front), so
/// inserts append to the primary key's B-tree rather than scattering over it (issue 21); ids
/// stored before keep theirs, and a v4 id given explicitly is still accepted.
#[tokio::test]
async fn new_message_ids_are_time_ordered() {
    let db = pg::fresh_db().await;
    let mut ids: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)> = Vec::new();
    for _ in 0..5 {
        ids.push(
            sqlx::query_as(
                "INSERT INTO sms_messages (direction, delivery_status) VALUES ('inbound', 'received')
                 RETURNING id, clock_timestamp()",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap(),
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    for (id, at) in &ids {
        assert_eq!(id.get_version_num(), 7, "{id}");
        let (secs, nanos) = id.get_timestamp().expect("a v7 id has a time").to_unix();
        let ms = secs as i64 * 1000 + i64::from(nanos / 1_000_000);
        let drift = at.timestamp_millis() - ms;
        assert!(
            (0..1000).contains(&drift),
            "{id}: {drift} ms from its insert"
        );
    }
    assert!(ids.windows(2).all(|w| w[0].0 < w[1].0), "ordered: {ids:?}");
    let v4 = uuid::Uuid::new_v4();
    let stored: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO sms_messages (id, direction, delivery_status) VALUES ($1, 'inbound', 'received') RETURNING id",
    )
    .bind(v4)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored, v4);
}
