//! The tenant directory at scale (10,000 tenants, several numbers each: lookups use their
//! indexes, the cache hit rate on a realistic traffic mix), tenant phone management, and usage.

use harness::{
    app::{Settings, TestApp},
    pg,
};
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shared::{jobs, phone, tenants::Resolution};

async fn seed_directory(pool: &sqlx::PgPool, tenants: i32) {
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers)
         SELECT 't-' || g, jsonb_build_array('+1555' || lpad(g::text, 7, '0'), '+1556' || lpad(g::text, 7, '0'), '+1557' || lpad(g::text, 7, '0'))
         FROM generate_series(1, $1) g",
    )
    .bind(tenants)
    .execute(pool)
    .await
    .unwrap();
    // The steady state autovacuum keeps: a GIN index's statistics (in its metapage) are refreshed by
    // VACUUM only, and until then the planner prices the index as empty.
    sqlx::query("VACUUM ANALYZE tenant_profiles")
        .execute(pool)
        .await
        .unwrap();
}

async fn plan(pool: &sqlx::PgPool, sql: &str) -> String {
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN {sql}")))
        .fetch_all(pool)
        .await
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn ten_thousand_tenants_lookups_are_indexed() {
    let db = pg::fresh_db().await;
    seed_directory(&db.pool, 10_000).await;
    // The worker's lookup: any of a tenant's numbers, in any written form.
    let p = plan(&db.pool, "SELECT tenant_id FROM tenant_profiles WHERE phone_numbers ?| ARRAY['+15550004242', '5550004242'] ORDER BY updated_at DESC LIMIT 1").await;
    assert!(p.contains("tenant_profiles_phone_numbers_idx"), "{p}");
    for (sql, index) in [
        (
            "SELECT id FROM sms_conversations WHERE phone_number = '+15550004242'",
            "sms_conversations_phone_number_key",
        ),
        (
            "SELECT id FROM sms_messages WHERE twilio_sid = 'SM1'",
            "sms_messages_twilio_sid_key",
        ),
        (
            "SELECT id FROM sms_messages WHERE conversation_id = '00000000-0000-0000-0000-000000000000' ORDER BY created_at DESC, id DESC LIMIT 50",
            "sms_messages_conversation_created_idx",
        ),
        (
            "SELECT 1 FROM tenant_profiles WHERE tenant_id = 't-42' AND phone_numbers ? '+15550000042'",
            "tenant_profiles_pkey",
        ),
        (
            "SELECT name FROM api_keys WHERE key_hash = 'x'",
            "api_keys_key_hash_key",
        ),
    ] {
        let p = plan(&db.pool, sql).await;
        assert!(p.contains(index), "{sql}: {p}");
    }
}

#[tokio::test]
async fn tenant_cache_hit_rate_on_a_realistic_mix() {
    let db = pg::fresh_db().await;
    seed_directory(&db.pool, 10_000).await;
    let cfg = shared::config::TenantCache {
        ttl: std::time::Duration::from_secs(300),
        negative_ttl: std::time::Duration::from_secs(60),
        capacity: 100_000,
    };
    let resolver = shared::tenants::TenantResolver::new(
        db.pool.clone(),
        None,
        &cfg,
        phonenumber::country::Id::US,
    );
    // 20,000 inbound messages over a working day, arriving as exchanges: a tenant writes a few
    // messages within minutes (well inside the cache TTL) while talking to their agent. Who
    // writes follows Zipf (s = 1.1) over 10,000 tenants: a few text a lot, most rarely. 90% come
    // from a tenant's main number, 10% from their two others; 5% of exchanges come from numbers
    // that belong to no tenant.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let weights: Vec<f64> = (1..=10_000).map(|k| 1.0 / (k as f64).powf(1.1)).collect();
    let total: f64 = weights.iter().sum();
    let (mut found, mut sent) = (0, 0);
    while sent < 20_000 {
        let number = if rng.random_bool(0.05) {
            format!("+1559{:07}", rng.random_range(0..2_000))
        } else {
            let mut x = rng.random_range(0.0..total);
            let mut k = 0;
            while x > weights[k] && k < weights.len() - 1 {
                x -= weights[k];
                k += 1;
            }
            // Most messages come from a tenant's main number, some from their others.
            let line = if rng.random_bool(0.9) {
                0
            } else {
                rng.random_range(1..3)
            };
            format!("+155{}{:07}", 5 + line, k + 1)
        };
        // An exchange: 1 to 8 messages, 2.5 on average.
        let mut burst = 1;
        while burst < 8 && rng.random_bool(0.6) {
            burst += 1;
        }
        let e164 = phone::normalize(&number, phonenumber::country::Id::US).unwrap();
        for _ in 0..burst {
            sent += 1;
            if let Resolution::Found(_) = resolver.resolve(&number, Some(&e164)).await.unwrap() {
                found += 1;
            }
        }
    }
    let stats = resolver.stats();
    println!(
        "tenant cache over 20,000 lookups: hit rate {:.1}% ({} hits, {} misses), {found} found",
        stats.hit_rate * 100.0,
        stats.hits,
        stats.misses
    );
    assert!(found > 18_000, "found {found} of {sent}");
    assert!(stats.hit_rate > 0.8, "hit rate {:.3}", stats.hit_rate);
}

#[tokio::test]
async fn tenant_phones_are_managed_and_isolated() {
    let db = pg::fresh_db().await;
    sqlx::query("INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES ('t-1', '[\"+15551110001\"]'), ('t-2', '[\"+15552220002\"]')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    let admin = app.api_key(&["admin"], None).await;
    let resp = app
        .http
        .post(app.url("/tenants/t-1/phones"))
        .bearer_auth(&admin)
        .json(&json!({"phone_number": "(555) 111-0009"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let again = app
        .http
        .post(app.url("/tenants/t-1/phones"))
        .bearer_auth(&admin)
        .json(&json!({"phone_number": "+15551110009"}))
        .send()
        .await
        .unwrap();
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body["phone_numbers"],
        json!(["+15551110001", "+15551110009"]),
        "no duplicates"
    );
    let bad = app
        .http
        .post(app.url("/tenants/t-1/phones"))
        .bearer_auth(&admin)
        .json(&json!({"phone_number": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The new number resolves to t-1, which then tracks it as most recently used.
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15551110009", "hi from my new phone").await;
    app.drain(jobs::INBOUND).await;
    let key_1 = app.api_key(&["read"], Some("t-1")).await;
    let mine: Value = app.get_json("/tenants/t-1/phones", Some(&key_1)).await.1;
    assert_eq!(mine["last_used_phone_number"], "+15551110009");
    assert_eq!(
        app.http
            .get(app.url("/tenants/t-2/phones"))
            .bearer_auth(&key_1)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let del = app
        .http
        .delete(app.url("/tenants/t-1/phones/+15551110009"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let body: Value = del.json().await.unwrap();
    assert_eq!(body["phone_numbers"], json!(["+15551110001"]));
    assert!(body["last_used_phone_number"].is_null());
}

#[tokio::test]
async fn usage_counts_messages_and_segments_per_tenant() {
    let db = pg::fresh_db().await;
    sqlx::query("INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES ('t-1', '[\"+14152110001\"]'), ('t-2', '[\"+14152220002\"]'), ('t &#3.x', '[\"+14152330003\"]')")
        .execute(&db.pool)
        .await
        .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    for _ in 0..3 {
        app.inbound("+14152110001", "hola").await;
    }
    app.inbound("+14152220002", "hi").await;
    app.inbound("+14152330003", "yo").await;
    app.drain(jobs::INBOUND).await;
    let sender = app.api_key(&["send"], None).await;
    let resp = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(&sender)
        .json(&json!({"to": "+14152110001", "body": "x".repeat(200)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let key_1 = app.api_key(&["read"], Some("t-1")).await;
    let usage: Value = app.get_json("/usage", Some(&key_1)).await.1;
    assert_eq!(usage["tenant_id"], "t-1");
    let rows = usage["rows"].as_array().unwrap();
    let find = |dir: &str, status: &str| {
        rows.iter()
            .find(|r| r["direction"] == dir && r["status"] == status)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(find("inbound", "received")["messages"], 3);
    assert_eq!(find("inbound", "received")["segments"], 3);
    assert_eq!(find("outbound", "pending")["messages"], 1);
    assert_eq!(find("outbound", "pending")["segments"], 2);
    assert!(rows.iter().all(|r| r["tenant_id"] == "t-1"));
    assert_eq!(
        app.http
            .get(app.url("/usage?tenant_id=t-2"))
            .bearer_auth(&key_1)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let admin = app.api_key(&["read"], None).await;
    let all: Value = app.get_json("/usage?from=2000-01-01", Some(&admin)).await.1;
    assert!(
        all["rows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["tenant_id"] == "t-2")
    );
    // Page by page, one row each, the cursor URL-encoded (a tenant id may hold `&`, `#`, `.`):
    // the same rows as one page.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = vec![("from", "2000-01-01".to_owned()), ("limit", "1".to_owned())];
        query.extend(cursor.take().map(|c| ("cursor", c)));
        let resp = app
            .http
            .get(app.url("/usage"))
            .query(&query)
            .bearer_auth(&admin);
        let page: Value = resp.send().await.unwrap().json().await.unwrap();
        paged.extend(page["rows"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(&paged, all["rows"].as_array().unwrap());
    assert!(paged.iter().any(|r| r["tenant_id"] == "t &#3.x"));
    assert_eq!(
        app.http
            .get(app.url("/usage?from=yesterday"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
}

/// A chunk's senders resolved at once answer what each resolved alone answers: first-listed
/// owner of a shared number, written forms, numbers no tenant lists, repeats, and a mix of
/// cached and uncached numbers in one call.
#[tokio::test]
async fn a_chunk_of_senders_resolves_as_each_alone() {
    let db = pg::fresh_db().await;
    seed_directory(&db.pool, 50).await;
    // t-older and t-newer both list +15559990001; the older profile wins.
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers, created_at) VALUES
           ('t-older', '[\"+15559990001\"]', now() - interval '2 days'),
           ('t-newer', '[\"+15559990001\", \"(555) 999-0002\"]', now() - interval '1 day')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let cfg = shared::config::TenantCache {
        ttl: std::time::Duration::from_secs(300),
        negative_ttl: std::time::Duration::from_secs(60),
        capacity: 1_000,
    };
    let new_resolver = || {
        shared::tenants::TenantResolver::new(
            db.pool.clone(),
            None,
            &cfg,
            phonenumber::country::Id::US,
        )
    };
    let written = [
        "+15559990001", // shared: t-older
        "5559990002",   // listed in a written form by t-newer
        "+15550000007", // t-7's main number
        "+15570000012", // t-12's third number
        "+15558880000", // nobody's
        "+15550000007", // a repeat
        "555-999-0001", // the shared number written otherwise
    ];
    let e164: Vec<_> = written
        .iter()
        .map(|n| phone::normalize(n, phonenumber::country::Id::US).ok())
        .collect();
    let alone = new_resolver();
    let mut expected = Vec::new();
    for (n, e) in written.iter().zip(&e164) {
        expected.push(alone.resolve(n, e.as_ref()).await.unwrap());
    }
    let tenant = |r: &Resolution| match r {
        Resolution::Found(t) => Some(t.tenant_id.clone()),
        _ => None,
    };
    assert_eq!(
        expected.iter().map(tenant).collect::<Vec<_>>(),
        vec![
            Some("t-older".into()),
            Some("t-newer".into()),
            Some("t-7".into()),
            Some("t-12".into()),
            None,
            Some("t-7".into()),
            Some("t-older".into()),
        ]
    );
    let batch = new_resolver();
    // Two of them cached first, so the call mixes hits and one statement for the rest.
    batch.resolve(written[2], e164[2].as_ref()).await.unwrap();
    batch.resolve(written[4], e164[4].as_ref()).await.unwrap();
    let senders: Vec<(&str, Option<&phone::E164>)> = written
        .iter()
        .zip(&e164)
        .map(|(n, e)| (*n, e.as_ref()))
        .collect();
    let answers = batch.resolve_many(&senders).await.unwrap();
    assert_eq!(answers, expected);
    let stats = batch.stats();
    // 2 misses before; then 3 hits (the two cached, the repeat) and 3 misses: the shared
    // number's other written form has the same key and is asked once.
    assert_eq!((stats.hits, stats.misses), (3, 5), "{stats:?}");
    assert_eq!(stats.shared_numbers, 1, "{stats:?}");
    assert_eq!(batch.resolve_many(&[]).await.unwrap(), vec![]);
}
