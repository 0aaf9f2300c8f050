//! The service through a real PgBouncer in transaction mode (Debian's package), as behind
//! Supabase's transaction pooler: migrations from several replicas at once, the whole pipeline
//! with the real binaries, and readiness naming what is wrong with the database.

use std::{collections::HashMap, time::Duration};

use harness::{
    app::{Settings, TestApp, wait_until},
    pg,
    pgbouncer::PgBouncer,
    proxy::CommitCutter,
    sims,
};
use serde_json::{Value, json};
use shared::jobs;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection};

/// A PgBouncer in transaction mode in front of the per-process cluster, with `pool_size` server
/// connections.
async fn bouncer(pool_size: u32) -> PgBouncer {
    let server = tokio::task::spawn_blocking(pg::server_url).await.unwrap();
    tokio::task::spawn_blocking(move || PgBouncer::start(&server, pool_size))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn common(url: &str, mode: &str) -> shared::config::Common {
    let settings: HashMap<String, String> = [
        ("DATABASE_URL", url),
        ("DATABASE_POOL_MODE", mode),
        ("DATABASE_MAX_CONNECTIONS", "4"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    shared::config::Common::load(&settings, 4, std::time::Duration::from_secs(5)).unwrap()
}

/// Three replicas starting at once on an empty database, through a transaction pooler with two
/// server connections: the migrations are applied once, and no lock is left behind (a session
/// advisory lock's unlock would land on another server connection and stay held).
#[tokio::test]
async fn replicas_migrate_an_empty_database_at_once_through_a_transaction_pooler() {
    let server = tokio::task::spawn_blocking(pg::server_url).await.unwrap();
    let name = format!("test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&server).await.unwrap();
    admin
        .execute(AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .unwrap();
    let pgb = bouncer(2).await;
    let cfg = common(&pgb.url(&name), "transaction");
    let runs = (0..3).map(|_| {
        let pool = shared::db::lazy_pool(&cfg).unwrap();
        async move { shared::db::migrate(&pool).await }
    });
    for result in futures::future::join_all(runs).await {
        result.unwrap_or_else(|e| panic!("migration through PgBouncer: {e:#}\n{}", pgb.log_tail()));
    }
    let mut direct = url::Url::parse(&server).unwrap();
    direct.set_path(&name);
    let mut db = PgConnection::connect(direct.as_str()).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut db)
        .await
        .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files, "each migration applied once");
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
         WHERE l.locktype = 'advisory' AND d.datname = $1",
    )
    .bind(&name)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(locks, 0, "no advisory lock left held");
    // A fourth replica later finds nothing to do.
    shared::db::migrate(&shared::db::lazy_pool(&cfg).unwrap())
        .await
        .unwrap();
    db.close().await.unwrap();
    assert!(pgb.problems().is_empty(), "{:?}", pgb.problems());
    let _ = admin
        .execute(AssertSqlSafe(format!(
            r#"DROP DATABASE "{name}" WITH (FORCE)"#
        )))
        .await;
}

/// Statements through the pooler from many clients over fewer server connections: sqlx's named
/// statements would collide ("already exists") or go missing ("does not exist"); ours are
/// unnamed and parsed and executed in one sequence. Errors inside a sequence leave the
/// connection usable.
#[tokio::test]
async fn many_clients_share_few_server_connections_without_statement_errors() {
    let db = pg::fresh_db().await;
    let pgb = bouncer(2).await;
    let mut cfg = common(&pgb.url(&db.name), "transaction");
    cfg.database_max_connections = 16;
    let pool = shared::db::lazy_pool(&cfg).unwrap();
    let work = (0..64i64).map(|i| {
        let pool = pool.clone();
        async move {
            for j in 0..20i64 {
                let n: i64 = sqlx::query_scalar("SELECT $1::bigint + $2::bigint")
                    .bind(i)
                    .bind(j)
                    .fetch_one(&pool)
                    .await?;
                assert_eq!(n, i + j);
                // A statement that fails to parse, then one that fails to execute.
                assert!(
                    sqlx::query("SELEC $1")
                        .bind(1)
                        .execute(&pool)
                        .await
                        .is_err()
                );
                assert!(
                    sqlx::query_scalar::<_, i32>("SELECT 1 / $1::int")
                        .bind(0)
                        .fetch_one(&pool)
                        .await
                        .is_err()
                );
                let mut tx = pool.begin().await?;
                let m: i64 = sqlx::query_scalar("SELECT $1::bigint")
                    .bind(j)
                    .fetch_one(&mut *tx)
                    .await?;
                assert_eq!(m, j);
                tx.commit().await?;
            }
            Ok::<_, sqlx::Error>(())
        }
    });
    for r in futures::future::join_all(work).await {
        r.unwrap_or_else(|e| panic!("{e}\n{}", pgb.log_tail()));
    }
}

/// The connection lost during COMMIT (the server committed, the answer never came): the API
/// answers 503 `commit_unknown`, never 500 (which promises nothing was stored); the retry with the
/// same Idempotency-Key gets the first answer and the message is sent once. (Webhooks are stored
/// by one statement, idempotent by MessageSid: Twilio's retry of an unanswered one is stored once.)
#[tokio::test]
async fn a_commit_whose_answer_is_lost_is_503_and_the_retry_applies_it_once() {
    let tw = sims::twilio().await;
    let db = pg::fresh_db().await;
    let upstream = url::Url::parse(&db.url).unwrap();
    let upstream = format!(
        "{}:{}",
        upstream.host_str().unwrap(),
        upstream.port().unwrap()
    );
    let proxy = CommitCutter::start(upstream.parse().unwrap()).await;
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("DATABASE_URL", proxy.url(&db.url))
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0"),
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let send = || {
        app.http
            .post(app.url("/sms/send"))
            .bearer_auth(&key)
            .header("idempotency-key", "rent-reminder-7")
            .json(&json!({"to": "+14155550123", "body": "Rent is due on the 1st"}))
            .send()
    };

    proxy.cut_next_commits(1);
    let first = send().await.unwrap();
    assert_eq!(proxy.cuts(), 1, "the COMMIT was cut");
    assert_eq!(first.status(), 503);
    assert!(first.headers().contains_key("retry-after"));
    let body: Value = first.json().await.unwrap();
    assert_eq!(body["code"], "commit_unknown", "{body}");
    // The server reads the COMMIT before the closed socket, but may finish it after our 503
    // arrived: a moment under load.
    wait_until(Duration::from_secs(10), || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sms_messages WHERE direction = 'outbound'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
            == 1
    })
    .await
    .expect("the server did commit");

    let retry = send().await.unwrap();
    assert_eq!(retry.status(), 202);
    let retry: Value = retry.json().await.unwrap();
    let id: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM sms_messages WHERE direction = 'outbound'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(retry["message_id"], id.to_string(), "the first answer");

    app.start_worker(&[jobs::OUTBOUND_SEND]).await;
    wait_until(Duration::from_secs(20), || async {
        tw.stats().creates >= 1
    })
    .await
    .expect("sent");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tw.stats().creates, 1, "sent once");
}

/// `/health/ready` says why the database cannot be used: nothing listening is `unreachable`, a
/// database the server does not have is `refused` with the server's words (on the operations
/// listener only), and a PgBouncer as installed accepts our connections (no startup parameter it
/// refuses).
#[tokio::test]
async fn readiness_names_why_the_database_cannot_be_used() {
    let db = pg::fresh_db().await;
    let ready = |url: String, mode: &str| {
        let settings = Settings::new(&db)
            .set("DATABASE_URL", url)
            .set("DATABASE_POOL_MODE", mode)
            .set("DATABASE_ACQUIRE_TIMEOUT_MS", "500");
        async move {
            let app = TestApp::spawn(settings).await;
            let public: Value = app
                .http
                .get(app.url("/health/ready"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert!(
                public["checks"].get("database_reason").is_none(),
                "{public}"
            );
            let resp = app
                .http
                .get(format!("{}/health/ready", app.ops_url))
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    let closed = pg::free_port().unwrap();
    let (status, body) = ready(
        format!("postgres://postgres@127.0.0.1:{closed}/sms"),
        "session",
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["database"], "unreachable", "{body}");

    let mut missing = url::Url::parse(&db.url).unwrap();
    missing.set_path("no_such_database");
    let (status, body) = ready(missing.to_string(), "session").await;
    assert_eq!(status, 503);
    assert_eq!(body["checks"]["database"], "refused", "{body}");
    assert!(
        body["checks"]["database_reason"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{body}"
    );

    let pgb = bouncer(2).await;
    let (status, body) = ready(pgb.url(&db.name), "transaction").await;
    assert_eq!(status, 200, "{body}\n{}", pgb.log_tail());
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["database_pool_mode"], "transaction");
}

/// Told nothing, the binaries ask: through PgBouncer in transaction mode the probe finds a
/// transaction pooler (two clients' statements served by one server connection); Postgres
/// itself keeps sessions.
#[tokio::test]
async fn a_transaction_pooler_is_detected_and_postgres_itself_is_not() {
    let db = pg::fresh_db().await;
    let pgb = bouncer(2).await;
    let through = shared::db::detect_pool_mode(&pgb.url(&db.name))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", pgb.log_tail()));
    assert_eq!(through.as_str(), harness::pgbouncer::expected_mode());
    let direct = shared::db::detect_pool_mode(&db.url).await.unwrap();
    assert_eq!(direct, shared::config::PoolMode::Session);

    // Settled without DATABASE_POOL_MODE: the pool then works through the pooler (unnamed
    // statements), where session mode's named statements would collide.
    let mut cfg = common(&pgb.url(&db.name), "session");
    cfg.database_pool_mode_known = false;
    shared::db::settle_pool_mode(&mut cfg).await;
    assert_eq!(
        cfg.database_pool_mode.as_str(),
        harness::pgbouncer::expected_mode()
    );
    let pool = shared::db::lazy_pool(&cfg).unwrap();
    let sums = (0..32i64).map(|i| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT $1::bigint * 2")
                .bind(i)
                .fetch_one(&pool)
                .await
        }
    });
    for (i, r) in futures::future::join_all(sums)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(r.unwrap(), i as i64 * 2);
    }
}
