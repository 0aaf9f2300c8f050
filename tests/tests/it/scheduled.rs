//! Scheduled sends: stored at once as `scheduled`, handed to Twilio at their time by the durable
//! queue (a worker restart in between changes nothing), cancelable until then, refused at
//! hand-over when the recipient opted out meanwhile.

use std::time::Duration;

use chrono::Utc;
use harness::{
    app::{Settings, TestApp, wait_until},
    pg, sims,
};
use serde_json::{Value, json};

async fn send(app: &TestApp, key: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn cancel(app: &TestApp, key: &str, id: &str) -> (u16, Value) {
    let r = app
        .http
        .delete(app.url(&format!("/sms/{id}")))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn status(app: &TestApp, id: &str) -> (String, Option<String>) {
    sqlx::query_as("SELECT delivery_status, error_code FROM sms_messages WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn scheduled_sends_wait_for_their_time_survive_restarts_and_can_be_canceled() {
    let tw = sims::twilio().await;
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("TWILIO_API_BASE", tw.base_url())
            .set("SEND_RATE_PER_SENDER", "0"),
    )
    .await;
    // The real worker binary, killed and restarted while the messages wait.
    let queues = "outbound-send,outbound-status";
    let mut worker = app.spawn_worker_process(queues, &[]);
    let key = app.api_key(&["send", "read"], None).await;
    let at = |secs: i64| (Utc::now() + chrono::Duration::seconds(secs)).to_rfc3339();

    // Refused: too far ahead, not a time.
    let (code, body) = send(
        &app,
        &key,
        json!({"to": "+14155550301", "body": "x", "send_at": at(36 * 86_400)}),
    )
    .await;
    assert_eq!(
        (code, body["errors"]["send_at"].is_string()),
        (400, true),
        "{body}"
    );
    let (code, _) = send(
        &app,
        &key,
        json!({"to": "+14155550301", "body": "x", "send_at": "tomorrow"}),
    )
    .await;
    assert_eq!(code, 400);

    let (code, due) = send(
        &app,
        &key,
        json!({"to": "+14155550301", "body": "Your rent is due", "send_at": at(4)}),
    )
    .await;
    assert_eq!(code, 202, "{due}");
    assert_eq!(due["status"], "scheduled");
    assert!(due["scheduled_for"].is_string());
    let due_id = due["message_id"].as_str().unwrap().to_owned();
    let (_, later) = send(
        &app,
        &key,
        json!({"to": "+14155550302", "body": "Later", "send_at": at(3)}),
    )
    .await;
    let later_id = later["message_id"].as_str().unwrap().to_owned();
    let (_, opted) = send(
        &app,
        &key,
        json!({"to": "+14155550303", "body": "Reminder", "send_at": at(3)}),
    )
    .await;
    let opted_id = opted["message_id"].as_str().unwrap().to_owned();

    // It shows in its conversation with its time.
    let (_, conv) = app
        .get_json("/conversations/%2B14155550301", Some(&key))
        .await;
    assert_eq!(conv["messages"][0]["delivery_status"], "scheduled");
    assert!(conv["messages"][0]["scheduled_for"].is_string(), "{conv}");

    // One is canceled (twice: the second is a conflict); one recipient opts out meanwhile.
    assert_eq!(cancel(&app, &key, &later_id).await.0, 200);
    assert_eq!(
        cancel(&app, &key, &later_id).await.1["code"],
        "already_canceled"
    );
    let r = app
        .http
        .post(app.url("/opt-outs"))
        .bearer_auth(&key)
        .json(&json!({"phone_number": "+14155550303", "method": "letter"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A worker killed (SIGKILL) and restarted before the time changes nothing.
    worker.kill().unwrap();
    worker.wait().unwrap();
    let mut worker = app.spawn_worker_process(queues, &[]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(tw.stats().creates, 0, "nothing handed over before its time");

    let sent = wait_until(Duration::from_secs(20), || async {
        status(&app, &due_id).await.0 != "scheduled"
    })
    .await;
    assert!(sent.is_ok());
    wait_until(Duration::from_secs(10), || async {
        tw.stats().creates == 1
    })
    .await
    .unwrap();
    let handed_at: chrono::DateTime<Utc> = sqlx::query_scalar(
        "SELECT min(started_at) FROM sms_send_attempts WHERE message_id = $1::uuid",
    )
    .bind(&due_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let scheduled_for: chrono::DateTime<Utc> =
        due["scheduled_for"].as_str().unwrap().parse().unwrap();
    assert!(
        handed_at >= scheduled_for,
        "not before its time: {handed_at} < {scheduled_for}"
    );
    assert!(
        handed_at < scheduled_for + chrono::Duration::seconds(5),
        "on time"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(status(&app, &later_id).await, ("canceled".to_owned(), None));
    assert_eq!(
        status(&app, &opted_id).await,
        ("failed".to_owned(), Some("opted_out".to_owned()))
    );
    assert_eq!(tw.stats().creates, 1, "only the due one reached Twilio");
    // Handed over: no longer cancelable.
    assert_eq!(
        cancel(&app, &key, &due_id).await.1["code"],
        "already_handed_over"
    );
    worker.kill().unwrap();
    worker.wait().unwrap();
}
