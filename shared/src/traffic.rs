//! Messages per minute over the last hour (the console's health chart), from counts the insert
//! trigger on `sms_messages` appends to `sms_message_minutes` (one row per minute and direction of
//! each statement). [`compact`] sums them into one row per minute and direction and drops minutes
//! older than two hours, so a read sums at most a few hundred rows however busy the hour was.

use chrono::{DateTime, DurationRound, Utc};

/// One minute of the chart: its start, messages in, messages out.
pub type Minute = (DateTime<Utc>, i64, i64);

/// Sums each minute's rows into one and drops minutes older than two hours. Safe beside writers
/// and another compaction: rows appended meanwhile are not seen, so not deleted; a row another
/// compaction deleted first is skipped, so it is summed once.
pub async fn compact(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let kept = sqlx::query!(
        r#"WITH gone AS (
               DELETE FROM sms_message_minutes RETURNING minute, direction, messages)
           INSERT INTO sms_message_minutes (minute, direction, messages)
           SELECT minute, direction, sum(messages)::bigint FROM gone
           WHERE minute >= now() - interval '2 hours'
           GROUP BY 1, 2 HAVING sum(messages) <> 0"#
    )
    .execute(pool)
    .await?;
    Ok(kept.rows_affected())
}

/// The last 60 minutes (the current one included), oldest first, every message counted.
pub async fn last_hour(pool: &sqlx::PgPool) -> Result<Vec<Minute>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT minute AS "minute!",
                  COALESCE(sum(messages) FILTER (WHERE direction = 'inbound'), 0)::bigint AS "inbound!",
                  COALESCE(sum(messages) FILTER (WHERE direction = 'outbound'), 0)::bigint AS "outbound!"
           FROM sms_message_minutes
           WHERE minute >= date_trunc('minute', now()) - interval '59 minutes'
           GROUP BY 1"#
    )
    .fetch_all(pool)
    .await?;
    Ok(sixty(
        rows.into_iter()
            .map(|r| (r.minute, r.inbound, r.outbound))
            .collect(),
    ))
}

/// The last 60 minutes of one tenant's messages, counted from them (one tenant's hour, through
/// its `(tenant_id, created_at)` index; a message's tenant can change after it arrives, which
/// the counts above cannot follow).
pub async fn last_hour_of(pool: &sqlx::PgPool, tenant: &str) -> Result<Vec<Minute>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT date_trunc('minute', created_at) AS "minute!",
                  count(*) FILTER (WHERE direction = 'inbound') AS "inbound!",
                  count(*) FILTER (WHERE direction = 'outbound') AS "outbound!"
           FROM sms_messages
           WHERE created_at >= date_trunc('minute', now()) - interval '59 minutes'
             AND tenant_id = $1
           GROUP BY 1"#,
        tenant
    )
    .fetch_all(pool)
    .await?;
    Ok(sixty(
        rows.into_iter()
            .map(|r| (r.minute, r.inbound, r.outbound))
            .collect(),
    ))
}

/// Counted minutes laid on the last 60, the ones with nothing as zeros.
fn sixty(counted: Vec<Minute>) -> Vec<Minute> {
    let counted: std::collections::BTreeMap<_, _> =
        counted.into_iter().map(|(m, i, o)| (m, (i, o))).collect();
    let now = Utc::now()
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or_else(|_| Utc::now());
    (0..60)
        .rev()
        .map(|ago| {
            let minute = now - chrono::Duration::minutes(ago);
            let (i, o) = counted.get(&minute).copied().unwrap_or_default();
            (minute, i, o)
        })
        .collect()
}
