//! The usage ledger (issue 21): triggers keep per-day counts in the transactions that change
//! messages, the reconciler folds them, `/usage` reads days. Checked against a full count of the
//! messages after a random mix of concurrent inserts, status changes, late tenant attribution,
//! conversation links, deletes and rollbacks, with folds running in between. The health chart's
//! per-minute counts, kept by the same trigger and compacted on the same timer, likewise.

use chrono::{DateTime, Days, NaiveDate, Utc};
use harness::pg;
use rand::{Rng, SeedableRng, rngs::StdRng};
use shared::{
    traffic,
    usage::{self, Row},
};
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

const TENANTS: [Option<&str>; 4] = [Some("t-1"), Some("t-2"), Some("t|3"), None];
const STATUSES: [&str; 6] = [
    "pending",
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "received",
];

/// Every row of the window, walked page by page (a small page, so the cursor is exercised).
async fn all_pages(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let page = usage::page(pool, from, to, tenant, after.as_ref(), 3)
            .await
            .unwrap();
        assert!(page.rows.len() <= 3);
        rows.extend(page.rows);
        match page.next {
            Some(next) => after = Some(next),
            None => return rows,
        }
    }
}

/// The same answer counted from the messages themselves.
async fn full_count(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
) -> Vec<Row> {
    let rows: Vec<(String, String, String, i64, i64)> = sqlx::query_as(
        "SELECT COALESCE(tenant_id, ''), direction, delivery_status, count(*),
                COALESCE(sum(num_segments), 0)::bigint
         FROM sms_messages
         WHERE conversation_id IS NOT NULL
           AND created_at >= $1::date AT TIME ZONE 'UTC' AND created_at < $2::date AT TIME ZONE 'UTC'
           AND ($3::text IS NULL OR tenant_id = $3)
         GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .bind(from)
    .bind(to)
    .bind(tenant)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, direction, status, messages, segments)| Row {
            tenant_id: (!t.is_empty()).then_some(t),
            direction,
            status,
            messages,
            segments,
        })
        .collect()
}

async fn setup(pool: &PgPool) -> Vec<Uuid> {
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, name) VALUES ('t-1', 'One'), ('t-2', 'Two'), ('t|3', 'Three')",
    )
    .execute(pool)
    .await
    .unwrap();
    let mut conversations = Vec::new();
    for i in 0..5 {
        let phone = format!("+1415555{i:04}");
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO sms_conversations (phone_number, phone_number_original) VALUES ($1, $1) RETURNING id",
        )
        .bind(phone)
        .fetch_one(pool)
        .await
        .unwrap();
        conversations.push(id);
    }
    conversations
}

/// The health chart's last hour, from the per-minute counts, equals a count of the messages.
async fn chart_matches(pool: &PgPool, seed: u64) {
    let minute = || Utc::now().timestamp() / 60;
    loop {
        let at = minute();
        let got = traffic::last_hour(pool).await.unwrap();
        let want: Vec<(DateTime<Utc>, i64, i64)> = sqlx::query_as(
            "SELECT m, count(x.*) FILTER (WHERE x.direction = 'inbound'),
                    count(x.*) FILTER (WHERE x.direction = 'outbound')
             FROM generate_series(date_trunc('minute', now()) - interval '59 minutes',
                                  date_trunc('minute', now()), interval '1 minute') m
             LEFT JOIN sms_messages x ON date_trunc('minute', x.created_at) = m
             GROUP BY m ORDER BY m",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        // A minute's turn between the two reads shifts the window: read both again.
        if minute() != at {
            continue;
        }
        assert_eq!(got, want, "seed {seed}");
        assert!(
            want.iter().map(|(_, i, o)| i + o).sum::<i64>() > 0,
            "the mix wrote in the last hour"
        );
        return;
    }
}

/// A statement's outcome: writers updating random rows in random order can deadlock, and
/// Postgres then aborts one transaction, which is one more rollback in the mix.
fn aborted(r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>) -> bool {
    match r {
        Ok(_) => false,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("40P01") => true,
        Err(e) => panic!("{e}"),
    }
}

/// One random transaction of writes; rolled back one time in eight (and when it deadlocks).
async fn random_transaction(pool: &PgPool, rng: &mut StdRng, conversations: &[Uuid]) {
    let mut tx = pool.begin().await.unwrap();
    for _ in 0..rng.random_range(1..4) {
        let r = match rng.random_range(0..6) {
            // A batch insert, as a group commit writes them: some not linked yet, times on
            // both sides of midnight UTC.
            0 | 1 => {
                let n = rng.random_range(1..20);
                let mut args = (
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                    Vec::new(),
                );
                for _ in 0..n {
                    // A quarter in the health chart's last hour and a half.
                    let minutes = if rng.random_bool(0.25) {
                        rng.random_range(0..90)
                    } else {
                        rng.random_range(0..4 * 24 * 60)
                    };
                    args.0.push(if rng.random_bool(0.5) {
                        "inbound"
                    } else {
                        "outbound"
                    });
                    args.1.push(STATUSES[rng.random_range(0..STATUSES.len())]);
                    args.2.push(TENANTS[rng.random_range(0..TENANTS.len())]);
                    args.3.push(
                        rng.random_bool(0.8)
                            .then(|| conversations[rng.random_range(0..conversations.len())]),
                    );
                    args.4
                        .push(rng.random_bool(0.9).then(|| rng.random_range(1..5)));
                    args.5.push(Utc::now() - chrono::Duration::minutes(minutes));
                }
                sqlx::query(
                    "INSERT INTO sms_messages (direction, delivery_status, tenant_id, conversation_id,
                                               num_segments, created_at)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::uuid[], $5::int[],
                                          $6::timestamptz[])",
                )
                .bind(&args.0)
                .bind(&args.1)
                .bind(&args.2)
                .bind(&args.3)
                .bind(&args.4)
                .bind(&args.5)
                .execute(&mut *tx)
                .await
            }
            // Status changes, late callbacks included (any status to any other).
            2 => {
                sqlx::query(
                    "UPDATE sms_messages SET delivery_status = $1
                     WHERE id IN (SELECT id FROM sms_messages ORDER BY random() LIMIT $2)",
                )
                .bind(STATUSES[rng.random_range(0..STATUSES.len())])
                .bind(rng.random_range(1..6_i64))
                .execute(&mut *tx)
                .await
            }
            // Late attribution (the directory finds the tenant) and segments known later.
            3 => {
                sqlx::query(
                    "UPDATE sms_messages SET tenant_id = $1, num_segments = COALESCE(num_segments, 0) + $2
                     WHERE id IN (SELECT id FROM sms_messages ORDER BY random() LIMIT 3)",
                )
                .bind(TENANTS[rng.random_range(0..TENANTS.len())])
                .bind(rng.random_range(0..2))
                .execute(&mut *tx)
                .await
            }
            // The worker linking stored webhooks to their conversation.
            4 => {
                sqlx::query(
                    "UPDATE sms_messages SET conversation_id = $1
                     WHERE id IN (SELECT id FROM sms_messages WHERE conversation_id IS NULL LIMIT 4)",
                )
                .bind(conversations[rng.random_range(0..conversations.len())])
                .execute(&mut *tx)
                .await
            }
            // Changes that count for nothing, and a delete.
            _ => {
                let first = sqlx::query(
                    "UPDATE sms_messages SET updated_at = now(), message_content = 'x'
                     WHERE id IN (SELECT id FROM sms_messages ORDER BY random() LIMIT 5)",
                )
                .execute(&mut *tx)
                .await;
                if aborted(first) {
                    return;
                }
                // A time rewritten by hand moves a message's minute (and maybe its day).
                let moved = sqlx::query(
                    "UPDATE sms_messages SET created_at = created_at - interval '7 minutes'
                     WHERE id IN (SELECT id FROM sms_messages ORDER BY random() LIMIT 1)",
                )
                .execute(&mut *tx)
                .await;
                if aborted(moved) {
                    return;
                }
                sqlx::query(
                    "DELETE FROM sms_messages WHERE id IN (SELECT id FROM sms_messages ORDER BY random() LIMIT 1)",
                )
                .execute(&mut *tx)
                .await
            }
        };
        if aborted(r) {
            return;
        }
    }
    if rng.random_bool(0.125) {
        tx.rollback().await.unwrap();
    } else {
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn the_ledger_equals_a_full_count_after_a_random_mix_of_writes() {
    let db = pg::fresh_db_with(12).await;
    let conversations = setup(&db.pool).await;
    // Four writers and a folder at once; seeds printed so that a failure can be replayed.
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let (pool, conversations) = (db.pool.clone(), conversations.clone());
        writers.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed + w);
            for _ in 0..60 {
                random_transaction(&pool, &mut rng, &conversations).await;
            }
        });
    }
    let folder = {
        let pool = db.pool.clone();
        tokio::spawn(async move {
            let mut folded = 0;
            for _ in 0..40 {
                folded += usage::fold(&pool).await.unwrap();
                traffic::compact(&pool).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            folded
        })
    };
    while let Some(r) = writers.join_next().await {
        r.unwrap();
    }
    assert!(
        folder.await.unwrap() > 0,
        "the folds ran while the writers wrote"
    );

    let today = Utc::now().date_naive();
    let windows = [
        (today - Days::new(10), today + Days::new(1)),
        (today, today + Days::new(1)),
        (today - Days::new(2), today - Days::new(1)),
        (today + Days::new(1), today + Days::new(2)),
    ];
    let check = |label: &'static str| {
        let pool = db.pool.clone();
        async move {
            for (from, to) in windows {
                for tenant in [None, Some("t-1"), Some("t|3"), Some("t-nobody")] {
                    let want = full_count(&pool, from, to, tenant).await;
                    let got = all_pages(&pool, from, to, tenant).await;
                    assert_eq!(got, want, "{label}: {from}..{to} {tenant:?} (seed {seed})");
                }
            }
            // A window of ten days holds every tenant, each direction and several statuses.
            full_count(&pool, windows[0].0, windows[0].1, None)
                .await
                .len()
        }
    };
    // Deltas pending and folded alike are counted; the chart's minutes, compacted or not.
    let rows = check("some deltas pending").await;
    chart_matches(&db.pool, seed).await;
    traffic::compact(&db.pool).await.unwrap();
    chart_matches(&db.pool, seed).await;
    assert!(rows > 10, "the mix covered the ledger's keys: {rows} rows");
    usage::fold(&db.pool).await.unwrap();
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM sms_usage_deltas")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "a fold moves every delta");
    check("all folded").await;

    // The backfill migration, run again on what is stored, builds the same ledger.
    let before: Vec<(String, String, String, NaiveDate, i64, i64)> = sqlx::query_as(
        "SELECT * FROM sms_usage_logs WHERE messages <> 0 OR segments <> 0 ORDER BY 1, 2, 3, 4",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::raw_sql(AssertSqlSafe(include_str!(
        "../../../migrations/20261207000002_usage_backfill.sql"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let after: Vec<(String, String, String, NaiveDate, i64, i64)> =
        sqlx::query_as("SELECT * FROM sms_usage_logs ORDER BY 1, 2, 3, 4")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(after, before, "the backfill and the triggers agree");
}
