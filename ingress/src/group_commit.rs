//! Group commit for Twilio's webhooks (inbound messages and status callbacks): concurrent
//! requests hand their rows to a few writer tasks, each of which stores everything waiting in ONE
//! transaction (the rows plus their jobs) and answers every request only after that commit. One
//! commit per request tops out near 5,000/s on a small machine and needs a connection per
//! request in flight; a burst then runs the pool dry and is answered 503, which Twilio never
//! retries for callbacks. Batching holds a burst in memory instead, on one connection per
//! writer, without weakening durability.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use serde_json::Value;
use shared::{
    jobs::{self, ApplyStatus, ApplyStatuses, When},
    telemetry::TraceContext,
};
use sqlx::{PgConnection, PgPool};
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// What a group commit stores: rows with a key (a second row with the key of one already stored,
/// or earlier in the same batch, is a duplicate) and the statement that stores a batch.
pub trait Rows: Send + Sync + 'static {
    type Row: Send + Sync + 'static;
    /// A stored row's id.
    type Id: Copy + Send + Sync + 'static;
    fn key(row: &Self::Row) -> &str;
    /// Stores `rows` (keys unique) and their jobs in one transaction on `conn`; returns the
    /// keys of the rows that were new, with their ids.
    fn store(
        conn: &mut PgConnection,
        rows: &[&Self::Row],
    ) -> impl Future<Output = Result<HashMap<String, Self::Id>, sqlx::Error>> + Send;
}

/// One inbound webhook ready to store.
#[derive(Debug)]
pub struct NewInbound {
    pub message_sid: String,
    pub body: String,
    pub from: String,
    pub to: String,
    pub num_segments: Option<i32>,
    pub num_media: Option<i32>,
    pub raw: Value,
    /// The webhook request's trace, continued by the worker that processes this message.
    pub trace: Option<TraceContext>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored<Id = Uuid> {
    /// Committed, with its job.
    New(Id),
    /// This MessageSid was already stored: nothing written, nothing enqueued.
    Duplicate,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable")]
    Unavailable,
    #[error("storing failed: {0}")]
    Failed(String),
}

type Reply<Id> = oneshot::Sender<Result<Stored<Id>, StoreError>>;
/// The requests waiting for a writer, shared by the writers.
type Waiting<R> = Arc<Mutex<mpsc::Receiver<(<R as Rows>::Row, Reply<<R as Rows>::Id>)>>>;

pub struct GroupCommit<R: Rows> {
    tx: mpsc::Sender<(R::Row, Reply<R::Id>)>,
}

impl<R: Rows> Clone for GroupCommit<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<R: Rows> GroupCommit<R> {
    /// Starts `writers` writer tasks that take up to `max_batch` waiting rows per transaction.
    pub fn start(pool: PgPool, writers: usize, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::channel(max_batch * writers * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers {
            tokio::spawn(writer::<R>(pool.clone(), rx.clone(), max_batch));
        }
        Self { tx }
    }

    /// Stores one row; resolves once its batch committed (or failed).
    pub async fn store(&self, item: R::Row) -> Result<Stored<R::Id>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((item, reply))
            .await
            .map_err(|_| StoreError::Failed("writer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Failed("writer dropped the request".into()))?
    }
}

async fn writer<R: Rows>(pool: PgPool, rx: Waiting<R>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // The writer holding the receiver collects what is waiting and writes it; it lets go
        // before COMMIT, so the next writer's batch (everything that arrived meanwhile) is
        // inserted while this one's commit is flushed to disk.
        let mut rx_guard = rx.lock().await;
        if rx_guard.recv_many(&mut batch, max_batch).await == 0 {
            return; // every sender is gone: shutting down
        }
        let (rows, started) = (batch.len(), std::time::Instant::now());
        if write_batch::<R, _>(&pool, &mut batch, rx_guard).await == Written::DatabaseUnavailable {
            // Everything that queued up while this batch waited for a connection would wait as
            // long again: answer it 503 now (Twilio retries) instead of one batch at a time.
            let mut rx_guard = rx.lock().await;
            while let Ok((_, reply)) = rx_guard.try_recv() {
                let _ = reply.send(Err(StoreError::Unavailable));
            }
        }
        tracing::debug!(
            rows,
            micros = started.elapsed().as_micros() as u64,
            "group commit"
        );
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Written {
    Done,
    DatabaseUnavailable,
}

async fn write_batch<R: Rows, G>(
    pool: &PgPool,
    batch: &mut Vec<(R::Row, Reply<R::Id>)>,
    rx_guard: G,
) -> Written {
    // A key twice in one batch: the first is the candidate, later ones are duplicates.
    let mut first: HashMap<String, usize> = HashMap::with_capacity(batch.len());
    for (i, (item, _)) in batch.iter().enumerate() {
        first.entry(R::key(item).to_owned()).or_insert(i);
    }
    let inserted = match insert::<R, G>(pool, batch, &first, rx_guard).await {
        Ok(rows) => rows,
        Err(err) => {
            shared::pool_mode::observe(&err);
            let err = if shared::db::is_unavailable(&err) {
                StoreError::Unavailable
            } else {
                tracing::error!(error = %err, rows = batch.len(), "group commit failed");
                StoreError::Failed(err.to_string())
            };
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(err.clone()));
            }
            return if matches!(err, StoreError::Unavailable) {
                Written::DatabaseUnavailable
            } else {
                Written::Done
            };
        }
    };
    for (i, (item, reply)) in batch.drain(..).enumerate() {
        let key = R::key(&item);
        let outcome = match inserted.get(key) {
            Some(id) if first.get(key) == Some(&i) => Stored::New(*id),
            _ => Stored::Duplicate,
        };
        let _ = reply.send(Ok(outcome));
    }
    Written::Done
}

/// Stores the batch's first occurrence of each key, in one transaction. Returns the new rows'
/// ids by key.
async fn insert<R: Rows, G>(
    pool: &PgPool,
    batch: &[(R::Row, Reply<R::Id>)],
    first: &HashMap<String, usize>,
    rx_guard: G,
) -> Result<HashMap<String, R::Id>, sqlx::Error> {
    let rows: Vec<&R::Row> = batch
        .iter()
        .enumerate()
        .filter(|(i, (item, _))| first.get(R::key(item)) == Some(i))
        .map(|(_, (item, _))| item)
        .collect();
    let mut conn = tokio::time::timeout(Duration::from_secs(10), pool.acquire())
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)??;
    drop(rx_guard);
    R::store(&mut conn, &rows).await
}

/// Inbound webhooks: the raw rows and one processing job for the new ones, in one statement.
pub struct InboundWebhooks;

impl Rows for InboundWebhooks {
    type Row = NewInbound;
    type Id = Uuid;

    fn key(row: &NewInbound) -> &str {
        &row.message_sid
    }

    async fn store(
        conn: &mut PgConnection,
        rows: &[&NewInbound],
    ) -> Result<HashMap<String, Uuid>, sqlx::Error> {
        let mut batch = jobs::InboundRows::with_capacity(rows.len());
        for item in rows {
            batch.push(jobs::InboundRow {
                sid: &item.message_sid,
                body: &item.body,
                from: &item.from,
                to: &item.to,
                segments: item.num_segments,
                media: item.num_media,
                raw: &item.raw,
                traceparent: item.trace.as_ref().map(|t| t.traceparent.as_str()),
                tracestate: item.trace.as_ref().and_then(|t| t.tracestate.as_deref()),
            });
        }
        jobs::store_inbound(conn, &batch)
            .await
            .map(|rows| rows.into_iter().collect())
    }
}

/// One status callback ready to store.
#[derive(Debug)]
pub struct NewCallback {
    /// `MessageSid` and `MessageStatus`: the ledger is unique on the pair.
    pub key: String,
    pub message_sid: String,
    pub message_status: String,
    pub our_message_id: Option<Uuid>,
    pub error_code: Option<String>,
    pub raw: Value,
    pub trace: Option<TraceContext>,
}

impl NewCallback {
    pub fn key_of(message_sid: &str, message_status: &str) -> String {
        format!("{message_sid} {message_status}")
    }
}

/// Status callbacks: the ledger rows and one application job per new row.
pub struct StatusCallbacks;

impl Rows for StatusCallbacks {
    type Row = NewCallback;
    type Id = i64;

    fn key(row: &NewCallback) -> &str {
        &row.key
    }

    async fn store(
        conn: &mut PgConnection,
        rows: &[&NewCallback],
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        use sqlx::Connection as _;
        let sids: Vec<&str> = rows.iter().map(|r| r.message_sid.as_str()).collect();
        let statuses: Vec<&str> = rows.iter().map(|r| r.message_status.as_str()).collect();
        let ours: Vec<Option<Uuid>> = rows.iter().map(|r| r.our_message_id).collect();
        let codes: Vec<Option<&str>> = rows.iter().map(|r| r.error_code.as_deref()).collect();
        let raws: Vec<&Value> = rows.iter().map(|r| &r.raw).collect();
        let mut tx = conn.begin().await?;
        let inserted = sqlx::query!(
            r#"INSERT INTO sms_status_callbacks (message_sid, message_status, our_message_id, error_code, raw)
               SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[], $4::text[], $5::jsonb[])
               ON CONFLICT (message_sid, message_status) DO NOTHING
               RETURNING id, message_sid, message_status"#,
            &sids as &[&str],
            &statuses as &[&str],
            &ours as &[Option<Uuid>],
            &codes as &[Option<&str>],
            &raws as &[&Value]
        )
        .fetch_all(&mut *tx)
        .await?;
        let new: HashMap<String, i64> = inserted
            .into_iter()
            .map(|r| (NewCallback::key_of(&r.message_sid, &r.message_status), r.id))
            .collect();
        let applies: Vec<ApplyStatus> = rows
            .iter()
            .filter(|r| new.contains_key(&r.key))
            .map(|r| ApplyStatus {
                message_sid: r.message_sid.clone(),
                our_message_id: r.our_message_id,
                trace: r.trace.clone(),
            })
            .collect();
        let job = (!applies.is_empty()).then_some(ApplyStatuses { callbacks: applies });
        jobs::schedule(&mut tx, job.as_slice(), When::NOW)
            .await
            .map_err(|e| match e {
                apalis_postgres::Error::Database(e) => e,
                other => sqlx::Error::Decode(Box::new(other)),
            })?;
        tx.commit().await?;
        Ok(new)
    }
}
