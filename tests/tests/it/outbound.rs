//! Outbound sends and delivery tracking, against the Twilio simulator over HTTP: validation,
//! opt-outs, idempotency, retries, permanent errors, every status, duplicate and out-of-order
//! callbacks, unknown outcomes, and a worker process killed mid-send.

use std::{collections::BTreeMap, time::Duration};

use harness::sims::{self, twilio};
use harness::{
    app::{ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, Settings, TestApp, wait_until},
    pg,
};
use serde_json::{Value, json};
use shared::jobs;
use sim::twilio::{FailedStatus, Faults, FinalStatus, TwilioSimHandle};
use uuid::Uuid;

const TO: &str = "+14157654321";

/// An ingress whose PUBLIC_URL receives the simulator's callbacks, sending through the simulator.
async fn app_with(twilio: &TwilioSimHandle, extra: &[(&str, &str)]) -> TestApp {
    let db = pg::fresh_db().await;
    let mut settings = Settings::new(&db)
        .set("TWILIO_API_BASE", twilio.base_url())
        .set("SEND_RATE_PER_SENDER", "0")
        .set("SEND_BACKOFF_BASE_MS", "50")
        .set("TWILIO_TIMEOUT_MS", "700")
        .set("UNKNOWN_OUTCOME_GRACE_SECS", "3");
    for (k, v) in extra {
        settings = settings.set(k, *v);
    }
    TestApp::spawn(settings).await
}

async fn send(app: &TestApp, key: &str, body: Value, idem: Option<&str>) -> (u16, Value) {
    let mut req = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(key)
        .json(&body);
    if let Some(k) = idem {
        req = req.header("idempotency-key", k);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn status_of(app: &TestApp, id: Uuid) -> (String, Option<String>, Option<String>) {
    let r = sqlx::query!(
        "SELECT delivery_status, error_code, twilio_sid FROM sms_messages WHERE id = $1",
        id
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    (r.delivery_status, r.error_code, r.twilio_sid)
}

async fn wait_status(app: &TestApp, id: Uuid, want: &str) {
    let ok = wait_until(Duration::from_secs(20), || async {
        status_of(app, id).await.0 == want
    })
    .await;
    assert!(
        ok.is_ok(),
        "message {id} never reached {want}: {:?}",
        status_of(app, id).await
    );
}

fn id_of(body: &Value) -> Uuid {
    body["message_id"].as_str().unwrap().parse().unwrap()
}

async fn start_outbound_workers(app: &mut TestApp) {
    app.start_worker(&[jobs::OUTBOUND_SEND, jobs::OUTBOUND_STATUS])
        .await;
}

#[tokio::test]
async fn happy_path_sends_once_and_tracks_to_delivered() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send", "read"], None).await;
    let (status, body) = send(&app, &key, json!({"to": "(415) 765-4321", "body": "Your rent receipt is ready", "workflow_type": "collections"}), None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["segments"], 1);
    assert_eq!(body["encoding"], "GSM-7");
    let id = id_of(&body);
    let (s, _, _) = status_of(&app, id).await;
    assert_eq!(s, "pending");

    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "delivered").await;
    let stats = tw.stats();
    assert_eq!(stats.creates, 1);
    assert_eq!(stats.by_callback_id.get(&id.to_string()), Some(&1));
    let created = &stats.messages[0];
    assert_eq!(created.to, TO);
    assert_eq!(created.from.as_deref(), Some(OUR_NUMBER));
    assert!(
        created
            .status_callback
            .as_deref()
            .unwrap()
            .ends_with(&format!("/webhook/twilio/status?message_id={id}"))
    );
    let (_, _, sid) = status_of(&app, id).await;
    assert_eq!(sid.as_deref(), Some(created.sid.as_str()));
    let attempts = app
        .count("SELECT count(*) FROM sms_send_attempts WHERE outcome = 'accepted'")
        .await;
    assert_eq!(attempts, 1);
    // The ledger holds each status once; the conversation saw activity.
    assert_eq!(
        app.count("SELECT count(*) FROM sms_status_callbacks").await,
        3
    );
    let conv = sqlx::query!(
        "SELECT workflow_type, last_message_at FROM sms_conversations WHERE phone_number = $1",
        TO
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(conv.workflow_type.as_deref(), Some("collections"));
    assert!(conv.last_message_at.is_some());
    // The conversation API shows the outbound message with its status.
    let view: Value = app
        .get_json(&format!("/conversations/{TO}"), Some(&key))
        .await
        .1;
    assert_eq!(view["messages"][0]["direction"], "outbound");
    assert_eq!(view["messages"][0]["delivery_status"], "delivered");
}

#[tokio::test]
async fn validation_errors_name_their_fields() {
    let tw = twilio().await;
    let app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    for (payload, field) in [
        (json!({"body": "hi"}), "to"),
        (json!({"to": "not a number", "body": "hi"}), "to"),
        (json!({"to": TO, "body": ""}), "body"),
        (json!({"to": TO, "body": "   "}), "body"),
        (json!({"to": TO, "body": "x".repeat(1601)}), "body"),
        (
            json!({"to": TO, "body": "hi", "media_urls": ["ftp://x"]}),
            "media_urls",
        ),
    ] {
        let (status, body) = send(&app, &key, payload.clone(), None).await;
        assert_eq!(status, 400, "{payload}");
        assert_eq!(body["code"], "invalid_request");
        assert!(body["errors"][field].is_string(), "{field} in {body}");
    }
    let (status, _) = send(
        &app,
        &key,
        json!({"to": TO, "body": "x".repeat(1600)}),
        None,
    )
    .await;
    assert_eq!(status, 202);
    // Malformed JSON, unknown fields, missing key, read-only key.
    let resp = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(&key)
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let (status, _) = send(
        &app,
        &key,
        json!({"to": TO, "body": "hi", "bcc": "x"}),
        None,
    )
    .await;
    assert_eq!(status, 400);
    let resp = app
        .http
        .post(app.url("/sms/send"))
        .json(&json!({"to": TO, "body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let read_only = app.api_key(&["read"], None).await;
    let (status, _) = send(&app, &read_only, json!({"to": TO, "body": "hi"}), None).await;
    assert_eq!(status, 403);
    assert_eq!(tw.stats().create_attempts, 0);
}

#[tokio::test]
async fn segments_are_counted_like_carriers() {
    let tw = twilio().await;
    let app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    for (body, segments, encoding) in [
        ("a".repeat(160), 1, "GSM-7"),
        ("a".repeat(161), 2, "GSM-7"),
        ("€".repeat(81), 2, "GSM-7"),
        ("Sí, gracias 🙏".to_string(), 1, "UCS-2"),
        ("ç".repeat(71), 2, "UCS-2"),
    ] {
        let (status, resp) = send(&app, &key, json!({"to": TO, "body": body}), None).await;
        assert_eq!(status, 202);
        assert_eq!(
            (
                resp["segments"].as_u64().unwrap(),
                resp["encoding"].as_str().unwrap()
            ),
            (segments, encoding)
        );
    }
}

#[tokio::test]
async fn opted_out_recipient_is_refused_with_409() {
    let tw = twilio().await;
    let app = app_with(&tw, &[]).await;
    sqlx::query("INSERT INTO sms_opt_outs (our_number, their_number, opted_out, keyword) VALUES ($1, $2, true, 'STOP')")
        .bind(OUR_NUMBER)
        .bind(TO)
        .execute(&app.pool)
        .await
        .unwrap();
    let key = app.api_key(&["send"], None).await;
    let (status, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "recipient_opted_out");
    assert!(body["detail"].as_str().unwrap().contains("STOP"));
    assert_eq!(app.count("SELECT count(*) FROM sms_messages").await, 0);
}

#[tokio::test]
async fn idempotency_key_returns_the_first_answer_and_sends_once() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let req = json!({"to": TO, "body": "Reminder: rent is due"});
    let (s1, b1) = send(&app, &key, req.clone(), Some("order-42")).await;
    let (s2, b2) = send(&app, &key, req.clone(), Some("order-42")).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1, b2);
    // Concurrent retries with one key: still one message.
    let many = futures::future::join_all((0..5).map(|_| {
        send(
            &app,
            &key,
            json!({"to": TO, "body": "burst"}),
            Some("burst-1"),
        )
    }))
    .await;
    let ids: std::collections::HashSet<String> = many
        .iter()
        .map(|(s, b)| {
            assert_eq!(*s, 202);
            b["message_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let (s3, b3) = send(
        &app,
        &key,
        json!({"to": TO, "body": "something else"}),
        Some("order-42"),
    )
    .await;
    assert_eq!(s3, 422);
    assert_eq!(b3["code"], "idempotency_key_reused");
    assert_eq!(app.count("SELECT count(*) FROM sms_messages").await, 2);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id_of(&b1), "delivered").await;
    assert_eq!(
        tw.stats().by_callback_id.get(&id_of(&b1).to_string()),
        Some(&1)
    );
}

#[tokio::test]
async fn transient_errors_are_retried_durably_then_succeed() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        fail_next: 2,
        fail_status: 500,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "delivered").await;
    let stats = tw.stats();
    assert_eq!((stats.create_attempts, stats.creates), (3, 1));
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM sms_send_attempts WHERE message_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, vec!["retryable", "retryable", "accepted"]);
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        rate_limit_next: 1,
        retry_after_secs: Some(2),
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "delivered").await;
    let first = sqlx::query!("SELECT http_status, error_code, finished_at, next_attempt_at FROM sms_send_attempts WHERE message_id = $1 AND attempt = 1", id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(first.http_status, Some(429));
    assert_eq!(first.error_code.as_deref(), Some("20429"));
    let wait = first.next_attempt_at.unwrap() - first.finished_at.unwrap();
    assert!(
        wait >= chrono::Duration::milliseconds(1900),
        "waited {wait}"
    );
    let second: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT started_at FROM sms_send_attempts WHERE message_id = $1 AND attempt = 2",
    )
    .bind(id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(second >= first.next_attempt_at.unwrap() - chrono::Duration::milliseconds(50));
}

#[tokio::test]
async fn permanent_errors_fail_at_once_and_21610_records_the_opt_out() {
    let tw = twilio().await;
    let other = "+14157650000";
    tw.set_faults(Faults {
        permanent_errors: BTreeMap::from([(TO.to_string(), 21610), (other.to_string(), 21211)]),
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, a) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let (_, b) = send(&app, &key, json!({"to": other, "body": "hi"}), None).await;
    start_outbound_workers(&mut app).await;
    wait_status(&app, id_of(&a), "failed").await;
    wait_status(&app, id_of(&b), "failed").await;
    assert_eq!(status_of(&app, id_of(&a)).await.1.as_deref(), Some("21610"));
    assert_eq!(status_of(&app, id_of(&b)).await.1.as_deref(), Some("21211"));
    assert_eq!(tw.stats().create_attempts, 2, "no retries");
    let (status, body) = send(&app, &key, json!({"to": TO, "body": "again"}), None).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn failure_statuses_and_error_codes_are_stored() {
    let tw = twilio().await;
    let failed_to = "+14157650001";
    tw.set_faults(Faults {
        final_status: BTreeMap::from([
            (
                TO.to_string(),
                FinalStatus {
                    status: FailedStatus::Undelivered,
                    error_code: 30003,
                },
            ),
            (
                failed_to.to_string(),
                FinalStatus {
                    status: FailedStatus::Failed,
                    error_code: 30008,
                },
            ),
        ]),
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, a) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let (_, b) = send(&app, &key, json!({"to": failed_to, "body": "hi"}), None).await;
    start_outbound_workers(&mut app).await;
    wait_status(&app, id_of(&a), "undelivered").await;
    wait_status(&app, id_of(&b), "failed").await;
    assert_eq!(status_of(&app, id_of(&a)).await.1.as_deref(), Some("30003"));
    assert_eq!(status_of(&app, id_of(&b)).await.1.as_deref(), Some("30008"));
}

#[tokio::test]
async fn duplicate_and_out_of_order_callbacks_never_move_status_back() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        duplicate_callbacks: true,
        out_of_order: true,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "delivered").await;
    wait_until(Duration::from_secs(5), || async {
        tw.stats().callbacks_pending == 0
    })
    .await
    .unwrap();
    app.drain(jobs::OUTBOUND_STATUS).await;
    assert_eq!(status_of(&app, id).await.0, "delivered");
    assert_eq!(
        app.count("SELECT count(*) FROM sms_status_callbacks").await,
        3
    );
}

#[tokio::test]
async fn read_only_follows_delivered_and_late_sent_is_ignored() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    tw.set_faults(Faults {
        no_callbacks: true,
        ..Faults::default()
    });
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "queued").await;
    let sid = status_of(&app, id).await.2.unwrap();
    let callback = |status: &str| {
        vec![
            ("MessageSid".to_string(), sid.clone()),
            ("MessageStatus".to_string(), status.to_string()),
            ("AccountSid".to_string(), ACCOUNT_SID.to_string()),
        ]
    };
    let post = |status: &'static str| {
        let params = callback(status);
        let url = format!("{}/webhook/twilio/status?message_id={id}", app.public_url);
        let post_url = app.url(&format!("/webhook/twilio/status?message_id={id}"));
        let http = app.http.clone();
        async move {
            sim::webhook::send_to(&http, &post_url, &url, AUTH_TOKEN, &params)
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(post("read").await, 200);
    app.drain(jobs::OUTBOUND_STATUS).await;
    assert_eq!(
        status_of(&app, id).await.0,
        "queued",
        "read before delivered is not applied"
    );
    for s in ["sent", "delivered", "sent", "queued"] {
        assert_eq!(post(s).await, 200);
        app.drain(jobs::OUTBOUND_STATUS).await;
    }
    // The early "read" was kept and applied once "delivered" was known; late ones changed nothing.
    assert_eq!(status_of(&app, id).await.0, "read");
    assert_eq!(post("read").await, 200, "a repeat is harmless");
    assert_eq!(post("delivered").await, 200);
    app.drain(jobs::OUTBOUND_STATUS).await;
    assert_eq!(status_of(&app, id).await.0, "read");
    // An unsigned callback is refused; a bad status is 400.
    let resp = app
        .http
        .post(app.url("/webhook/twilio/status"))
        .form(&[("MessageSid", sid.as_str()), ("MessageStatus", "failed")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(post("bogus").await, 400);
}

#[tokio::test]
async fn a_callback_before_the_send_answer_is_kept_and_applied() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    // A callback for a SID we have not stored yet, without our id: kept until the SID is known.
    let sid = "SM0000000000000000000000000000beef";
    let params = vec![
        ("MessageSid".to_string(), sid.to_string()),
        ("MessageStatus".to_string(), "sent".to_string()),
    ];
    let resp = sim::webhook::send_to(
        &app.http,
        &app.url("/webhook/twilio/status"),
        &format!("{}/webhook/twilio/status", app.public_url),
        AUTH_TOKEN,
        &params,
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    app.start_worker(&[jobs::OUTBOUND_STATUS]).await;
    app.drain(jobs::OUTBOUND_STATUS).await;
    assert_eq!(
        app.count("SELECT count(*) FROM sms_status_callbacks WHERE applied_at IS NULL")
            .await,
        1
    );
    // Now the same SID with our id (as Twilio would send it): the message adopts the SID and the
    // earlier callback is applied too; the send worker then knows not to send.
    let params = vec![
        ("MessageSid".to_string(), sid.to_string()),
        ("MessageStatus".to_string(), "queued".to_string()),
    ];
    let url = format!("{}/webhook/twilio/status?message_id={id}", app.public_url);
    sim::webhook::send_to(
        &app.http,
        &app.url(&format!("/webhook/twilio/status?message_id={id}")),
        &url,
        AUTH_TOKEN,
        &params,
    )
    .await
    .unwrap();
    app.drain(jobs::OUTBOUND_STATUS).await;
    let (status, _, stored_sid) = status_of(&app, id).await;
    assert_eq!(
        (status.as_str(), stored_sid.as_deref()),
        ("sent", Some(sid))
    );
    app.start_worker(&[jobs::OUTBOUND_SEND]).await;
    app.drain(jobs::OUTBOUND_SEND).await;
    assert_eq!(tw.stats().create_attempts, 0, "never sent twice");
}

#[tokio::test]
async fn a_timeout_after_twilio_accepted_is_resolved_without_resending() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        timeout_next: 1,
        timeout_creates: true,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "delivered").await;
    assert_eq!(tw.stats().by_callback_id.get(&id.to_string()), Some(&1));
    assert_eq!(tw.stats().create_attempts, 1);
}

#[tokio::test]
async fn a_timeout_before_twilio_created_anything_is_retried_after_the_grace() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        timeout_next: 1,
        timeout_creates: false,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "delivered").await;
    let stats = tw.stats();
    assert_eq!((stats.create_attempts, stats.creates), (2, 1));
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM sms_send_attempts WHERE message_id = $1 ORDER BY attempt",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, vec!["abandoned", "accepted"]);
}

#[tokio::test]
async fn pacing_spreads_a_burst_per_sender() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[("SEND_RATE_PER_SENDER", "10")]).await;
    let key = app.api_key(&["send"], None).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        let (_, b) = send(
            &app,
            &key,
            json!({"to": format!("+1415765{:04}", i), "body": "bulk"}),
            None,
        )
        .await;
        ids.push(id_of(&b));
    }
    start_outbound_workers(&mut app).await;
    for id in &ids {
        wait_status(&app, *id, "delivered").await;
    }
    let times: Vec<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT started_at FROM sms_send_attempts ORDER BY started_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let span = (*times.last().unwrap() - times[0]).num_milliseconds();
    // 10 sends at 10/s: the first at once, the last about 0.9 s later.
    assert!(span >= 800, "burst spread over {span} ms");
}

#[tokio::test]
async fn reconciler_brings_stuck_messages_up_to_date() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        no_callbacks: true,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[("RECONCILE_STUCK_AFTER_SECS", "0")]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "queued").await;
    // Twilio moved on without telling us (callbacks lost): the reconciler fetches it.
    let sid = status_of(&app, id).await.2.unwrap();
    wait_until(Duration::from_secs(5), || async {
        tw.message(&sid)
            .is_some_and(|m| m.status.as_str() == "delivered")
    })
    .await
    .unwrap();
    assert_eq!(status_of(&app, id).await.0, "queued");
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    let report = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!(report.stuck_updated, 1);
    wait_status(&app, id, "delivered").await;
}

#[tokio::test]
async fn a_worker_killed_mid_send_loses_nothing_and_sends_nothing_twice() {
    let tw = twilio().await;
    let app = app_with(
        &tw,
        &[
            ("SEND_RATE_PER_SENDER", "25"),
            ("WORKER_HEARTBEAT_SECS", "1"),
            ("WORKER_MISSED_HEARTBEATS", "3"),
        ],
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let (status, b) = send(
            &app,
            &key,
            json!({"to": format!("+1415766{:04}", i), "body": format!("notice {i}")}),
            None,
        )
        .await;
        assert_eq!(status, 202);
        ids.push(id_of(&b));
    }
    // Pacing spreads the 50 sends over ~2 s; the worker is killed (SIGKILL) in the middle.
    let mut first = app.spawn_worker_process("outbound-send,outbound-status", &[]);
    wait_until(Duration::from_secs(20), || async {
        tw.stats().creates >= 15
    })
    .await
    .expect("sending started");
    first.kill().unwrap();
    first.wait().unwrap();
    let at_kill = tw.stats().creates;
    assert!(at_kill < 50, "killed before the end ({at_kill} sent)");
    let mut second = app.spawn_worker_process("outbound-send,outbound-status", &[]);
    let all_delivered = wait_until(Duration::from_secs(60), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'").await == 50
    })
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    let stats = tw.stats();
    let twice: Vec<_> = stats
        .by_callback_id
        .iter()
        .filter(|(_, n)| **n != 1)
        .collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(stats.creates, 50, "every message sent exactly once");
    assert!(
        all_delivered.is_ok(),
        "not all delivered: {} of 50",
        app.count("SELECT count(*) FROM sms_messages WHERE delivery_status = 'delivered'")
            .await
    );
    for id in ids {
        assert_eq!(stats.by_callback_id.get(&id.to_string()), Some(&1));
    }
}

#[tokio::test]
async fn reconciler_attaches_tenants_to_conversations_still_without_one() {
    let db = pg::fresh_db().await;
    let monitor = sims::monitor([]).await;
    monitor.set_faults(sim::monitor::Faults {
        down: true,
        ..Default::default()
    });
    let mut app = TestApp::spawn(
        Settings::new(&db)
            .set("MONITOR_API_URL", monitor.base_url())
            .set("MONITOR_MAX_ATTEMPTS", "1"),
    )
    .await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+14154440099", "hello").await;
    app.drain(jobs::INBOUND).await;
    let unknown = app
        .count("SELECT count(*) FROM sms_conversations WHERE tenant_id IS NULL")
        .await;
    assert_eq!(unknown, 1);
    monitor.seed([sim::monitor::Tenant {
        tenant_id: "t-99".into(),
        name: None,
        phone_numbers: vec!["+14154440099".into()],
        language_preference: None,
    }]);
    monitor.set_faults(sim::monitor::Faults::default());
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    let report = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!(report.tenants_attached, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM sms_conversations WHERE tenant_id = 't-99'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_messaging_service_is_used_when_configured() {
    let tw = twilio().await;
    let mut app = app_with(
        &tw,
        &[(
            "TWILIO_MESSAGING_SERVICE_SID",
            "MG00000000000000000000000000000001",
        )],
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    start_outbound_workers(&mut app).await;
    wait_status(&app, id_of(&body), "delivered").await;
    let m = &tw.stats().messages[0];
    assert_eq!(
        m.messaging_service_sid.as_deref(),
        Some("MG00000000000000000000000000000001")
    );
    assert_eq!(m.from, None);
}

#[tokio::test]
async fn replies_in_a_live_conversation_go_ahead_of_bulk_sends() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[("SEND_RATE_PER_SENDER", "4")]).await;
    let key = app.api_key(&["send"], None).await;
    // A tenant who just wrote in.
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound(TO, "Can someone call me about the leak?").await;
    app.drain(jobs::INBOUND).await;
    let mut bulk = Vec::new();
    for i in 0..12 {
        let (_, b) = send(
            &app,
            &key,
            json!({"to": format!("+1415767{:04}", i), "body": "newsletter"}),
            None,
        )
        .await;
        bulk.push(id_of(&b));
    }
    start_outbound_workers(&mut app).await;
    // Bulk sending is under way (4/s over 3 s) when the reply is queued.
    wait_until(Duration::from_secs(10), || async {
        tw.stats().creates >= 2
    })
    .await
    .unwrap();
    let (_, reply) = send(
        &app,
        &key,
        json!({"to": TO, "body": "A technician will call you within the hour"}),
        None,
    )
    .await;
    let reply = id_of(&reply);
    wait_status(&app, reply, "delivered").await;
    let order: Vec<String> = tw.stats().messages.iter().map(|m| m.to.clone()).collect();
    let reply_pos = order.iter().position(|to| to == TO).unwrap();
    assert!(
        reply_pos < 8,
        "reply sent at position {reply_pos} of {order:?}"
    );
    for id in bulk {
        wait_status(&app, id, "delivered").await;
    }
}

#[tokio::test]
async fn every_twilio_status_is_accepted_and_applied_in_order() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        no_callbacks: true,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, a) = send(&app, &key, json!({"to": TO, "body": "one"}), None).await;
    let (_, b) = send(
        &app,
        &key,
        json!({"to": "+14157654000", "body": "two"}),
        None,
    )
    .await;
    let (a, b) = (id_of(&a), id_of(&b));
    start_outbound_workers(&mut app).await;
    wait_status(&app, a, "queued").await;
    wait_status(&app, b, "queued").await;
    let post = |id: Uuid, status: &'static str| {
        let app = &app;
        async move {
            let sid = status_of(app, id).await.2.unwrap();
            let params = vec![
                ("MessageSid".to_string(), sid),
                ("MessageStatus".to_string(), status.to_string()),
            ];
            let path = format!("/webhook/twilio/status?message_id={id}");
            let resp = sim::webhook::send_to(
                &app.http,
                &app.url(&path),
                &format!("{}{path}", app.public_url),
                AUTH_TOKEN,
                &params,
            )
            .await
            .unwrap();
            assert_eq!(resp.status(), 200, "{status}");
            app.drain(jobs::OUTBOUND_STATUS).await;
            status_of(app, id).await.0
        }
    };
    for (sent, expected) in [
        ("accepted", "queued"),
        ("scheduled", "queued"),
        ("queued", "queued"),
        ("sending", "sending"),
        ("queued", "sending"),
        ("sent", "sent"),
        ("sending", "sent"),
        ("delivered", "delivered"),
        ("undelivered", "delivered"),
        ("sent", "delivered"),
        ("read", "read"),
        ("delivered", "read"),
    ] {
        assert_eq!(post(a, sent).await, expected, "after {sent}");
    }
    for (sent, expected) in [
        ("receiving", "queued"),
        ("received", "queued"),
        ("canceled", "canceled"),
        ("delivered", "canceled"),
    ] {
        assert_eq!(post(b, sent).await, expected, "after {sent}");
    }
}

#[tokio::test]
async fn the_reconciler_deletes_finished_jobs_past_their_retention() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[("JOB_RETENTION_HOURS", "0")]).await;
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    start_outbound_workers(&mut app).await;
    wait_status(&app, id_of(&body), "delivered").await;
    app.drain(jobs::OUTBOUND_STATUS).await;
    let done = app
        .count("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
        .await;
    assert!(done >= 2);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    let report = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!(report.jobs_deleted as i64, done);
    assert_eq!(
        app.count("SELECT count(*) FROM apalis.jobs WHERE status = 'Done'")
            .await,
        0
    );
}

/// Twilio creates every message but its answer never comes back in time and it posts no
/// callbacks (200 sends): after the grace period each message is found in Twilio's message list
/// and its SID adopted; Twilio holds exactly 200 messages.
#[tokio::test]
async fn lost_answers_are_settled_from_twilios_message_list() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        timeout_next: 1000,
        timeout_creates: true,
        no_callbacks: true,
        ..Faults::default()
    });
    let mut app = app_with(
        &tw,
        &[
            ("TWILIO_TIMEOUT_MS", "300"),
            ("UNKNOWN_OUTCOME_GRACE_SECS", "1"),
        ],
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let mut ids = Vec::new();
    for i in 0..200 {
        let (_, body) = send(
            &app,
            &key,
            json!({"to": format!("+1415767{i:04}"), "body": format!("notice {i}")}),
            None,
        )
        .await;
        ids.push(id_of(&body));
    }
    start_outbound_workers(&mut app).await;
    for id in &ids {
        let ok = wait_until(Duration::from_secs(90), || async {
            status_of(&app, *id).await.2.is_some()
        })
        .await;
        assert!(ok.is_ok(), "{id}: {:?}", status_of(&app, *id).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tw.stats().creates,
        200,
        "each message reached Twilio exactly once"
    );
    let evidence: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, evidence FROM sms_send_attempts WHERE message_id = $1 ORDER BY attempt",
    )
    .bind(ids[0])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        evidence,
        vec![("resolved".to_owned(), Some("twilio_list".to_owned()))]
    );
}

/// Creates that never reach Twilio and never answer: the list shows nothing, so each attempt is
/// abandoned and another made, at most SEND_MAX_ATTEMPTS in all; then the message fails as
/// `unknown_outcome` and is never resent (before, it was resent once per grace period, forever).
#[tokio::test]
async fn attempts_with_unknown_outcomes_are_bounded() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        timeout_next: 1000,
        timeout_creates: false,
        no_callbacks: true,
        ..Faults::default()
    });
    let mut app = app_with(
        &tw,
        &[
            ("SEND_MAX_ATTEMPTS", "3"),
            ("TWILIO_TIMEOUT_MS", "300"),
            ("UNKNOWN_OUTCOME_GRACE_SECS", "1"),
        ],
    )
    .await;
    let key = app.api_key(&["send"], None).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, body) = send(
            &app,
            &key,
            json!({"to": format!("+1415766{i:04}"), "body": "hi"}),
            None,
        )
        .await;
        ids.push(id_of(&body));
    }
    start_outbound_workers(&mut app).await;
    for id in &ids {
        let ok = wait_until(Duration::from_secs(40), || async {
            status_of(&app, *id).await.1.as_deref() == Some("unknown_outcome")
        })
        .await;
        assert!(ok.is_ok(), "{id}: {:?}", status_of(&app, *id).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = tw.stats();
    assert_eq!(
        (stats.create_attempts, stats.creates),
        (15, 0),
        "3 attempts each, no more"
    );
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM sms_send_attempts WHERE message_id = $1 ORDER BY attempt",
    )
    .bind(ids[0])
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, vec!["abandoned", "abandoned", "abandoned"]);
    assert_eq!(status_of(&app, ids[0]).await.0, "failed");
}

/// Messages Twilio answers 404 for (deleted, another account) used to be skipped unrecorded and
/// filled every batch of 200 forever: now each check is recorded, a 404 is settled and never
/// polled again, and a normal stuck message behind 200 of them is reconciled in the same pass.
#[tokio::test]
async fn the_reconciler_cannot_be_starved_by_messages_twilio_does_not_know() {
    let tw = twilio().await;
    tw.set_faults(Faults {
        no_callbacks: true,
        ..Faults::default()
    });
    let mut app = app_with(&tw, &[("RECONCILE_STUCK_AFTER_SECS", "0")]).await;
    // 200 stuck messages whose SIDs Twilio does not know, older than everything else.
    sqlx::query(
        "INSERT INTO sms_messages (direction, message_content, delivery_status, to_number, twilio_sid, status_updated_at)
         SELECT 'outbound', 'old', 'sent', '+14155550500', 'SM' || lpad(g::text, 32, '0'), now() - interval '1 day'
         FROM generate_series(1, 200) g",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let key = app.api_key(&["send"], None).await;
    let (_, body) = send(&app, &key, json!({"to": TO, "body": "hi"}), None).await;
    let id = id_of(&body);
    start_outbound_workers(&mut app).await;
    wait_status(&app, id, "queued").await;
    let sid = status_of(&app, id).await.2.unwrap();
    wait_until(Duration::from_secs(5), || async {
        tw.message(&sid)
            .is_some_and(|m| m.status.as_str() == "delivered")
    })
    .await
    .unwrap();
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    // First pass: the 200 unknown ones fill the batch; each is settled as not found.
    let first = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!(first.stuck_checked, 200);
    let settled = app
        .count("SELECT count(*) FROM sms_messages WHERE reconcile_stopped = 'not_found'")
        .await;
    assert_eq!(settled, 200);
    // Second pass: only the real one is left to check, and it is brought up to date.
    let second = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!((second.stuck_checked, second.stuck_updated), (1, 1));
    wait_status(&app, id, "delivered").await;
    let note: Option<String> = sqlx::query_scalar(
        "SELECT reconcile_note FROM sms_messages WHERE twilio_sid = 'SM' || lpad('1', 32, '0')",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(note.as_deref(), Some("not found at Twilio (404)"));
}

/// One reconciler pass at a time across replicas, through a lease row rather than a session
/// advisory lock (which a transaction pooler breaks): a live lease held elsewhere skips the pass,
/// an expired one is taken over.
#[tokio::test]
async fn the_reconciler_runs_one_pass_at_a_time_by_lease() {
    let tw = twilio().await;
    let app = app_with(&tw, &[("JOB_RETENTION_HOURS", "0")]).await;
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    sqlx::query("INSERT INTO reconciler_lease (holder, expires_at) VALUES ('another-replica', now() + interval '1 minute')")
        .execute(&app.pool)
        .await
        .unwrap();
    let finished = || {
        sqlx::query("INSERT INTO apalis.jobs (id, job_type, job, status, attempts, max_attempts, run_at, priority, metadata, done_at)
                     VALUES (apalis.generate_ulid(), 'route', '\\x7b7d', 'Done', 1, 25, now(), 0, ''::hstore, now() - interval '1 hour')")
            .execute(&app.pool)
    };
    finished().await.unwrap();
    assert_eq!(
        worker::reconcile::once(&deps).await.unwrap(),
        Default::default(),
        "skipped: leased elsewhere"
    );
    sqlx::query("UPDATE reconciler_lease SET expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let report = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!(
        report.jobs_deleted, 1,
        "the expired lease was taken over and the pass ran"
    );
    // Released at the end: the next pass runs at once.
    finished().await.unwrap();
    assert_eq!(
        worker::reconcile::once(&deps).await.unwrap().jobs_deleted,
        1
    );
}

/// Inbound messages whose webhooks never reached us (the service down longer than Twilio
/// retries) are still in Twilio's message log: the backfill stores each one we do not have,
/// exactly once, through the webhook's own path, and they are processed; those whose webhook did
/// arrive are not stored twice.
#[tokio::test]
async fn inbound_messages_missed_while_down_are_backfilled_once() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[("INBOUND_BACKFILL_INTERVAL_SECS", "1")]).await;
    app.start_worker(&[jobs::INBOUND]).await;
    let mut delivered = 0;
    for i in 0..30 {
        let sms = sim::webhook::InboundSms::new(
            format!("+1415768{i:04}"),
            harness::app::OUR_NUMBER,
            format!("hello {i}"),
        );
        tw.receive_inbound(&sms.message_sid, &sms.from, &sms.to, &sms.body, &[]);
        // A third of the webhooks got through before the outage.
        if i % 3 == 0 {
            assert_eq!(
                app.post_webhook(&sms.params(harness::app::ACCOUNT_SID))
                    .await
                    .status(),
                200
            );
            delivered += 1;
        }
    }
    // And one MMS, whose media come from its Media subresource.
    let mms_sid = format!("MM{}", &sim::webhook::new_message_sid()[2..]);
    tw.receive_inbound(
        &mms_sid,
        "+14157680099",
        harness::app::OUR_NUMBER,
        "the leak",
        &[("https://media.example/leak.jpg", "image/jpeg")],
    );
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    let report = worker::reconcile::once(&deps).await.unwrap();
    assert_eq!(report.backfilled, 31 - delivered);
    let (media_type, num_media): (Option<String>, Option<i32>) = sqlx::query_as(
        "SELECT raw_webhook_data->>'MediaContentType0', num_media FROM sms_messages WHERE twilio_sid = $1",
    )
    .bind(&mms_sid)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        (media_type.as_deref(), num_media),
        (Some("image/jpeg"), Some(1))
    );
    app.drain(jobs::INBOUND).await;
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound'")
            .await,
        31
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL").await,
        31,
        "processed like any other"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sms_messages WHERE raw_webhook_data->>'Backfilled' = 'true'"
        )
        .await,
        (31 - delivered) as i64
    );
    // The next pass (after the interval) finds nothing new.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(worker::reconcile::once(&deps).await.unwrap().backfilled, 0);
}

/// Twilio's side of an outage: while nothing answers at the webhook URL, Twilio tries within the
/// URL's connection overrides (here `#ct=200&rc=1`: 200 ms to connect, one retry), gives up, and
/// keeps the message in its log; once the service is back, the backfill stores every one of them
/// exactly once, beside the ones whose webhooks did arrive.
#[tokio::test]
async fn webhooks_twilio_gave_up_on_are_recovered_by_the_backfill() {
    let tw = twilio().await;
    let mut app = app_with(&tw, &[("INBOUND_BACKFILL_INTERVAL_SECS", "1")]).await;
    app.start_worker(&[jobs::INBOUND]).await;
    let down = format!(
        "http://127.0.0.1:{}/webhook/twilio/sms#ct=200&rc=1",
        harness::pg::free_port().expect("a free port")
    );
    for i in 0..20 {
        let sms = sim::webhook::InboundSms::new(
            format!("+1415769{i:04}"),
            harness::app::OUR_NUMBER,
            format!("down {i}"),
        );
        let d = tw.deliver_inbound(&down, &sms).await;
        assert_eq!(
            (d.delivered, d.attempts),
            (false, 2),
            "tried, retried once, gave up"
        );
    }
    for i in 0..5 {
        let sms = sim::webhook::InboundSms::new(
            format!("+1415769{:04}", 100 + i),
            harness::app::OUR_NUMBER,
            format!("up {i}"),
        );
        let d = tw.deliver_inbound(&app.webhook_url(), &sms).await;
        assert_eq!((d.delivered, d.attempts), (true, 1));
    }
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    assert_eq!(worker::reconcile::once(&deps).await.unwrap().backfilled, 20);
    app.drain(jobs::INBOUND).await;
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound' AND processed_at IS NOT NULL").await,
        25,
        "every message stored once and processed"
    );
}

/// Twilio never retries a status callback, so a burst must never be refused for want of a
/// connection: `CALLBACK_BURST` (10,000) `delivered` callbacks at 64 connections against one
/// ingress whose pool has 4 connections are all answered 200 (stored by the group commit, one
/// application job per commit) and each applied once. Prints the rate beside nothing else: the
/// webhook ingest figure is `scripts/bench-ingress.sh`'s.
#[tokio::test]
async fn a_burst_of_status_callbacks_is_answered_200_and_applied_once() {
    use futures::StreamExt;
    let n: i64 = std::env::var("CALLBACK_BURST")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let db = pg::fresh_db().await;
    let mut app = TestApp::spawn(Settings::new(&db).set("DATABASE_MAX_CONNECTIONS", "4")).await;
    let ids: Vec<(Uuid, String)> = sqlx::query_as(
        "INSERT INTO sms_messages (direction, message_content, delivery_status, twilio_sid, to_number, status_updated_at)
         SELECT 'outbound', 'hi', 'sent', 'SM' || lpad(g::text, 32, '0'), '+14155550100', now()
         FROM generate_series(1, $1) g RETURNING id, twilio_sid",
    )
    .bind(n)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let statuses: Vec<u16> = futures::stream::iter(ids)
        .map(|(id, sid)| {
            let http = app.http.clone();
            let signed = format!("{}/webhook/twilio/status?message_id={id}", app.public_url);
            let post = app.url(&format!("/webhook/twilio/status?message_id={id}"));
            async move {
                let params = vec![
                    ("MessageSid".to_string(), sid),
                    ("MessageStatus".to_string(), "delivered".to_string()),
                    ("AccountSid".to_string(), ACCOUNT_SID.to_string()),
                ];
                sim::webhook::send_to(&http, &post, &signed, AUTH_TOKEN, &params)
                    .await
                    .map_or(0, |r| r.status().as_u16())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let took = started.elapsed();
    let refused = statuses.iter().filter(|s| **s != 200).count();
    println!(
        "callback burst: {n} status callbacks at 64 connections, ingress pool of 4: {} answered 200 \
         in {:.1} s ({:.0}/s)",
        statuses.len() - refused,
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
    assert_eq!(refused, 0, "every callback answered 200");
    app.start_worker(&[jobs::OUTBOUND_STATUS]).await;
    let applied = wait_until(Duration::from_secs(120), || async {
        app.count("SELECT count(*) FROM sms_messages WHERE delivery_status = 'delivered'")
            .await
            == n
    })
    .await;
    assert!(applied.is_ok(), "every callback applied");
    assert_eq!(
        app.count("SELECT count(*) FROM sms_status_callbacks WHERE applied_at IS NOT NULL")
            .await,
        n,
        "each stored once and applied once"
    );
}

/// What a backfill pass costs with 20,000 inbound messages in Twilio's log
/// (`BACKFILL_LOG_SIZE`), 18,000 of them already stored: each pass stores at most 1,000 of those
/// missing, oldest first, so a pass stays bounded while the queues run; the passes together store
/// each missing message once. Prints each pass's time (a figure, not an assertion).
#[tokio::test]
async fn a_backfill_pass_over_a_large_log_is_bounded() {
    let size: usize = std::env::var("BACKFILL_LOG_SIZE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let missing = size / 10;
    let tw = twilio().await;
    let app = app_with(&tw, &[("INBOUND_BACKFILL_INTERVAL_SECS", "1")]).await;
    // The stored part goes straight to the table (what the ingress would have stored); Twilio's
    // log has everything.
    let mut sids = Vec::with_capacity(size);
    for i in 0..size {
        let sms = sim::webhook::InboundSms::new(
            format!("+1415769{:04}", i % 10_000),
            harness::app::OUR_NUMBER,
            format!("backlog {i}"),
        );
        tw.receive_inbound(&sms.message_sid, &sms.from, &sms.to, &sms.body, &[]);
        sids.push((sms.message_sid, sms.from, sms.body));
    }
    let stored: Vec<&(String, String, String)> = sids[missing..].iter().collect();
    for chunk in stored.chunks(2_000) {
        let (s, f, b): (Vec<&str>, Vec<&str>, Vec<&str>) = chunk
            .iter()
            .map(|(s, f, b)| (s.as_str(), f.as_str(), b.as_str()))
            .fold(
                (vec![], vec![], vec![]),
                |(mut a, mut c, mut d), (x, y, z)| {
                    a.push(x);
                    c.push(y);
                    d.push(z);
                    (a, c, d)
                },
            );
        sqlx::query(
            "INSERT INTO sms_messages (direction, twilio_sid, from_number, to_number, message_content, delivery_status, raw_webhook_data)
             SELECT 'inbound', s, f, $4, b, 'received', '{}'::jsonb FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(s, f, b)",
        )
        .bind(&s)
        .bind(&f)
        .bind(&b)
        .bind(harness::app::OUR_NUMBER)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let cfg = shared::config::Worker::load(&app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, app.pool.clone());
    let (mut total, mut passes, mut times) = (0usize, 0, Vec::new());
    while total < missing && passes < 20 {
        // A pass backfills at most once per INBOUND_BACKFILL_INTERVAL_SECS.
        if passes > 0 {
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        let started = std::time::Instant::now();
        let report = worker::reconcile::once(&deps).await.unwrap();
        times.push(started.elapsed().as_millis());
        assert!(
            report.backfilled <= 1_000,
            "a pass stores at most 1,000 ({})",
            report.backfilled
        );
        total += report.backfilled;
        passes += 1;
    }
    println!(
        "backfill: {size} messages in Twilio's log, {missing} missing: {passes} passes, ms each {times:?}"
    );
    assert_eq!(total, missing, "every missing message stored");
    assert_eq!(
        app.count("SELECT count(*) FROM sms_messages WHERE direction = 'inbound'")
            .await as usize,
        size,
        "each once"
    );
}
