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

/// A page of an answer: its rows, and where the next page starts (None: this is the last). A
/// page may hold fewer rows than asked, and still not be the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub rows: Vec<Row>,
    pub next: Option<After>,
}

type Key = (String, String, String);

/// One ledger or delta row (or group of them) as read.
struct Counted {
    tenant_id: String,
    direction: String,
    status: String,
    messages: i64,
    segments: i64,
}

impl Counted {
    fn key(&self) -> Key {
        (
            self.tenant_id.clone(),
            self.direction.clone(),
            self.status.clone(),
        )
    }
}

/// Up to `limit` rows of the days `[from, to)`, ordered by (tenant, direction, status), starting
/// after `after`; `tenant` confines them to one tenant. Rows whose counts net to zero (a status
/// every message has left) are not answers.
///
/// Its cost is bounded by the page, not the ledger: day rows are read in the primary key's order
/// with a LIMIT (so the plan is an index-only scan that stops, whatever the planner thinks of the
/// window), grouped here, the last group dropped when the LIMIT may have cut it; pending deltas of
/// the keys covered are added. All reads share one snapshot.
pub async fn page(
    pool: &sqlx::PgPool,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
    after: Option<&After>,
    limit: usize,
) -> Result<Page, sqlx::Error> {
    let days = (to - from).num_days().clamp(0, 10_000) as usize;
    // No cursor: the smallest key ('' sorts first, and every direction is non-empty). Within
    // one tenant, a cursor of another tenant starts at that tenant's beginning (the policy
    // confines the tenant; a cursor is only ever this API's).
    let (t, d, s) = match (after, tenant) {
        (Some((t, d, s)), Some(tenant)) if t == tenant => (t.as_str(), d.as_str(), s.as_str()),
        (_, Some(tenant)) => (tenant, "", ""),
        (Some((t, d, s)), None) => (t.as_str(), d.as_str(), s.as_str()),
        (None, None) => (NO_TENANT, "", ""),
    };
    let start = (t.to_owned(), d.to_owned(), s.to_owned());
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    // Rounds of day rows until the page's groups are read, the ledger ends or the page has read
    // its share ([`MAX_PAGE_ROWS`]). A group holds at most a row per day of the window, so a
    // budget above that always completes one group. The
    // first round guesses two rows a group (a year of 100,000 tenants averages under two in a
    // month); the next ones size themselves on the rows per group seen so far.
    let mut groups: Vec<Counted> = Vec::new();
    let (mut rows_read, mut cut, mut from_key) = (0usize, true, start.clone());
    while cut && groups.len() <= limit && rows_read < MAX_PAGE_ROWS {
        let per_group = if groups.is_empty() {
            2.0
        } else {
            rows_read as f64 / groups.len() as f64
        };
        let wanted = (limit + 1 - groups.len()) as f64 * per_group * 1.25;
        let budget = (wanted.ceil() as usize)
            .clamp(days + 2, (MAX_PAGE_ROWS - rows_read).max(days + 2)) as i64;
        let key = (
            from_key.0.as_str(),
            from_key.1.as_str(),
            from_key.2.as_str(),
        );
        let read = read_days(&mut tx, from, to, tenant, key, budget).await?;
        cut = read.len() as i64 == budget;
        // The LIMIT may have cut the last group: it is read again, whole, in the next round (or
        // on the next page).
        let cut_rows = match read.last() {
            Some(last) if cut => read
                .iter()
                .rev()
                .take_while(|r| r.key() == last.key())
                .count(),
            _ => 0,
        };
        rows_read += read.len() - cut_rows;
        let mut round = group(read);
        if cut {
            round.pop();
        }
        if let Some(last) = round.last() {
            from_key = last.key();
        }
        groups.extend(round);
    }
    // Pending deltas of the keys this page covers: up to its last whole group when the ledger
    // was cut, all after the cursor when it was read to its end.
    let upto = if cut {
        groups.last().map(Counted::key)
    } else {
        None
    };
    let pending = read_pending(&mut tx, from, to, tenant, (t, d, s), upto.as_ref()).await?;
    tx.commit().await?;
    Ok(paged(merge(groups, pending), limit, cut))
}

/// Day rows a page reads at most (beyond one whole group), so that a page's cost stays that of
/// a page (4,000 rows cost a 365-day page 17 ms p50 under the year benchmark's 8 connections).
/// Over a long window, keys with a row every day fill fewer than `limit` rows of a page (a year
/// of them: four), and the next page goes on.
const MAX_PAGE_ROWS: usize = 1_600;

/// Up to `budget` day rows of the window after `after`, in primary-key order.
async fn read_days(
    tx: &mut sqlx::PgConnection,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
    (t, d, s): (&str, &str, &str),
    budget: i64,
) -> Result<Vec<Counted>, sqlx::Error> {
    match tenant {
        // Two statements rather than one with "$3 IS NULL OR": each plan then bounds the scan
        // by its key.
        Some(tenant) => {
            sqlx::query_as!(
                Counted,
                r#"SELECT tenant_id, direction, status, messages, segments FROM sms_usage_logs
                   WHERE tenant_id = $3 AND (direction, status) > ($4, $5) AND day >= $1 AND day < $2
                   ORDER BY tenant_id, direction, status, day LIMIT $6"#,
                from,
                to,
                tenant,
                d,
                s,
                budget
            )
            .fetch_all(tx)
            .await
        }
        None => {
            sqlx::query_as!(
                Counted,
                r#"SELECT tenant_id, direction, status, messages, segments FROM sms_usage_logs
                   WHERE (tenant_id, direction, status) > ($3, $4, $5) AND day >= $1 AND day < $2
                   ORDER BY tenant_id, direction, status, day LIMIT $6"#,
                from,
                to,
                t,
                d,
                s,
                budget
            )
            .fetch_all(tx)
            .await
        }
    }
}

/// Pending deltas of the window summed per key, for keys after `after` and up to `upto`.
async fn read_pending(
    tx: &mut sqlx::PgConnection,
    from: NaiveDate,
    to: NaiveDate,
    tenant: Option<&str>,
    (t, d, s): (&str, &str, &str),
    upto: Option<&Key>,
) -> Result<Vec<Counted>, sqlx::Error> {
    let (ut, ud, us) = upto.map_or((None, None, None), |(t, d, s)| {
        (Some(t.as_str()), Some(d.as_str()), Some(s.as_str()))
    });
    sqlx::query_as!(
        Counted,
        r#"SELECT tenant_id AS "tenant_id!", direction AS "direction!", status AS "status!",
                  sum(messages)::bigint AS "messages!", sum(segments)::bigint AS "segments!"
           FROM sms_usage_deltas
           WHERE ($3::text IS NULL OR tenant_id = $3)
             AND (tenant_id, direction, status) > ($4, $5, $6)
             AND ($7::text IS NULL OR (tenant_id, direction, status) <= ($7, $8, $9))
             AND day >= $1 AND day < $2
           GROUP BY 1, 2, 3"#,
        from,
        to,
        tenant,
        t,
        d,
        s,
        ut,
        ud,
        us
    )
    .fetch_all(tx)
    .await
}

/// The first `limit` groups that count something; the page's end is the last group it looked
/// at (a group netting to zero is skipped, not an answer).
fn paged(groups: Vec<Counted>, limit: usize, cut: bool) -> Page {
    let mut rows = Vec::new();
    let mut last = None;
    for g in groups {
        if rows.len() == limit {
            if g.messages != 0 || g.segments != 0 {
                return Page { rows, next: last };
            }
            continue;
        }
        last = Some(g.key());
        if g.messages != 0 || g.segments != 0 {
            rows.push(Row::from(g));
        }
    }
    Page {
        rows,
        next: if cut { last } else { None },
    }
}

/// Day rows (in key order) summed per key.
fn group(rows: Vec<Counted>) -> Vec<Counted> {
    let mut out: Vec<Counted> = Vec::new();
    for r in rows {
        match out.last_mut() {
            Some(g)
                if (&g.tenant_id, &g.direction, &g.status)
                    == (&r.tenant_id, &r.direction, &r.status) =>
            {
                g.messages += r.messages;
                g.segments += r.segments;
            }
            _ => out.push(r),
        }
    }
    out
}

/// Groups plus pending deltas, in key order.
fn merge(groups: Vec<Counted>, pending: Vec<Counted>) -> Vec<Counted> {
    let mut all: std::collections::BTreeMap<Key, (i64, i64)> = std::collections::BTreeMap::new();
    for c in groups.into_iter().chain(pending) {
        let e = all.entry(c.key()).or_default();
        e.0 += c.messages;
        e.1 += c.segments;
    }
    all.into_iter()
        .map(
            |((tenant_id, direction, status), (messages, segments))| Counted {
                tenant_id,
                direction,
                status,
                messages,
                segments,
            },
        )
        .collect()
}

impl From<Counted> for Row {
    fn from(r: Counted) -> Self {
        Row {
            tenant_id: (r.tenant_id != NO_TENANT).then_some(r.tenant_id),
            direction: r.direction,
            status: r.status,
            messages: r.messages,
            segments: r.segments,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: &str, d: &str, s: &str, m: i64) -> Counted {
        Counted {
            tenant_id: t.into(),
            direction: d.into(),
            status: s.into(),
            messages: m,
            segments: m,
        }
    }

    fn keys(p: &Page) -> Vec<String> {
        p.rows
            .iter()
            .map(|r| format!("{}:{}", r.tenant_id.as_deref().unwrap_or("-"), r.messages))
            .collect()
    }

    #[test]
    fn days_group_per_key_in_order() {
        let g = group(vec![
            c("a", "in", "x", 1),
            c("a", "in", "x", 2),
            c("a", "out", "x", 1),
            c("b", "in", "x", 4),
        ]);
        let got: Vec<_> = g
            .iter()
            .map(|g| (g.key().0, g.key().1, g.messages))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "in".into(), 3),
                ("a".into(), "out".into(), 1),
                ("b".into(), "in".into(), 4)
            ]
        );
    }

    #[test]
    fn deltas_merge_into_groups_and_can_cancel_them() {
        let m = merge(
            vec![c("a", "in", "x", 3), c("c", "in", "x", 1)],
            vec![c("b", "in", "x", 2), c("a", "in", "x", -3)],
        );
        let got: Vec<_> = m
            .iter()
            .map(|g| (g.tenant_id.as_str(), g.messages))
            .collect();
        assert_eq!(got, [("a", 0), ("b", 2), ("c", 1)]);
    }

    #[test]
    fn pages_end_where_they_looked_and_skip_what_nets_to_zero() {
        let after = |t: &str| Some((t.to_string(), "in".to_string(), "x".to_string()));
        // (groups, limit, cut) -> (rows, next)
        type Case = (Vec<Counted>, usize, bool, Vec<&'static str>, Option<After>);
        let cases: Vec<Case> = vec![
            // Everything fits, ledger read to its end: the last page.
            (
                vec![c("a", "in", "x", 1), c("b", "in", "x", 2)],
                5,
                false,
                vec!["a:1", "b:2"],
                None,
            ),
            // Cut: more may follow, after the last group looked at.
            (
                vec![c("a", "in", "x", 1), c("b", "in", "x", 2)],
                5,
                true,
                vec!["a:1", "b:2"],
                after("b"),
            ),
            // Full: the next page starts after the last row.
            (
                vec![
                    c("a", "in", "x", 1),
                    c("b", "in", "x", 2),
                    c("c", "in", "x", 3),
                ],
                2,
                false,
                vec!["a:1", "b:2"],
                after("b"),
            ),
            // Zeros are skipped, before and after the limit; only zeros left: the last page.
            (
                vec![
                    c("a", "in", "x", 0),
                    c("b", "in", "x", 2),
                    c("c", "in", "x", 0),
                ],
                1,
                false,
                vec!["b:2"],
                None,
            ),
            // A cut page of zeros only: empty, yet not the last.
            (vec![c("a", "in", "x", 0)], 3, true, vec![], after("a")),
            // No tenant is shown as none.
            (vec![c("", "in", "x", 4)], 3, false, vec!["-:4"], None),
        ];
        for (i, (groups, limit, cut, rows, next)) in cases.into_iter().enumerate() {
            let p = paged(groups, limit, cut);
            assert_eq!(keys(&p), rows, "case {i}");
            assert_eq!(p.next, next, "case {i}");
        }
    }
}
