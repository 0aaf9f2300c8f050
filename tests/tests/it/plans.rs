//! Query plans whose cost follows the answer, not the table: a tenant-scoped page of a busy
//! conversation, first page and a later one, planned with its parameters and as the generic plan
//! a pooled connection's prepared statement switches to after its fifth execution (issue 21).

use std::time::Duration;

use harness::{app::wait_until_every, pg};
use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, Executor, PgConnection, Row};
use uuid::Uuid;

/// The page statements of `GET /conversations/{n}` (all of a conversation's messages, and one
/// tenant's), as `ingress/src/conversations.rs` runs them (checked below, so these copies cannot
/// drift from it).
const PAGE_ALL: &str = r#"SELECT id AS "id!", direction AS "direction!", message_content AS "message_content!",
                          twilio_sid, delivery_status AS "delivery_status!", language_detected,
                          created_at AS "created_at!", route_status, tenant_id, scheduled_for
                   FROM ((SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                                 created_at, route_status, tenant_id, scheduled_for
                          FROM sms_messages
                          WHERE conversation_id = $1 AND sms_page_fits(message_content, twilio_sid, tenant_id)
                            AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                                    COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                          ORDER BY created_at DESC, id DESC
                          LIMIT $4)
                         UNION ALL
                         (SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                                 created_at, route_status, tenant_id, scheduled_for
                          FROM sms_messages
                          WHERE conversation_id = $1 AND NOT sms_page_fits(message_content, twilio_sid, tenant_id)
                            AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                                    COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                          ORDER BY created_at DESC, id DESC
                          LIMIT $4)) page
                   ORDER BY created_at DESC, id DESC
                   LIMIT $4"#;
const PAGE: &str = r#"SELECT id AS "id!", direction AS "direction!", message_content AS "message_content!",
                          twilio_sid, delivery_status AS "delivery_status!", language_detected,
                          created_at AS "created_at!", route_status, tenant_id, scheduled_for
                   FROM ((SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                                 created_at, route_status, tenant_id, scheduled_for
                          FROM sms_messages
                          WHERE conversation_id = $1 AND tenant_id = $5
                            AND sms_page_fits(message_content, twilio_sid, tenant_id)
                            AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                                    COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                          ORDER BY created_at DESC, id DESC
                          LIMIT $4)
                         UNION ALL
                         (SELECT id, direction, message_content, twilio_sid, delivery_status, language_detected,
                                 created_at, route_status, tenant_id, scheduled_for
                          FROM sms_messages
                          WHERE conversation_id = $1 AND tenant_id = $5
                            AND NOT sms_page_fits(message_content, twilio_sid, tenant_id)
                            AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                                    COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
                          ORDER BY created_at DESC, id DESC
                          LIMIT $4)) page
                   ORDER BY created_at DESC, id DESC
                   LIMIT $4"#;

/// The routing decisions of a page's messages, as `ingress/src/conversations.rs` reads them.
const DECISIONS: &str = r#"SELECT p.message_id AS "message_id!", attempt AS "attempt!", reason AS "reason!", agent_url,
                  agent_status, outcome AS "outcome!", detail, latency_ms, decided_at AS "decided_at!"
           FROM UNNEST($2::uuid[]) AS p(message_id)
           CROSS JOIN LATERAL
                ((SELECT id, attempt, reason, agent_url, agent_status, outcome, detail, latency_ms, decided_at
                  FROM sms_routing_decisions
                  WHERE conversation_id = $1 AND message_id = p.message_id
                    AND sms_decision_fits(agent_url, detail))
                 UNION ALL
                 (SELECT id, attempt, reason, agent_url, agent_status, outcome, detail, latency_ms, decided_at
                  FROM sms_routing_decisions
                  WHERE conversation_id = $1 AND message_id = p.message_id
                    AND NOT sms_decision_fits(agent_url, detail))) d
           ORDER BY d.id"#;

/// A tenant's last activity in a conversation another tenant now holds.
const LAST: &str =
    "SELECT created_at FROM sms_messages WHERE conversation_id = $1 AND tenant_id = $2
                 ORDER BY created_at DESC, id DESC LIMIT 1";

/// A page of the usage ledger over all tenants, and over one, as `shared/src/usage.rs` reads them.
const USAGE: &str = "SELECT tenant_id, direction, status, messages, segments FROM sms_usage_logs
                   WHERE (tenant_id, direction, status) > ($3, $4, $5) AND day >= $1 AND day < $2
                   ORDER BY tenant_id, direction, status, day LIMIT $6";
const USAGE_TENANT: &str = "SELECT tenant_id, direction, status, messages, segments FROM sms_usage_logs
                   WHERE tenant_id = $3 AND (direction, status) > ($4, $5) AND day >= $1 AND day < $2
                   ORDER BY tenant_id, direction, status, day LIMIT $6";

fn words(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Shared blocks (hit + read) of a plan, from `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`.
fn blocks(plan: &Value) -> i64 {
    let top = &plan[0]["Plan"];
    top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
}

/// Every node of a plan, depth first.
fn nodes(plan: &Value) -> Vec<&Value> {
    fn walk<'a>(node: &'a Value, out: &mut Vec<&'a Value>) {
        out.push(node);
        for child in node["Plans"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    walk(&plan[0]["Plan"], &mut out);
    out
}

fn node_types(plan: &Value) -> Vec<String> {
    nodes(plan)
        .into_iter()
        .filter_map(|n| {
            let index = n["Index Name"].as_str().unwrap_or("");
            n["Node Type"]
                .as_str()
                .map(|t| format!("{t} {index}").trim().to_owned())
        })
        .collect()
}

/// The index conditions of a plan's index scans.
fn conditions(plan: &Value) -> Vec<String> {
    nodes(plan)
        .into_iter()
        .filter_map(|n| n["Index Cond"].as_str().map(str::to_owned))
        .collect()
}

/// Prepares each (name and parameter types, statement) on `conn`.
async fn prepare(conn: &mut PgConnection, statements: &[(&str, &str)]) {
    for (name, sql) in statements {
        conn.execute(AssertSqlSafe(format!("PREPARE {name} AS {sql}")))
            .await
            .unwrap();
    }
}

/// VACUUMs `table` until every page is marked all-visible (what index-only scans need to skip
/// the heap). `FREEZE` makes VACUUM wait for each page's cleanup lock (a plain VACUUM skips a
/// page another process has pinned, e.g. the checkpointer writing it, and leaves it not
/// all-visible: a heap fetch a row there); a snapshot older than the insert held elsewhere can
/// still defer it, so check.
async fn all_visible(pool: &sqlx::PgPool, table: &str) {
    let done = wait_until_every(
        Duration::from_secs(15),
        Duration::from_millis(250),
        || async {
            pool.execute(AssertSqlSafe(format!("VACUUM (FREEZE, ANALYZE) {table}")))
                .await
                .unwrap();
            sqlx::query_scalar(
                "SELECT relallvisible >= relpages FROM pg_class WHERE oid = $1::text::regclass",
            )
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap()
        },
    )
    .await;
    assert!(done.is_ok(), "VACUUM never marked {table} all-visible");
}

/// Each of `calls` (EXECUTEs of statements prepared on `conn`) explained with ANALYZE and
/// BUFFERS at executions 1 to 8, under `plan_cache_mode` auto and then forced generic (a pooled
/// connection's prepared statement switches to its generic plan from the sixth execution);
/// `check` gets each plan with the mode, execution and call it came from.
async fn at_every_execution(
    conn: &mut PgConnection,
    calls: &[String],
    check: impl Fn(&str, u32, &str, &Value),
) {
    for mode in ["auto", "force_generic_plan"] {
        conn.execute(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .await
            .unwrap();
        for execution in 1..=8 {
            for call in calls {
                let sql = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {call}");
                let plan: Value = sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(&mut *conn)
                    .await
                    .unwrap();
                check(mode, execution, call, &plan);
            }
        }
    }
}

#[test]
fn the_statements_here_are_the_ones_the_endpoint_runs() {
    let source = include_str!("../../../ingress/src/conversations.rs");
    let source = words(source);
    for sql in [PAGE_ALL, PAGE, DECISIONS, LAST] {
        assert!(
            source.contains(&words(sql)),
            "not in conversations.rs: {sql}"
        );
    }
    let source = words(include_str!("../../../shared/src/usage.rs"));
    for sql in [USAGE, USAGE_TENANT] {
        assert!(source.contains(&words(sql)), "not in usage.rs: {sql}");
    }
}

/// One busy conversation: 13,400 messages of its current tenant, 100 of a tenant that held the
/// number before and 6,600 of one that wrote a lot, spread over a year, about one in 45 too long for the
/// page index (2,200 bytes). A page (one tenant's and all), executed eight times on one connection
/// (the fifth and later run the cached generic plan when Postgres prefers it), then forced
/// generic: every execution reads a page's worth of blocks, never the conversation, through an
/// index-only scan of the page index; and each page holds exactly the rows the plain statement
/// (no index split) returns.
#[tokio::test]
async fn a_tenant_page_of_a_busy_conversation_costs_a_page_at_every_execution() {
    let db = pg::fresh_db().await;
    db.pool
        .execute("INSERT INTO tenant_profiles (tenant_id, name) VALUES ('t-busy', 'Busy'), ('t-before', 'Before'), ('t-heavy', 'Heavy')")
        .await
        .unwrap();
    let conversation: Uuid = sqlx::query_scalar(
        "INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id)
         VALUES ('+14155550999', '+14155550999', 't-busy') RETURNING id",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    db.pool
        .execute(AssertSqlSafe(format!(
            "INSERT INTO sms_messages (direction, message_content, delivery_status, to_number,
                                       conversation_id, tenant_id, created_at)
             SELECT 'outbound', CASE WHEN g % 47 = 0 OR g % 1000 = 600 THEN repeat('é', 1100) ELSE 'Rent reminder ' || g END,
                    'delivered', '+14155550999',
                    '{conversation}', CASE WHEN g % 200 = 0 THEN 't-before' WHEN g % 3 = 1 THEN 't-heavy' ELSE 't-busy' END,
                    now() - (g || ' minutes')::interval * 26
             FROM generate_series(1, 20100) g"
        )))
        .await
        .unwrap();
    // 2,000 quiet conversations of ten messages each, half each tenant's: the average
    // conversation the generic plan assumes is small, and neither tenant is rare.
    db.pool
        .execute(
            "WITH c AS (
               INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id)
               SELECT p, p, CASE WHEN g % 2 = 0 THEN 't-busy' ELSE 't-before' END
               FROM generate_series(1, 2000) g, LATERAL (SELECT '+1415700' || lpad(g::text, 4, '0') AS p) n
               RETURNING id, tenant_id)
             INSERT INTO sms_messages (direction, message_content, delivery_status, to_number,
                                       conversation_id, tenant_id, created_at)
             SELECT 'outbound', 'Notice ' || k, 'delivered', '+14155550998', c.id, c.tenant_id,
                    now() - (k || ' days')::interval * 30
             FROM c, generate_series(1, 10) k",
        )
        .await
        .unwrap();
    // A routing decision for each message (the too long ones' too long): as in the quiet
    // conversations, a conversation's decisions are few for the generic plan.
    db.pool
        .execute(
            "INSERT INTO sms_routing_decisions (message_id, attempt, reason, agent_url, outcome, detail)
             SELECT id, 1, 'tenant', 'https://agents.example.com/sms', 'delivered',
                    CASE WHEN octet_length(message_content) > 2000 THEN repeat('x', 2500) END
             FROM sms_messages",
        )
        .await
        .unwrap();
    all_visible(&db.pool, "sms_messages").await;
    all_visible(&db.pool, "sms_routing_decisions").await;

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    prepare(
        &mut conn,
        &[
            ("page(uuid, timestamptz, uuid, bigint, text)", PAGE),
            ("page_all(uuid, timestamptz, uuid, bigint)", PAGE_ALL),
            ("decisions(uuid, uuid[])", DECISIONS),
            ("last(uuid, text)", LAST),
        ],
    )
    .await;
    // A cursor in the middle of the older tenant's messages: page 2 and later.
    let (cursor_at, cursor_id): (chrono::DateTime<chrono::Utc>, Uuid) = sqlx::query_as(
        "SELECT created_at, id FROM sms_messages WHERE tenant_id = 't-before'
         ORDER BY created_at DESC, id DESC OFFSET 10 LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // The first page's messages, whose decisions the page shows.
    let first: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sms_messages WHERE conversation_id = $1 ORDER BY created_at DESC, id DESC LIMIT 51",
    )
    .bind(conversation)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let ids = first
        .iter()
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let calls = [
        format!("EXECUTE page('{conversation}', NULL, NULL, 51, 't-before')"),
        format!("EXECUTE page('{conversation}', '{cursor_at:?}', '{cursor_id}', 11, 't-before')"),
        format!("EXECUTE page('{conversation}', NULL, NULL, 51, 't-busy')"),
        format!("EXECUTE page_all('{conversation}', NULL, NULL, 51)"),
        format!("EXECUTE page_all('{conversation}', '{cursor_at:?}', '{cursor_id}', 51)"),
        format!("EXECUTE decisions('{conversation}', '{{{ids}}}')"),
        format!("EXECUTE last('{conversation}', 't-before')"),
        // A generic plan of max() here aggregated all 6,600 of its rows.
        format!("EXECUTE last('{conversation}', 't-heavy')"),
    ];
    at_every_execution(&mut conn, &calls, |mode, execution, call, plan| {
        let nodes = node_types(plan);
        // A page of up to 51 rows of the conversation's 20,100: an index scan reads a few index
        // pages and one heap page per row at most; the plan that ANDed two indexes read every
        // heap page of the tenant's messages (about 200 here) and sorted them.
        // The decisions: each of the 51 messages costs a descent of the page index (three
        // pages) and of the small one for long decisions (two), within the conversation's part
        // of them, 260 blocks here; the message id is in the index condition (checked below), so
        // no other decision is read (a generic plan that filtered them read 808).
        let bound = if call.contains("decisions(") {
            6 * 51 + 10
        } else {
            70
        };
        assert!(
            blocks(plan) <= bound,
            "{mode}, execution {execution}: {call} read {} blocks: {nodes:?}",
            blocks(plan)
        );
        assert!(
            !nodes.iter().any(|n| n.starts_with("BitmapAnd")),
            "{mode}, execution {execution}: {call}: {nodes:?}"
        );
        // A page's rows lie side by side in the page index: one index page holds dozens.
        let index = if call.contains("page_all(") {
            "Index Only Scan sms_messages_conversation_page_idx"
        } else if call.contains("decisions(") {
            "Index Only Scan sms_routing_decisions_page_idx"
        } else {
            "Index Only Scan sms_messages_conversation_tenant_page_idx"
        };
        assert!(
            call.contains("last(") || nodes.iter().any(|n| n == index),
            "{mode}, execution {execution}: {call}: {nodes:?}"
        );
        assert!(
            !call.contains("decisions(")
                || conditions(plan)
                    .iter()
                    .all(|c| c.contains("message_id = p.message_id")),
            "{mode}, execution {execution}: {call}: {:?}",
            conditions(plan)
        );
    })
    .await;
    // Each page is exactly what the plain statement returns: the two indexes' rows, merged.
    for (tenant, cursor) in [
        (None, None),
        (None, Some((cursor_at, cursor_id))),
        (Some("t-before"), None),
        (Some("t-busy"), Some((cursor_at, cursor_id))),
    ] {
        let (at, id) = cursor.unzip();
        let page: Vec<(Uuid, String)> = match tenant {
            None => sqlx::query(AssertSqlSafe(PAGE_ALL))
                .bind(conversation)
                .bind(at)
                .bind(id)
                .bind(51_i64),
            Some(t) => sqlx::query(AssertSqlSafe(PAGE))
                .bind(conversation)
                .bind(at)
                .bind(id)
                .bind(51_i64)
                .bind(t),
        }
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(2)))
        .collect();
        let plain: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT id, message_content FROM sms_messages
             WHERE conversation_id = $1 AND ($4::text IS NULL OR tenant_id = $4)
               AND (created_at, id) < (COALESCE($2::timestamptz, 'infinity'),
                                       COALESCE($3::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
             ORDER BY created_at DESC, id DESC LIMIT 51",
        )
        .bind(conversation)
        .bind(at)
        .bind(id)
        .bind(tenant)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        assert_eq!(page.len(), 51, "{tenant:?} {cursor:?}");
        assert!(
            plain.iter().any(|(_, text)| text.len() > 2000),
            "the page holds a long message"
        );
        assert_eq!(page, plain, "{tenant:?} {cursor:?}");
    }
    // The page's decisions are exactly those a lookup by message finds, in the same order.
    let pool = &db.pool;
    let decisions = |sql: &'static str| {
        let first = first.clone();
        async move {
            let rows = sqlx::query(AssertSqlSafe(sql))
                .bind(conversation)
                .bind(first)
                .fetch_all(pool)
                .await
                .unwrap();
            rows.iter()
                .map(|r| (r.get::<Uuid, _>(0), r.get::<Option<String>, _>(6)))
                .collect::<Vec<_>>()
        }
    };
    let page = decisions(DECISIONS).await;
    let plain = decisions(
        "SELECT message_id, attempt, reason, agent_url, agent_status, outcome, detail FROM sms_routing_decisions
         WHERE $1::uuid IS NOT NULL AND message_id = ANY($2) ORDER BY id",
    )
    .await;
    assert_eq!(page.len(), 51);
    assert!(
        page.iter().any(|(_, detail)| detail.is_some()),
        "a long decision"
    );
    assert_eq!(page, plain);
    conn.close().await.unwrap();
}

/// A year of the usage ledger: 600 tenants, two keys each, a row per day. A page of 1,608 day rows
/// (what a 200-row page reads), over all tenants and over one, at every execution and forced
/// generic: an index-only scan of the primary key, which holds the counts, in key order with no
/// sort; through the plain key each row was a heap fetch (day rows lie in the heap by day).
#[tokio::test]
async fn a_usage_page_is_an_index_only_scan_at_every_execution() {
    let db = pg::fresh_db().await;
    db.pool
        .execute(
            "INSERT INTO sms_usage_logs (tenant_id, direction, status, day, messages, segments)
             SELECT 't-' || lpad(t::text, 4, '0'), d, s, current_date - k, 3, 4
             FROM generate_series(1, 600) t, generate_series(0, 364) k,
                  (VALUES ('inbound', 'received'), ('outbound', 'delivered')) v(d, s)",
        )
        .await
        .unwrap();
    // As autovacuum leaves a ledger whose old days no longer change: pages all-visible.
    all_visible(&db.pool, "sms_usage_logs").await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    prepare(
        &mut conn,
        &[
            ("usage(date, date, text, text, text, bigint)", USAGE),
            (
                "usage_tenant(date, date, text, text, text, bigint)",
                USAGE_TENANT,
            ),
        ],
    )
    .await;
    let month = "current_date - 29, current_date + 1";
    let year = "current_date - 364, current_date + 1";
    let calls = [
        format!("EXECUTE usage({month}, '', '', '', 1608)"),
        format!("EXECUTE usage({month}, 't-0300', 'inbound', 'received', 1608)"),
        format!("EXECUTE usage({year}, '', '', '', 1608)"),
        format!("EXECUTE usage_tenant({year}, 't-0042', '', '', 1608)"),
    ];
    at_every_execution(&mut conn, &calls, |mode, execution, call, plan| {
        assert_eq!(
            node_types(plan),
            ["Limit", "Index Only Scan sms_usage_logs_pkey"],
            "{mode}, execution {execution}: {call}"
        );
        // 1,608 rows of a month are some 54 keys' years: about 20,000 index entries, 170 leaf
        // pages (no skip scan in Postgres 15); heap fetches would add a page a row.
        assert!(
            blocks(plan) <= 300,
            "{mode}, execution {execution}: {call} read {} blocks, {} heap fetches",
            blocks(plan),
            plan[0]["Plan"]["Plans"][0]["Heap Fetches"]
        );
    })
    .await;
    conn.close().await.unwrap();
}

/// A decision carries its message's conversation (what the page index is keyed by): the trigger
/// fills it whoever inserts, and the backfill migration fills the decisions stored before it.
#[tokio::test]
async fn every_decision_carries_its_messages_conversation() {
    let db = pg::fresh_db().await;
    db.pool
        .execute(
            "WITH c AS (INSERT INTO sms_conversations (phone_number, phone_number_original)
                        SELECT p, p FROM generate_series(1, 20) g,
                             LATERAL (SELECT '+1415700' || lpad(g::text, 4, '0') AS p) n
                        RETURNING id),
                  m AS (INSERT INTO sms_messages (direction, message_content, delivery_status, conversation_id)
                        SELECT 'inbound', 'hi', 'received', c.id FROM c, generate_series(1, 5)
                        RETURNING id)
             INSERT INTO sms_routing_decisions (message_id, attempt, reason, outcome)
             SELECT id, 1, 'tenant', 'delivered' FROM m",
        )
        .await
        .unwrap();
    let wrong =
        "SELECT count(*) FROM sms_routing_decisions d JOIN sms_messages m ON m.id = d.message_id
                 WHERE d.conversation_id IS DISTINCT FROM m.conversation_id";
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).fetch_one(&db.pool);
    assert_eq!(count(wrong).await.unwrap(), 0, "the trigger fills it");
    // As stored before the trigger existed.
    db.pool
        .execute("UPDATE sms_routing_decisions SET conversation_id = NULL WHERE id % 3 <> 0")
        .await
        .unwrap();
    assert!(count(wrong).await.unwrap() > 0);
    db.pool
        .execute(include_str!(
            "../../../migrations/20261209000007_routing_decisions_conversation_backfill.sql"
        ))
        .await
        .unwrap();
    assert_eq!(
        count(wrong).await.unwrap(),
        0,
        "the backfill fills the rest"
    );
    assert_eq!(
        count("SELECT count(*) FROM sms_routing_decisions")
            .await
            .unwrap(),
        100
    );
}
