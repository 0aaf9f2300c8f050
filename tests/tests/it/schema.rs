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
