//! Prometheus metrics: the ingress's /metrics and a worker process's own /metrics port, read
//! after real traffic.

use std::{collections::BTreeMap, time::Duration};

use harness::sims;
use harness::{
    app::{Settings, TestApp, wait_until},
    pg,
};
use serde_json::{Value, json};
use sim::twilio::Faults;

/// The value of the sample `name{labels}` (labels as Prometheus prints them, sorted by name).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn worker_and_ingress_expose_the_operational_metrics() {
    let tw = sims::twilio().await;
    let refused = "+14157650001";
    tw.set_faults(Faults {
        permanent_errors: BTreeMap::from([(refused.to_string(), 21211)]),
        ..Faults::default()
    });
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0"),
    )
    .await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES ('t-m', '[\"+14152110001\"]')",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let port = pg::free_port().expect("a free port");
    let addr = format!("127.0.0.1:{port}");
    let mut worker = app.spawn_worker_process(
        "inbound,outbound-send,outbound-status",
        &[("WORKER_METRICS_ADDR", addr.as_str())],
    );

    app.inbound("+14152110001", "Sí, gracias, mañana pago la renta")
        .await;
    app.inbound("+14152110001", "Obrigado, vou pagar amanhã")
        .await;
    app.inbound("+14159990000", "When is the rent due this month?")
        .await;
    let key = app.api_key(&["send"], None).await;
    for to in ["+14157654321", refused] {
        let resp = app
            .http
            .post(app.url("/sms/send"))
            .bearer_auth(&key)
            .json(&json!({"to": to, "body": "Your rent is due"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
    }

    let url = format!("http://{addr}/metrics");
    let scrape = || async {
        match app.http.get(&url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    };
    // Everything has happened once the worker counted the three inbound messages, both sends
    // and at least one applied delivery status.
    let done = wait_until(Duration::from_secs(30), || async {
        let text = scrape().await;
        sample(&text, "sms_inbound_numbers_total{tenant=\"known\"}") == Some(2.0)
            && sample(&text, "sms_inbound_numbers_total{tenant=\"unknown\"}") == Some(1.0)
            && sample(
                &text,
                "sms_twilio_sends_total{code=\"21211\",outcome=\"permanent\"}",
            ) == Some(1.0)
            && sample(
                &text,
                "sms_twilio_sends_total{code=\"\",outcome=\"accepted\"}",
            ) == Some(1.0)
            && sample(&text, "sms_delivery_status_total{status=\"delivered\"}") == Some(1.0)
    })
    .await;
    let text = scrape().await;
    assert!(
        done.is_ok(),
        "worker metrics never showed the traffic:\n{text}"
    );

    assert_eq!(
        sample(&text, "sms_language_detected_total{language=\"es\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "sms_language_detected_total{language=\"pt\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "sms_language_detected_total{language=\"en\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "sms_delivery_status_total{status=\"failed\"}"),
        Some(1.0)
    );
    assert!(
        sample(&text, "sms_jobs_total{queue=\"inbound\",result=\"done\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            "sms_jobs_total{queue=\"outbound-send\",result=\"done\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "sms_job_duration_seconds_count{queue=\"inbound\"}").unwrap_or(0.0) >= 1.0
    );
    // Every inbound message asks the tenant cache once (hit or miss by timing of batches).
    let lookups = sample(&text, "sms_tenant_cache_lookups_total{result=\"hit\"}").unwrap_or(0.0)
        + sample(&text, "sms_tenant_cache_lookups_total{result=\"miss\"}").unwrap_or(0.0);
    assert_eq!(lookups, 3.0, "{text}");
    assert!(sample(&text, "sms_tenant_cache_hit_ratio").is_some());
    assert!(sample(&text, "sms_db_pool_connections{state=\"max\"}").unwrap() >= 1.0);
    assert!(sample(&text, "sms_queue_jobs{queue=\"inbound\",state=\"pending\"}").is_some());
    assert!(sample(&text, "sms_queue_oldest_pending_seconds{queue=\"route\"}").is_some());

    // The ingress: webhook outcomes, latency by route template (never a raw path with a
    // number in it), and the queue depth it can see in the database.
    let text = app.metrics_text().await;
    assert_eq!(
        sample(&text, "sms_webhooks_total{outcome=\"stored\"}"),
        Some(3.0)
    );
    assert!(
        sample(
            &text,
            "sms_http_request_duration_seconds_count{method=\"POST\",route=\"/webhook/twilio/sms\",status=\"200\"}"
        ) == Some(3.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "sms_http_request_duration_seconds_count{method=\"POST\",route=\"/sms/send\",status=\"202\"}"
        ) == Some(2.0)
    );
    assert!(sample(&text, "sms_status_callbacks_total{outcome=\"stored\"}").unwrap_or(0.0) >= 1.0);
    for number in ["4152110001", "4159990000", "4157654321", "4157650001"] {
        assert!(!text.contains(number), "no phone number in metrics");
    }
    assert!(sample(&text, "sms_queue_jobs{queue=\"inbound\",state=\"pending\"}").is_some());

    worker.kill().ok();
    worker.wait().ok();
}

#[tokio::test]
async fn a_taken_metrics_port_is_a_configuration_error() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut worker = app.spawn_worker_process("inbound", &[("WORKER_METRICS_ADDR", addr.as_str())]);
    let status = tokio::task::spawn_blocking(move || worker.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(2));
}

/// The ingress's service-wide figures stay off the listener Twilio reaches: `/metrics` there
/// needs a read key without a tenant, readiness there names no database error; `METRICS_ADDR`,
/// the operations listener, serves both without a key, the readiness with its reason.
#[tokio::test]
async fn metrics_and_detailed_readiness_live_on_the_operations_listener() {
    let db = harness::pg::fresh_db().await;
    let (port, ops) = (
        harness::pg::free_port().unwrap(),
        harness::pg::free_port().unwrap(),
    );
    let logs = std::env::temp_dir().join(format!("sms-ops-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&logs).unwrap();
    let settings = Settings::new(&db).set("METRICS_ADDR", format!("127.0.0.1:{ops}"));
    let _ingress = harness::fleet::Service::ingress(
        "ingress",
        &settings,
        port,
        &format!("http://127.0.0.1:{port}"),
        &logs,
    )
    .await;
    let http = reqwest::Client::new();
    let public = format!("http://127.0.0.1:{port}");
    let ops = format!("http://127.0.0.1:{ops}");
    assert_eq!(
        http.get(format!("{public}/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401,
        "no key, no metrics on the public listener"
    );
    let tenant_key = ingress::auth::create_key(&db.pool, "t", &["read".into()], Some("t-1"))
        .await
        .unwrap();
    let resp = http
        .get(format!("{public}/metrics"))
        .bearer_auth(&tenant_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        403,
        "service-wide figures are not a tenant's"
    );
    let text = http
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("sms_db_pool_connections"), "{text}");
    let ready: Value = http
        .get(format!("{ops}/health/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["database"], "ok", "{ready}");
    // The public readiness never carries a reason, even when there would be one.
    let public_ready = http
        .get(format!("{public}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(public_ready.headers()["x-content-type-options"], "nosniff");
    let body: Value = public_ready.json().await.unwrap();
    assert!(body["checks"].get("database_reason").is_none(), "{body}");
    let _ = std::fs::remove_dir_all(&logs);
}
