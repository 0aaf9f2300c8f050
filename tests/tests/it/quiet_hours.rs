//! Quiet hours: collections sends reach the recipient only inside the allowed window of their
//! local time (the tenant's zone when known, else every zone of the number's prefix); outside
//! it they are scheduled for the next allowed moment and the answer says so. Replies in a live
//! conversation are exempt; an explicit override is recorded. (The window here is set around the
//! moment the test runs, so it holds whatever the time of day.)

use chrono::{Duration, Timelike, Utc};
use chrono_tz::Tz;
use harness::{
    app::{Settings, TestApp},
    pg,
};
use serde_json::{Value, json};
use shared::quiet_hours::Window;

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

/// A window of local time in `zone` that closed an hour ago (so now is outside it), as
/// `HH:MM-HH:MM`.
fn closed_window(zone: Tz) -> String {
    let local = Utc::now().with_timezone(&zone);
    // Two hours, ending an hour ago; never across midnight.
    let end_h = (local.hour() + 23) % 24;
    let (start_h, end_h) = if end_h >= 2 {
        (end_h - 2, end_h)
    } else {
        (21, 23)
    };
    format!("{start_h:02}:00-{end_h:02}:00")
}

#[tokio::test]
async fn collections_sends_wait_for_the_recipients_daytime() {
    let la = chrono_tz::America::Los_Angeles;
    let chicago = chrono_tz::America::Chicago;
    let window = closed_window(la);
    let db = pg::fresh_db().await;
    // t-chi lives in Chicago although its number is a San Francisco one.
    sqlx::query("INSERT INTO tenant_profiles (tenant_id, phone_numbers, timezone) VALUES ('t-chi', '[\"+14155550402\"]', 'America/Chicago')")
        .execute(&db.pool)
        .await
        .unwrap();
    let app = TestApp::spawn(
        Settings::new(&db)
            .set("QUIET_HOURS_WORKFLOWS", "collections")
            .set("QUIET_HOURS", window.as_str()),
    )
    .await;
    let key = app.api_key(&["send", "read"], None).await;
    let w: Window = window.parse().unwrap();

    // By the number's zone (415: Los Angeles).
    let before = Utc::now();
    let (code, body) = send(
        &app,
        &key,
        json!({"to": "+14155550401", "body": "Payment reminder", "workflow_type": "collections"}),
    )
    .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    assert_eq!(body["schedule_reason"], "quiet_hours");
    let at: chrono::DateTime<Utc> = body["scheduled_for"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        Some(at),
        w.next_allowed(before, &[la]),
        "the window's next opening in Los Angeles"
    );
    assert!(w.allows(at, &[la]) && at > Utc::now(), "{at}");
    assert!(at < Utc::now() + Duration::hours(24));

    // By the tenant's own zone.
    let (_, body) = send(
        &app,
        &key,
        json!({"to": "+14155550402", "body": "Payment reminder", "workflow_type": "collections"}),
    )
    .await;
    if body["status"] == "scheduled" {
        let at: chrono::DateTime<Utc> = body["scheduled_for"].as_str().unwrap().parse().unwrap();
        assert!(
            w.allows(at, &[chicago]),
            "inside the window in Chicago: {at}"
        );
        assert!(!w.allows(at, &[la]) || w.allows(at, &[chicago]));
    } else {
        assert!(
            w.allows(Utc::now(), &[chicago]),
            "sent now only when Chicago is inside: {body}"
        );
    }

    // Other workflows are not held; an override is sent now and recorded.
    let (_, body) = send(
        &app,
        &key,
        json!({"to": "+14155550403", "body": "The water is back", "workflow_type": "maintenance"}),
    )
    .await;
    assert_eq!(body["status"], "pending");
    let (_, body) = send(&app, &key, json!({"to": "+14155550404", "body": "Urgent", "workflow_type": "collections", "quiet_hours_override": true})).await;
    assert_eq!(body["status"], "pending");
    let forced: bool = sqlx::query_scalar(
        "SELECT quiet_hours_override FROM sms_messages WHERE to_number = '+14155550404'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(forced);

    // A reply in a live conversation the tenant started is exempt.
    app.inbound("+14155550405", "Can I pay on Friday?").await;
    sqlx::query("INSERT INTO sms_conversations (phone_number, phone_number_original, workflow_type) VALUES ('+14155550405', '+14155550405', 'collections') ON CONFLICT (phone_number) DO NOTHING")
        .execute(&app.pool).await.unwrap();
    sqlx::query("UPDATE sms_messages SET conversation_id = (SELECT id FROM sms_conversations WHERE phone_number = '+14155550405') WHERE from_number = '+14155550405'")
        .execute(&app.pool).await.unwrap();
    let (_, body) = send(&app, &key, json!({"to": "+14155550405", "body": "Yes, Friday is fine", "workflow_type": "collections"})).await;
    assert_eq!(body["status"], "pending", "{body}");
}
