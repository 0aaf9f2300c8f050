//! The usage ledger (`sms_usage_logs`): messages and segments per tenant, direction, delivery
//! status and UTC day. Triggers on `sms_messages` append every change to `sms_usage_deltas` in
//! the transaction that makes it (migration `20261207000001_usage_ledger.sql`); [`fold`] moves
//! deltas into the day rows; [`page`] reads both in one statement, so its answer is exact
//! whether or not the fold has run. A window's cost follows the days and tenants it covers, not
//! the messages stored.

use chrono::NaiveDate;

/// Held (transaction-scoped) by each fold and by the ledger's backfill migration, which must not
/// interleave with a fold (it replaces the ledger from one snapshot of the messages).
pub const FOLD_LOCK: i64 = 7_320_113;

/// Most deltas one fold statement moves; [`fold`] repeats until fewer remain.
const FOLD_BATCH: i64 = 50_000;

/// Ledger key for messages of no known tenant (tenant ids are never empty).
pub const NO_TENANT: &str = "";

/// Folds pending deltas into the day rows. Returns the deltas moved (0 when another process is
/// folding: it will move them).
pub async fn fold(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let mut moved = 0;
    loop {
        let mut tx = pool.begin().await?;
        let locked = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
            FOLD_LOCK
        )
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(moved);
        }
        let n = sqlx::query_scalar!(
            r#"WITH moved AS (
                   DELETE FROM sms_usage_deltas WHERE id IN (
                       SELECT id FROM sms_usage_deltas ORDER BY id LIMIT $1)
                   RETURNING tenant_id, direction, status, day, messages, segments),
               folded AS (
                   INSERT INTO sms_usage_logs AS l (tenant_id, direction, status, day, messages, segments)
                   SELECT tenant_id, direction, status, day, sum(messages), sum(segments)
                   FROM moved GROUP BY 1, 2, 3, 4
                   ON CONFLICT (tenant_id, direction, status, day) DO UPDATE
                   SET messages = l.messages + EXCLUDED.messages,
                       segments = l.segments + EXCLUDED.segments)
               SELECT count(*) AS "n!" FROM moved"#,
            FOLD_BATCH
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        moved += n as u64;
        if n < FOLD_BATCH {
            return Ok(moved);
        }
    }
}

/// Deltas not folded yet (the health page shows it: a figure that only grows means no process
/// runs the reconciler).
pub async fn pending(pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
    // The table is folded every reconciler pass; its size is the work since the last one.
    sqlx::query_scalar!(r#"SELECT count(*) AS "n!" FROM sms_usage_deltas"#)
        .fetch_one(pool)
        .await
}

/// One row of an answer: a tenant's messages of one direction and status over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// None: messages of no known tenant.
    pub tenant_id: Option<String>,
    pub direction: String,
    pub status: String,
    pub messages: i64,
    pub segments: i64,
}

/// Where a page starts: after this (tenant, direction, status).
pub type After = (String, String, String);

/// Up to `limit` rows of the days `[from, to)`, ordered by (tenant, direction, status), starting
/// after `after`; `tenant` confines them to one tenant. Rows whose counts net to zero (a status
/// every message has left) are not answers.
pub async fn page(
    pool: &sqlx::PgPool,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    // No cursor: the smallest key ('' sorts first, and every direction is non-empty).
    let (t, d, s) = after.map_or((NO_TENANT, "", ""), |(t, d, s)| {
        (t.as_str(), d.as_str(), s.as_str())
    });
    let rows = match tenant {
        // Two statements rather than one with "$3 IS NULL OR": a generic plan can then use the
        // tenant as an index bound.
        Some(tenant) => sqlx::query_as!(
            RawRow,
            r#"SELECT tenant_id AS "tenant_id!", direction AS "direction!", status AS "status!",
                      sum(messages)::bigint AS "messages!", sum(segments)::bigint AS "segments!"
               FROM (SELECT tenant_id, direction, status, messages, segments FROM sms_usage_logs
                     WHERE tenant_id = $3 AND (direction, status) > ($4, $5) AND day >= $1 AND day < $2
                     UNION ALL
                     SELECT tenant_id, direction, status, messages, segments FROM sms_usage_deltas
                     WHERE tenant_id = $3 AND (direction, status) > ($4, $5) AND day >= $1 AND day < $2) u
               GROUP BY 1, 2, 3
               HAVING sum(messages) <> 0 OR sum(segments) <> 0
               ORDER BY 1, 2, 3 LIMIT $6"#,
            from,
            to,
            tenant,
            // Within one tenant the cursor's tenant is that tenant (policy confines it).
            if t == tenant { d } else { "" },
            if t == tenant { s } else { "" },
            limit
        )
        .fetch_all(pool)
        .await?,
        None => sqlx::query_as!(
            RawRow,
            r#"SELECT tenant_id AS "tenant_id!", direction AS "direction!", status AS "status!",
                      sum(messages)::bigint AS "messages!", sum(segments)::bigint AS "segments!"
               FROM (SELECT tenant_id, direction, status, messages, segments FROM sms_usage_logs
                     WHERE tenant_id >= $3 AND (tenant_id, direction, status) > ($3, $4, $5)
                       AND day >= $1 AND day < $2
                     UNION ALL
                     SELECT tenant_id, direction, status, messages, segments FROM sms_usage_deltas
                     WHERE tenant_id >= $3 AND (tenant_id, direction, status) > ($3, $4, $5)
                       AND day >= $1 AND day < $2) u
               GROUP BY 1, 2, 3
               HAVING sum(messages) <> 0 OR sum(segments) <> 0
               ORDER BY 1, 2, 3 LIMIT $6"#,
            from,
            to,
            t,
            d,
            s,
            limit
        )
        .fetch_all(pool)
        .await?,
    };
    Ok(rows.into_iter().map(Row::from).collect())
}

struct RawRow {
    tenant_id: String,
    direction: String,
    status: String,
    messages: i64,
    segments: i64,
}

impl From<RawRow> for Row {
    fn from(r: RawRow) -> Self {
        Row {
            tenant_id: (r.tenant_id != NO_TENANT).then_some(r.tenant_id),
            direction: r.direction,
            status: r.status,
            messages: r.messages,
            segments: r.segments,
        }
    }
}
