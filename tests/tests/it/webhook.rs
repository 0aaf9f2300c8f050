//! `POST /webhook/twilio/sms`: signatures, storage, duplicates, bad input, database outages.

use harness::{
    app::{ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, Settings, TestApp},
    pg,
};
use shared::twilio::signature;
use sim::webhook::InboundSms;

async fn count(app: &TestApp, sql: &'static str) -> i64 {
    app.count(sql).await
}

async fn messages(app: &TestApp) -> i64 {
    count(app, "SELECT count(*) FROM sms_messages").await
}

/// Messages enqueued for processing (a job carries the messages of one group commit).
async fn inbound_jobs(app: &TestApp) -> i64 {
    count(
        app,
        "SELECT count(*) FROM apalis.jobs, jsonb_array_elements_text(convert_from(job, 'UTF8')::jsonb -> 'message_ids') \
         WHERE job_type = 'inbound'",
    )
    .await
}

fn form(params: &[(String, String)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

#[tokio::test]
async fn valid_webhook_stores_every_field_and_one_job() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let mut sms = InboundSms::new(
        "+15551230001",
        OUR_NUMBER,
        "Olá, já paguei 👍 '; DROP TABLE x;--",
    );
    sms.extra
        .push(("SomeFieldTwilioAddsLater".into(), "v1".into()));
    sms.extra
        .push(("MediaUrl".into(), "https://a.example/1".into()));
    sms.extra
        .push(("MediaUrl".into(), "https://a.example/2".into()));
    let resp = app.post_webhook(&sms.params(ACCOUNT_SID)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/xml")
    );
    assert!(resp.text().await.unwrap().contains("<Response></Response>"));

    let row = sqlx::query!(
        "SELECT direction, message_content, delivery_status, raw_webhook_data, from_number FROM sms_messages WHERE twilio_sid = $1",
        sms.message_sid
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(row.direction, "inbound");
    assert_eq!(row.message_content, "Olá, já paguei 👍 '; DROP TABLE x;--");
    assert_eq!(row.delivery_status, "received");
    assert_eq!(row.from_number.as_deref(), Some("+15551230001"));
    let raw = row.raw_webhook_data.unwrap();
    for (k, _) in sms.params(ACCOUNT_SID) {
        assert!(raw.get(&k).is_some(), "raw payload keeps {k}");
    }
    assert_eq!(raw["SomeFieldTwilioAddsLater"], "v1");
    assert_eq!(
        raw["MediaUrl"],
        serde_json::json!(["https://a.example/1", "https://a.example/2"])
    );
    assert_eq!(inbound_jobs(&app).await, 1);
}

#[tokio::test]
async fn invalid_or_missing_signature_is_403_and_stores_nothing() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);

    let (body, _) = sim::webhook::signed_request(AUTH_TOKEN, &app.webhook_url(), &params);
    let (_, wrong) = sim::webhook::signed_request("not-the-token", &app.webhook_url(), &params);
    for sig in [Some(wrong.as_str()), Some(""), Some("garbage=="), None] {
        let mut req = app
            .http
            .post(app.url("/webhook/twilio/sms"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone());
        if let Some(sig) = sig {
            req = req.header("x-twilio-signature", sig);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "signature {sig:?}");
        let json: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(json["code"], "forbidden");
    }
    // A body changed after signing fails too.
    let (_, good) = sim::webhook::signed_request(AUTH_TOKEN, &app.webhook_url(), &params);
    let resp = app
        .http
        .post(app.url("/webhook/twilio/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", good)
        .body(body.replace("Body=hi", "Body=ho"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(messages(&app).await, 0);
    assert_eq!(inbound_jobs(&app).await, 0);
}

#[tokio::test]
async fn default_port_variants_and_secondary_token_are_accepted() {
    let db = pg::fresh_db().await;
    let settings = Settings::new(&db)
        .set("PUBLIC_URL", "https://sms.example.com")
        .set("TWILIO_AUTH_TOKEN_SECONDARY", "rotating-in");
    let app = TestApp::spawn(settings).await;
    let post = app.url("/webhook/twilio/sms");
    for (signed_url, token) in [
        ("https://sms.example.com/webhook/twilio/sms", AUTH_TOKEN),
        ("https://sms.example.com:443/webhook/twilio/sms", AUTH_TOKEN),
        ("https://sms.example.com/webhook/twilio/sms", "rotating-in"),
    ] {
        let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
        let resp = sim::webhook::send_to(&app.http, &post, signed_url, token, &params)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{signed_url} with {token}");
    }
    // The wrong host or scheme is not a variant.
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
    for bad in [
        "https://evil.example.com/webhook/twilio/sms",
        "http://sms.example.com/webhook/twilio/sms",
        "https://sms.example.com:8443/webhook/twilio/sms",
    ] {
        let resp = sim::webhook::send_to(&app.http, &post, bad, AUTH_TOKEN, &params)
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{bad}");
    }
    assert_eq!(messages(&app).await, 3);
}

#[tokio::test]
async fn query_string_is_signed_and_repeated_keys_verify() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let mut sms = InboundSms::new("+15551230001", OUR_NUMBER, "hi");
    sms.extra.push(("Digits".into(), "5678".into()));
    sms.extra.push(("Digits".into(), "1234".into()));
    let params = sms.params(ACCOUNT_SID);
    let path = "/webhook/twilio/sms?tenant_hint=a&x=1";
    let resp = sim::webhook::send_to(
        &app.http,
        &app.url(path),
        &format!("{}{path}", app.public_url),
        AUTH_TOKEN,
        &params,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    // Signed without the query string: refused.
    let other = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
    let resp = sim::webhook::send_to(
        &app.http,
        &app.url(path),
        &app.webhook_url(),
        AUTH_TOKEN,
        &other,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test]
async fn json_body_with_body_sha256_is_verified() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let body = serde_json::json!({"MessageSid": "SMjson0000000000000000000000000001", "From": "+15551230001", "To": OUR_NUMBER, "Body": "hola"}).to_string();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    let path = format!("/webhook/twilio/sms?bodySHA256={hash}");
    let sig = signature::compute(AUTH_TOKEN, &format!("{}{path}", app.public_url), &[]);
    let send = |body: String, sig: String| {
        app.http
            .post(app.url(&path))
            .header("content-type", "application/json")
            .header("x-twilio-signature", sig)
            .body(body)
            .send()
    };
    assert_eq!(
        send(body.clone().replace("hola", "adios"), sig.clone())
            .await
            .unwrap()
            .status(),
        403
    );
    assert_eq!(send(body, sig).await.unwrap().status(), 200);
    assert_eq!(messages(&app).await, 1);
}

#[tokio::test]
async fn forwarded_headers_are_trusted_only_when_configured() {
    let db = pg::fresh_db().await;
    let proxied_url = "https://public.example.org/webhook/twilio/sms";
    for (trust, expected) in [("false", 403), ("true", 200)] {
        let app = TestApp::spawn(Settings::new(&db).set("TRUST_FORWARDED_HEADERS", trust)).await;
        let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
        let (body, sig) = sim::webhook::signed_request(AUTH_TOKEN, proxied_url, &params);
        let resp = app
            .http
            .post(app.url("/webhook/twilio/sms"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "public.example.org")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), expected, "trust={trust}");
    }
}

#[tokio::test]
async fn replay_is_200_and_stores_and_enqueues_nothing() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "pagaré mañana").params(ACCOUNT_SID);
    for _ in 0..3 {
        assert_eq!(app.post_webhook(&params).await.status(), 200);
    }
    assert_eq!(messages(&app).await, 1);
    assert_eq!(inbound_jobs(&app).await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_store_one_row_and_one_job() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let mut all = Vec::new();
    for _ in 0..5 {
        all.push(InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID));
    }
    // 5 distinct messages, each sent 10 times at once.
    let sends = all
        .iter()
        .flat_map(|p| std::iter::repeat_n(p, 10))
        .map(|p| app.post_webhook(p));
    let responses = futures::future::join_all(sends).await;
    assert!(responses.iter().all(|r| r.status() == 200));
    assert_eq!(messages(&app).await, 5);
    assert_eq!(inbound_jobs(&app).await, 5);
}

#[tokio::test]
async fn bad_input_gets_json_errors() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let post = |body: Vec<u8>, sig: String| {
        app.http
            .post(app.url("/webhook/twilio/sms"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", sig)
            .body(body)
            .send()
    };

    // Over 64 KiB: 413.
    let big = vec![("Body".to_string(), "x".repeat(70 * 1024))];
    let (body, sig) = sim::webhook::signed_request(AUTH_TOKEN, &app.webhook_url(), &big);
    let resp = post(body.into_bytes(), sig).await.unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "payload_too_large"
    );

    // Not UTF-8: 400.
    let resp = post(vec![b'B', b'=', 0xff, 0xfe], "x".into())
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "malformed_body"
    );

    // A percent-escape that is not UTF-8: 400.
    let resp = post(b"Body=%C3%28".to_vec(), "x".into()).await.unwrap();
    assert_eq!(resp.status(), 400);

    // Signed, but no MessageSid: 400.
    let params = vec![
        ("From".to_string(), "+15551230001".to_string()),
        ("Body".to_string(), "hi".to_string()),
    ];
    let (body, sig) = sim::webhook::signed_request(AUTH_TOKEN, &app.webhook_url(), &params);
    let resp = post(body.into_bytes(), sig).await.unwrap();
    assert_eq!(resp.status(), 400);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["code"], "missing_field");
    assert!(json["detail"].as_str().unwrap().contains("MessageSid"));

    // Malformed JSON body: 400.
    let resp = app
        .http
        .post(app.url("/webhook/twilio/sms"))
        .header("content-type", "application/json")
        .header("x-twilio-signature", "x")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(messages(&app).await, 0);
    let _ = form(&params);
}

#[tokio::test]
async fn database_down_is_503_never_200() {
    // A server that is not there: the pool cannot connect.
    let db = pg::fresh_db().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let settings = Settings::new(&db)
        .set(
            "DATABASE_URL",
            format!("postgres://postgres@127.0.0.1:{port}/none"),
        )
        .set("DATABASE_ACQUIRE_TIMEOUT_MS", "500");
    let app = TestApp::spawn(settings).await;
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
    let resp = app.post_webhook(&params).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "unavailable"
    );

    let ready = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let live = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let json: serde_json::Value = live.json().await.unwrap();
    assert_eq!(json["ok"], true);
    assert!(json["version"].is_string());
}

#[tokio::test]
async fn health_ready_reports_database_and_monitor() {
    let db = pg::fresh_db().await;
    let monitor = harness::sims::monitor([]).await;
    let app = TestApp::spawn(Settings::new(&db).set("MONITOR_API_URL", monitor.base_url())).await;
    let resp = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let json: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(json["checks"]["database"], "ok");
    assert_eq!(json["checks"]["monitor"], "ok");
}

#[tokio::test]
async fn migrate_twice_is_harmless() {
    let db = pg::fresh_db().await;
    shared::db::migrate(&db.pool).await.unwrap();
    shared::db::migrate(&db.pool).await.unwrap();
}

#[tokio::test]
async fn metrics_count_webhook_outcomes() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
    app.post_webhook(&params).await;
    app.post_webhook(&params).await;
    let (body, _) = sim::webhook::signed_request(AUTH_TOKEN, &app.webhook_url(), &params);
    app.http
        .post(app.url("/webhook/twilio/sms"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", "bad")
        .body(body)
        .send()
        .await
        .unwrap();
    let text = app.metrics_text().await;
    for line in [
        "sms_webhooks_total{outcome=\"stored\"} 1",
        "sms_webhooks_total{outcome=\"duplicate\"} 1",
        "sms_webhooks_total{outcome=\"rejected\"} 1",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let resp = app.http.get(app.url("/health")).send().await.unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
    let resp = app
        .http
        .get(app.url("/health"))
        .header("x-request-id", "req-from-proxy-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-from-proxy-42");
    let params = InboundSms::new("+15551230001", OUR_NUMBER, "hi").params(ACCOUNT_SID);
    let resp = app.post_webhook(&params).await;
    assert!(resp.headers().contains_key("x-request-id"));
}
