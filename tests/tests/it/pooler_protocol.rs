//! The vendored `sqlx-postgres` patch (vendor/README.md) through a real PgBouncer in transaction
//! mode with ONE server connection, so that every client shares it and anything one client leaves
//! half done (a sequence without its Sync, a failed transaction, a named statement) is met by the
//! next: failed Parses in transactions, futures dropped at every await point, a custom enum and an
//! array of it, and `describe`.

use std::{future::Future, task::Poll, time::Duration};

use harness::{pg, pgbouncer::PgBouncer};
use sqlx::{
    AssertSqlSafe, Connection, Executor, PgConnection, SqlSafeStr,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// A custom type only the server knows: its OID is not built into sqlx.
#[derive(sqlx::Type, Debug, Clone, Copy, PartialEq)]
#[sqlx(type_name = "pooler_mood", rename_all = "lowercase")]
enum Mood {
    Calm,
    Cross,
}

/// A fresh database with the enum type, a PgBouncer with one server connection in front of it,
/// and options through it with the statement cache off (how the service connects in transaction
/// mode).
async fn setup() -> (pg::TestDb, PgBouncer, PgConnectOptions) {
    let db = pg::fresh_db().await;
    db.pool
        .execute("CREATE TYPE pooler_mood AS ENUM ('calm', 'cross')")
        .await
        .unwrap();
    let server = tokio::task::spawn_blocking(pg::server_url).await.unwrap();
    let pgb = tokio::task::spawn_blocking(move || PgBouncer::start(&server, 1))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let options =
        shared::db::connect_options(&pgb.url(&db.name), shared::config::PoolMode::Transaction)
            .unwrap();
    (db, pgb, options)
}

/// Polls `fut` and drops it when it answers Pending for the `n`th time (0: the first); true if it
/// finished first.
async fn drop_at_pending<F: Future>(fut: F, n: usize) -> bool {
    let mut fut = std::pin::pin!(fut);
    let mut pendings = 0;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(_) => Poll::Ready(true),
        Poll::Pending if pendings == n => Poll::Ready(false),
        Poll::Pending => {
            pendings += 1;
            Poll::Pending
        }
    })
    .await
}

/// The connection (and the one server connection behind it) answers correctly, within a bound: a
/// sequence left without its Sync would leave it waiting for a ReadyForQuery forever.
async fn answers<'c>(conn: impl sqlx::PgExecutor<'c>, n: i64, what: &str) {
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar::<_, i64>("SELECT $1::int8 * 2")
            .bind(n)
            .fetch_one(conn),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: the connection no longer answers"))
    .unwrap_or_else(|e| panic!("{e}: {what}"));
    assert_eq!(got, n * 2, "{what}");
}

/// Server sessions of the database left inside a transaction (PgBouncer would hand such a server
/// connection to the next client).
async fn stuck_in_transaction(db: &pg::TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND state LIKE 'idle in transaction%'",
    )
    .bind(&db.name)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_failed_parse_inside_a_transaction_rolls_back_and_the_server_connection_is_reused() {
    let (db, pgb, options) = setup().await;
    let mut a = PgConnection::connect_with(&options).await.unwrap();
    let mut b = PgConnection::connect_with(&options).await.unwrap();
    for round in 0..3i64 {
        let mut tx = a.begin().await.unwrap();
        let err = sqlx::query("SELECT no_such_column FROM (SELECT $1::int4) t")
            .bind(1)
            .execute(&mut *tx)
            .await
            .expect_err("the Parse fails");
        assert!(err.to_string().contains("no_such_column"), "{err}");
        // The transaction is aborted: further statements fail until ROLLBACK.
        assert!(
            sqlx::query("SELECT $1::int4")
                .bind(1)
                .execute(&mut *tx)
                .await
                .is_err()
        );
        tx.rollback()
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", pgb.log_tail()));
        answers(&mut a, round, "after ROLLBACK").await;
        answers(
            &mut b,
            round,
            "the other client on the same server connection",
        )
        .await;
        // A statement that parses but fails when executed, then COMMIT of the aborted
        // transaction (the server answers ROLLBACK).
        let mut tx = b.begin().await.unwrap();
        assert!(
            sqlx::query_scalar::<_, i32>("SELECT 1 / $1::int4")
                .bind(0)
                .fetch_one(&mut *tx)
                .await
                .is_err()
        );
        let _ = tx.commit().await;
        answers(&mut a, round, "after the aborted commit").await;
    }
    assert_eq!(stuck_in_transaction(&db).await, 0);
    assert!(pgb.problems().is_empty(), "{:?}", pgb.problems());
}

/// Every query kind dropped at each of its await points, first executions (the description is
/// asked for) and later ones (described already), inside and outside a transaction, on a pool of
/// one connection as the service holds them (on release sqlx pings a connection and replaces it if
/// the ping fails): each time the pool answers the next query correctly, so does another client on
/// the same server connection, and no server session is left in a transaction. The first cut of
/// the patch failed here: a Parse that failed under a Flush was dropped before its Sync was
/// written, and the next query waited forever for a ReadyForQuery.
#[tokio::test]
async fn query_futures_dropped_at_every_await_leave_the_connection_usable() {
    let (db, pgb, options) = setup().await;
    let mut other = PgConnection::connect_with(&options).await.unwrap();
    let queries: [&str; 4] = [
        "SELECT $1::int4 + 1, ARRAY['calm', 'cross']::pooler_mood[]",
        "SELECT $1::pooler_mood",
        "SELECT no_such_column FROM (SELECT $1::int4) t",
        "SELECT 1 / ($1::int4 - $1::int4)",
    ];
    let mut points = 0;
    for sql in queries {
        for warmed in [false, true] {
            for in_transaction in [false, true] {
                let mut n = 0;
                loop {
                    let pool = PgPoolOptions::new()
                        .max_connections(1)
                        .connect_with(options.clone())
                        .await
                        .unwrap();
                    let mut conn = pool.acquire().await.unwrap();
                    if warmed {
                        let _ = run(&mut conn, sql).await;
                    }
                    let finished = if in_transaction {
                        let mut tx = conn.begin().await.unwrap();
                        let finished = drop_at_pending(run(&mut tx, sql), n).await;
                        drop(tx);
                        finished
                    } else {
                        drop_at_pending(run(&mut conn, sql), n).await
                    };
                    drop(conn);
                    let what = format!(
                        "{sql:?} dropped at pending {n} (warmed {warmed}, transaction {in_transaction})\n{}",
                        pgb.log_tail()
                    );
                    answers(&pool, n as i64, &what).await;
                    answers(&mut other, n as i64, &what).await;
                    pool.close().await;
                    if finished {
                        break;
                    }
                    n += 1;
                    points += 1;
                    assert!(n < 500, "{sql:?} never finished");
                }
            }
        }
    }
    // 12 to 28 in runs here (a loaded machine may answer within one poll, leaving fewer)
    assert!(points >= 4, "only {points} await points were reached");
    assert_eq!(stuck_in_transaction(&db).await, 0);
    // A connection whose ping fails on release is closed at once, sometimes before the server's
    // last answer: PgBouncer then notes a ReadyForQuery for no client, and resets the server
    // connection (which `other` went on using above).
    let problems: Vec<String> = pgb
        .problems()
        .into_iter()
        .filter(|l| !l.contains("from server when not linked"))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
}

/// One of the queries above, with the parameter its SQL takes.
async fn run(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    let query = sqlx::query(AssertSqlSafe(sql.to_owned()));
    let query = if sql.starts_with("SELECT $1::pooler_mood") {
        query.bind(Mood::Cross)
    } else {
        query.bind(7i32)
    };
    query.fetch_all(conn).await.map(|_| ())
}

/// A custom enum and an array of it, in results (the first time on a connection, when its OID is
/// not known yet) and as parameters, decoded into Rust types.
#[tokio::test]
async fn a_custom_enum_and_an_array_of_it_round_trip() {
    let (_db, pgb, options) = setup().await;
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    // Results only: the row's types are first seen in this statement's description.
    let (one, many): (Mood, Vec<Mood>) =
        sqlx::query_as("SELECT 'cross'::pooler_mood, ARRAY['calm', 'cross']::pooler_mood[]")
            .fetch_one(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", pgb.log_tail()));
    assert_eq!((one, many), (Mood::Cross, vec![Mood::Calm, Mood::Cross]));
    // As parameters, on a fresh connection and through a pool of several.
    let pool = PgPoolOptions::new()
        .max_connections(3)
        .connect_with(options.clone())
        .await
        .unwrap();
    for _ in 0..10 {
        let (one, many): (Mood, Vec<Mood>) = sqlx::query_as("SELECT $1, $2")
            .bind(Mood::Calm)
            .bind(vec![Mood::Cross, Mood::Calm])
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!((one, many), (Mood::Calm, vec![Mood::Cross, Mood::Calm]));
    }
    let nulls: Vec<Option<Mood>> = sqlx::query_scalar("SELECT NULLIF($1, 'calm'::pooler_mood)")
        .bind(Mood::Calm)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(nulls, vec![None]);
    assert!(pgb.problems().is_empty(), "{:?}", pgb.problems());
}

/// `describe` (what sqlx's macros ask) with the statement cache off, through the pooler, answers
/// what it answers on a direct connection with the cache on: columns, parameters and nullability
/// (EXPLAIN's included, which needs a named statement); that statement is closed, so a second
/// client describing on the same server connection does not collide with it.
#[tokio::test]
async fn describe_works_with_the_statement_cache_off() {
    let (db, pgb, options) = setup().await;
    db.pool
        .execute(
            "CREATE TABLE described (id int8 PRIMARY KEY, mood pooler_mood NOT NULL, note text)",
        )
        .await
        .unwrap();
    let sql = "SELECT d.id, d.mood, d.note, o.mood AS next_mood, count(*) OVER () AS n
               FROM described d LEFT JOIN described o ON o.id = d.id + 1 WHERE d.id = $1";
    let summary = |d: sqlx::Describe<sqlx::Postgres>| {
        let columns: Vec<(String, String)> = d
            .columns
            .iter()
            .map(|c| {
                let ty = sqlx::TypeInfo::name(sqlx::Column::type_info(c));
                (sqlx::Column::name(c).to_owned(), ty.to_owned())
            })
            .collect();
        let parameters = match d.parameters {
            Some(sqlx::Either::Left(p)) => p.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            other => panic!("parameters: {other:?}"),
        };
        (columns, d.nullable, parameters)
    };
    let mut direct = db.pool.acquire().await.unwrap();
    let expected = summary(
        (&mut *direct)
            .describe(AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .unwrap(),
    );
    assert_eq!(expected.0[1], ("mood".to_owned(), "pooler_mood".to_owned()));
    assert_eq!(expected.2, ["INT8"]);
    for _ in 0..2 {
        let mut conn = PgConnection::connect_with(&options).await.unwrap();
        let described = (&mut conn)
            .describe(AssertSqlSafe(sql.to_owned()).into_sql_str())
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", pgb.log_tail()));
        assert_eq!(summary(described), expected);
        answers(&mut conn, 3, "after describe").await;
        conn.close().await.unwrap();
    }
    assert_eq!(stuck_in_transaction(&db).await, 0);
    assert!(pgb.problems().is_empty(), "{:?}", pgb.problems());
}
