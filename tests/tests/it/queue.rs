//! The two ways a job reaches apalis's table, `jobs::schedule` (apalis's own push) and its batch
//! form in the inbound group commit (`jobs::store_inbound`, one statement with the messages),
//! write the same row, and apalis's own fetch hands back exactly the payload written.

use harness::pg;
use shared::jobs::{self, InboundRow, InboundRows, Job, ProcessInbound, When};
use uuid::Uuid;

/// The columns apalis reads to decide and run, as one row shows them.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Shape {
    job_type: String,
    status: String,
    attempts: i32,
    max_attempts: i32,
    priority: i32,
    lock_by: Option<String>,
    done_at_set: bool,
    metadata: Option<String>,
    due: bool,
}

async fn shape(pool: &sqlx::PgPool, id: &str) -> Shape {
    sqlx::query_as(
        "SELECT job_type, status, attempts, max_attempts, priority, lock_by, done_at IS NOT NULL AS done_at_set,
                metadata::text AS metadata, run_at <= now() AS due
         FROM apalis.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_batched_inbound_push_writes_what_schedule_writes_and_apalis_fetches_it() {
    let db = pg::fresh_db().await;
    let pool = &db.pool;
    // The batch form: two webhooks stored by one group commit, one job for both.
    let raw = serde_json::json!({"Body": "hola"});
    let mut rows = InboundRows::with_capacity(2);
    for sid in [
        "SMqueue0000000000000000000000000001",
        "SMqueue0000000000000000000000000002",
    ] {
        rows.push(InboundRow {
            sid,
            body: "hola",
            from: "+14155550101",
            to: "+15550001000",
            segments: Some(1),
            media: Some(0),
            raw: &raw,
            traceparent: None,
            tracestate: None,
        });
    }
    let mut conn = pool.acquire().await.unwrap();
    let stored = jobs::store_inbound(&mut conn, &rows).await.unwrap();
    let ids: Vec<Uuid> = stored.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), 2);
    // The single form, through apalis's own push.
    let single = ProcessInbound {
        message_ids: vec![Uuid::new_v4()],
        traces: Default::default(),
    };
    jobs::schedule(&mut conn, std::slice::from_ref(&single), When::NOW)
        .await
        .unwrap();
    let written: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT id, job FROM apalis.jobs WHERE job_type = $1 ORDER BY id")
            .bind(ProcessInbound::QUEUE)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(written.len(), 2, "one job per commit, one per schedule");
    let (batch_id, single_id) = {
        let is_batch = |bytes: &[u8]| {
            serde_json::from_slice::<ProcessInbound>(bytes)
                .unwrap()
                .message_ids
                .len()
                == 2
        };
        let batch = written.iter().find(|(_, j)| is_batch(j)).unwrap().0.clone();
        let single = written
            .iter()
            .find(|(_, j)| !is_batch(j))
            .unwrap()
            .0
            .clone();
        (batch, single)
    };
    // Both rows alike in everything apalis reads.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (batch_shape, single_shape) = (shape(pool, &batch_id).await, shape(pool, &single_id).await);
    assert_eq!(batch_shape, single_shape);
    assert_eq!(batch_shape.max_attempts as usize, jobs::MAX_ATTEMPTS);

    // apalis's fetch (the statement its workers run) takes both and hands back the payloads.
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name) VALUES ('w-test', $1, 'test')",
    )
    .bind(ProcessInbound::QUEUE)
    .execute(pool)
    .await
    .unwrap();
    let fetched: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT id, job FROM apalis.get_jobs('w-test', $1, 10)")
            .bind(ProcessInbound::QUEUE)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(fetched.len(), 2, "apalis fetches both");
    for (id, bytes) in fetched {
        let job: ProcessInbound = serde_json::from_slice(&bytes).unwrap();
        if id == batch_id {
            let mut got = job.message_ids.clone();
            got.sort();
            let mut want = ids.clone();
            want.sort();
            assert_eq!(got, want, "the batch job names exactly the stored messages");
        } else {
            assert_eq!(job, single);
        }
    }
}

/// Queue depths (`/metrics`, the console's health page) read only open jobs: however many
/// finished jobs the table keeps, the plan uses the partial indexes of waiting and in-flight
/// jobs, and the counts are right.
#[tokio::test]
async fn queue_depths_read_only_open_jobs() {
    let db = pg::fresh_db().await;
    let pool = &db.pool;
    sqlx::query(
        "INSERT INTO apalis.workers (id, worker_type, storage_name, layers, last_seen)
         VALUES ('w-depths', 'route', 'PgStorage', '', now())",
    )
    .execute(pool)
    .await
    .unwrap();
    // 50,000 finished jobs, then the open ones: 3 due and 2 scheduled route jobs, one send
    // running and one fetched.
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, run_at, lock_by, done_at)
         SELECT '\\x00', 'done-' || g, CASE WHEN g % 2 = 0 THEN 'route' ELSE 'outbound-send' END,
                'Done', 1, now() - interval '1 hour', 'w-depths', now() - interval '1 hour'
         FROM generate_series(1, 50000) g",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO apalis.jobs (job, id, job_type, status, run_at, lock_by) VALUES
           ('\\x00', 'due-1', 'route', 'Pending', now() - interval '10 s', NULL),
           ('\\x00', 'due-2', 'route', 'Pending', now(), NULL),
           ('\\x00', 'due-3', 'route', 'Pending', now(), NULL),
           ('\\x00', 'later-1', 'route', 'Pending', now() + interval '1 hour', NULL),
           ('\\x00', 'later-2', 'route', 'Pending', now() + interval '1 hour', NULL),
           ('\\x00', 'running-1', 'outbound-send', 'Running', now(), 'w-depths'),
           ('\\x00', 'queued-1', 'outbound-send', 'Queued', now(), 'w-depths'),
           ('\\x00', 'failed-1', 'route', 'Failed', now(), 'w-depths'),
           ('\\x00', 'killed-1', 'route', 'Killed', now(), 'w-depths'),
           ('\\x00', 'failed-old', 'route', 'Failed', now() - interval '2 hours', 'w-depths')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE apalis.jobs SET done_at = run_at WHERE id LIKE 'failed-%' OR id LIKE 'killed-%'",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("VACUUM ANALYZE apalis.jobs")
        .execute(pool)
        .await
        .unwrap();
    let mut depths = jobs::depths(pool).await.unwrap();
    depths.sort_by(|a, b| a.queue.cmp(&b.queue));
    let counts: Vec<(&str, i64, i64, i64)> = depths
        .iter()
        .map(|d| (d.queue.as_str(), d.pending, d.scheduled, d.running))
        .collect();
    assert_eq!(
        counts,
        [("outbound-send", 0, 0, 2), ("route", 3, 2, 0)],
        "{depths:?}"
    );
    let route = depths.iter().find(|d| d.queue == "route").unwrap();
    assert!(route.oldest_due_secs >= 10.0, "{route:?}");
    // The plan (the statement has no parameters: every execution plans alike).
    let sql = jobs::depths_sql();
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .fetch_all(pool)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(
        plan.contains("idx_apalis_jobs_fetch_partial")
            && plan.contains("apalis_jobs_in_flight_idx"),
        "{plan}"
    );
    // The health page's failures of the last hour: the failed and killed jobs only, by index.
    let failures = jobs::failures_within(pool, std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(failures, [("route".to_owned(), 2)]);
    let plan: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT job_type, count(*) FROM apalis.jobs
         WHERE status IN ('Failed', 'Killed') AND done_at > now() - make_interval(secs => 3600)
         GROUP BY job_type",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("apalis_jobs_failed_done_idx"), "{plan}");
}
