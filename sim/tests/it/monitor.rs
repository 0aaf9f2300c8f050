use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sim::monitor::{Faults, LanguageUpdate, MonitorSim, MonitorSimHandle, Tenant, demo_tenants};

fn tenant(id: &str, numbers: &[&str], lang: Option<&str>) -> Tenant {
    Tenant {
        tenant_id: id.into(),
        name: Some(format!("Tenant {id}")),
        phone_numbers: numbers.iter().map(|s| s.to_string()).collect(),
        language_preference: lang.map(str::to_owned),
    }
}

async fn monitor() -> MonitorSimHandle {
    let m = MonitorSim::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    m.seed([
        tenant("t-1", &["+15551230001", "(555) 123-0011"], Some("pt")),
        tenant("t-2", &["5551230002"], None),
    ]);
    m
}

/// `(status, JSON body or Null)` of a lookup.
async fn lookup(http: &reqwest::Client, m: &MonitorSimHandle, phone: &str) -> (u16, Value) {
    let resp = http
        .get(format!("{}/tenants/lookup", m.base_url()))
        .query(&[("phone", phone)])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn post_json(http: &reqwest::Client, url: String, body: Value) -> u16 {
    http.post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn lookup_matches_seeded_forms_exactly() {
    let m = monitor().await;
    let http = reqwest::Client::new();
    assert!(m.base_url().starts_with("http://127.0.0.1:") && !m.base_url().ends_with('/'));

    let (status, body) = lookup(&http, &m, "+15551230001").await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"tenant_id": "t-1", "name": "Tenant t-1",
               "phone_numbers": ["+15551230001", "(555) 123-0011"], "language_preference": "pt"})
    );
    assert_eq!(
        lookup(&http, &m, "(555) 123-0011").await.1["tenant_id"],
        "t-1"
    );
    let (status, body) = lookup(&http, &m, "5551230002").await;
    assert_eq!(status, 200);
    assert_eq!(body["language_preference"], Value::Null);

    // Other written forms of seeded numbers are not found: no normalisation.
    for other in ["15551230001", "555-123-0011", "+15551230002", ""] {
        let (status, body) = lookup(&http, &m, other).await;
        assert_eq!(status, 404, "{other:?}");
        assert_eq!(body, json!({"error": "not_found"}));
    }
    // An unencoded `+` decodes to a space, as with any server.
    let raw = http
        .get(format!(
            "{}/tenants/lookup?phone=+15551230001",
            m.base_url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 404);

    let missing = http
        .get(format!("{}/tenants/lookup", m.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 400);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"],
        "missing_phone"
    );

    let stats = m.stats();
    assert_eq!(stats.lookups, 8, "a request without phone is no lookup");
    assert_eq!(
        stats.lookup_phones,
        vec![
            "+15551230001",
            "(555) 123-0011",
            "5551230002",
            "15551230001",
            "555-123-0011",
            "+15551230002",
            "",
            " 15551230001"
        ]
    );
}

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let m = MonitorSim::start_with_key("127.0.0.1:0".parse().unwrap(), Some("k-123".into()))
        .await
        .unwrap();
    m.seed([tenant("t-1", &["+15551230001"], None)]);
    let http = reqwest::Client::new();
    let url = format!("{}/tenants/lookup?phone=%2B15551230001", m.base_url());

    let none = http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.json::<Value>().await.unwrap(),
        json!({"error": "unauthorized"})
    );
    let wrong = http.get(&url).bearer_auth("nope").send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http.get(&url).bearer_auth("k-123").send().await.unwrap();
    assert_eq!(right.status(), 200);

    let put = |key: Option<&str>| {
        let mut req = http
            .put(format!("{}/tenants/t-1/language", m.base_url()))
            .json(&json!({"language": "es", "confidence": 0.9}));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some("k-123")).await.unwrap().status(), 204);

    // The control API needs no key.
    let stats: Value = http
        .get(format!("{}/_sim/monitor/stats", m.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["unauthorized"], 3);
    assert_eq!(stats["lookups"], 3);
    assert_eq!(stats["language_updates"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn language_updates_are_recorded_and_validated() {
    let m = monitor().await;
    let http = reqwest::Client::new();
    let put = |id: &str, body: Value| {
        http.put(format!("{}/tenants/{id}/language", m.base_url()))
            .json(&body)
            .send()
    };
    let ok = put("t-2", json!({"language": "es", "confidence": 0.93}))
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(
        lookup(&http, &m, "5551230002").await.1["language_preference"],
        "es"
    );

    let unknown = put("t-404", json!({"language": "es", "confidence": 0.5}))
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(
        unknown.json::<Value>().await.unwrap(),
        json!({"error": "not_found"})
    );

    for bad in [
        json!({"language": "es"}),
        json!({"language": "", "confidence": 0.5}),
        json!({"language": "es", "confidence": 3}),
        json!(["es"]),
    ] {
        let resp = put("t-1", bad.clone()).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(resp.json::<Value>().await.unwrap()["error"], "bad_body");
    }
    let not_json = http
        .put(format!("{}/tenants/t-1/language", m.base_url()))
        .body("language=es")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 400);

    assert_eq!(
        m.stats().language_updates,
        vec![LanguageUpdate {
            tenant_id: "t-2".into(),
            language: "es".into(),
            confidence: 0.93
        }]
    );
}

#[tokio::test]
async fn fail_next_answers_the_status_then_recovers() {
    let m = monitor().await;
    let http = reqwest::Client::new();
    let faults = format!("{}/_sim/monitor/faults", m.base_url());
    assert_eq!(
        post_json(&http, faults.clone(), json!({"fail_next": 2})).await,
        204
    );
    assert_eq!(m.faults().fail_status, 503, "default fail_status");

    let (status, body) = lookup(&http, &m, "+15551230001").await;
    assert_eq!((status, body["error"].as_str()), (503, Some("unavailable")));
    // Any Monitor endpoint consumes the count.
    let put = http
        .put(format!("{}/tenants/t-1/language", m.base_url()))
        .json(&json!({"language": "en", "confidence": 0.8}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 503);
    assert_eq!(lookup(&http, &m, "+15551230001").await.0, 200);

    m.set_faults(Faults {
        fail_next: 1,
        fail_status: 429,
        ..Faults::default()
    });
    assert_eq!(lookup(&http, &m, "+15551230001").await.0, 429);
    assert_eq!(lookup(&http, &m, "+15551230001").await.0, 200);
    assert_eq!(m.stats().lookups, 4, "failed lookups are recorded too");
    assert!(m.stats().language_updates.is_empty());

    for bad in [
        json!({"fail_status": 200}),
        json!({"latency_ms": -1}),
        json!({"fail_nxt": 2}),
        json!([]),
    ] {
        assert_eq!(post_json(&http, faults.clone(), bad).await, 400);
    }
}

#[tokio::test]
async fn latency_delays_every_request() {
    let m = monitor().await;
    let http = reqwest::Client::new();
    m.set_faults(Faults {
        latency_ms: 150,
        ..Faults::default()
    });
    let t0 = Instant::now();
    assert_eq!(lookup(&http, &m, "+15551230001").await.0, 200);
    assert_eq!(lookup(&http, &m, "nobody").await.0, 404);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    // The control API is never delayed.
    let t1 = Instant::now();
    m.reset();
    http.get(format!("{}/_sim/monitor/stats", m.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(m.faults(), Faults::default());
    assert!(t1.elapsed() < Duration::from_millis(150));
}

#[tokio::test]
async fn down_answers_503_until_cleared() {
    let m = monitor().await;
    let http = reqwest::Client::new();
    let faults = format!("{}/_sim/monitor/faults", m.base_url());
    assert_eq!(
        post_json(&http, faults.clone(), json!({"down": true})).await,
        204
    );
    for _ in 0..3 {
        assert_eq!(lookup(&http, &m, "+15551230001").await.0, 503);
    }
    let put = http
        .put(format!("{}/tenants/t-1/language", m.base_url()))
        .json(&json!({"language": "en", "confidence": 0.8}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 503);
    assert_eq!(post_json(&http, faults, json!({"down": false})).await, 204);
    assert_eq!(lookup(&http, &m, "+15551230001").await.0, 200);
    assert_eq!(m.stats().requests, 5);
}

#[tokio::test]
async fn timeout_next_hangs_past_the_callers_timeout() {
    let m = monitor().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    m.set_faults(Faults {
        timeout_next: 1,
        ..Faults::default()
    });
    let err = http
        .get(format!(
            "{}/tenants/lookup?phone=%2B15551230001",
            m.base_url()
        ))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(m.faults().timeout_next, 0);
    assert_eq!(lookup(&http, &m, "+15551230001").await.0, 200);
    assert_eq!(m.stats().lookups, 2);
    // Shutting down releases the hanging request instead of waiting 30 s.
    m.set_faults(Faults {
        timeout_next: 1,
        ..Faults::default()
    });
    let slow = reqwest::Client::new();
    let url = format!("{}/tenants/lookup?phone=x", m.base_url());
    let hanging = tokio::spawn(async move { slow.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t0 = Instant::now();
    m.shutdown().await;
    assert!(t0.elapsed() < Duration::from_secs(3));
    let answer = tokio::time::timeout(Duration::from_secs(3), hanging)
        .await
        .expect("released")
        .unwrap();
    assert_eq!(answer.unwrap().as_u16(), 504);
}

#[tokio::test]
async fn control_api_seeds_reports_and_resets() {
    let m = MonitorSim::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = m.base_url();
    let seeded = post_json(
        &http,
        format!("{base}/_sim/monitor/tenants"),
        json!([{"tenant_id": "t-9", "phone_numbers": ["+15559990000"]},
               {"tenant_id": "t-8", "name": "Eight", "phone_numbers": ["8"], "language_preference": "en"}]),
    )
    .await;
    assert_eq!(seeded, 204);
    // Upsert: the same id replaces the tenant.
    let upsert = json!([{"tenant_id": "t-9", "phone_numbers": ["+15559990001"]}]);
    assert_eq!(
        post_json(&http, format!("{base}/_sim/monitor/tenants"), upsert).await,
        204
    );
    assert_eq!(lookup(&http, &m, "+15559990000").await.0, 404);
    let (status, body) = lookup(&http, &m, "+15559990001").await;
    assert_eq!(status, 200);
    assert_eq!(body["name"], Value::Null);
    let listed: Vec<Tenant> = http
        .get(format!("{base}/_sim/monitor/tenants"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);

    for bad in [
        json!({"tenant_id": "x"}),
        json!([{"name": "no id"}]),
        json!([{"tenant_id": " "}]),
    ] {
        assert_eq!(
            post_json(&http, format!("{base}/_sim/monitor/tenants"), bad).await,
            400
        );
    }

    m.set_faults(Faults {
        fail_next: 5,
        ..Faults::default()
    });
    let stats: Value = http
        .get(format!("{base}/_sim/monitor/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["lookups"], 2);
    assert_eq!(
        stats["lookup_phones"],
        json!(["+15559990000", "+15559990001"])
    );
    assert_eq!(stats["language_updates"], json!([]));

    let reset = http
        .post(format!("{base}/_sim/monitor/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(m.stats().lookups, 0);
    assert_eq!(m.faults(), Faults::default());
    assert_eq!(
        lookup(&http, &m, "+15559990001").await.0,
        200,
        "tenants kept"
    );

    let health = http
        .get(format!("{base}/_sim/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let nowhere = http.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 404);
    assert_eq!(
        nowhere.json::<Value>().await.unwrap()["error"],
        "no_such_route"
    );
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let m = monitor().await;
    let addr = m.addr();
    drop(m);
    let http = reqwest::Client::new();
    let mut refused = false;
    for _ in 0..50 {
        if http
            .get(format!("http://{addr}/_sim/health"))
            .send()
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "server still answering after drop");
}

#[test]
fn demo_tenants_cover_three_languages() {
    let demo = demo_tenants();
    for lang in ["en", "es", "pt"] {
        assert!(
            demo.iter()
                .any(|t| t.language_preference.as_deref() == Some(lang))
        );
    }
    assert!(demo.iter().any(|t| t.phone_numbers.len() == 2));
    assert!(demo.iter().any(|t| t.language_preference.is_none()));
    assert!(
        demo.iter()
            .any(|t| t.phone_numbers.contains(&"+14155550101".to_string()))
    );
    let ids: std::collections::HashSet<_> = demo.iter().map(|t| &t.tenant_id).collect();
    assert_eq!(ids.len(), demo.len());
}
