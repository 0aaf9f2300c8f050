//! The test database harness itself: every test gets its own migrated database on a real server.
//! The two tests run in parallel on separate runtimes, sharing one server and template.

use harness::pg::{self, TestDb};

async fn table_exists(db: &TestDb, table: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// Creates `probe` in a fresh database, writes `marker`, and checks that nothing else is there and
/// that another fresh database does not see it.
async fn isolated(marker: &str) {
    let db = pg::fresh_db().await;
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(current, db.name);
    assert!(db.url.ends_with(&format!("/{}", db.name)), "{}", db.url);
    assert!(db.name.starts_with("test_"));
    assert!(
        table_exists(&db, "sms_messages").await,
        "our migrations ran"
    );
    assert!(
        table_exists(&db, "apalis.jobs").await,
        "apalis's migrations ran"
    );

    // Both tests use the same table name: shared databases would collide or mix rows.
    sqlx::query("CREATE TABLE probe (marker text NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO probe (marker) VALUES ($1)")
        .bind(marker)
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let rows: Vec<String> = sqlx::query_scalar("SELECT marker FROM probe")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, [marker]);

    let other = pg::fresh_db_with(2).await;
    assert_ne!(other.name, db.name);
    assert!(
        !table_exists(&other, "probe").await,
        "{marker}'s table leaked"
    );
    assert!(table_exists(&other, "sms_messages").await);

    // The admin URL reaches the same server and sees both databases.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg::server_url())
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname IN ($1, $2)")
        .bind(&db.name)
        .bind(&other.name)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn database_a_is_isolated() {
    isolated("a").await;
}

#[tokio::test]
async fn database_b_is_isolated() {
    isolated("b").await;
}
