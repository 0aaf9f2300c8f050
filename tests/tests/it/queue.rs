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
