//! `GET /conversations/{phone_number}`: keys, number forms, pagination, isolation.

use harness::{
    app::{Settings, TestApp},
    pg,
};
use serde_json::Value;
use shared::jobs;

#[tokio::test]
async fn requires_a_valid_key() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let (status, body) = app.get_json("/conversations/+15551230001", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthorized");
    let (status, _) = app
        .get_json("/conversations/+15551230001", Some("sk_wrong"))
        .await;
    assert_eq!(status, 401);
    // Keys are stored only as a hash.
    let key = app.api_key(&["read"], None).await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM api_keys WHERE key_hash = $1 OR prefix = $1")
            .bind(&key)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored, 0);
    let (status, body) = app
        .get_json("/conversations/+15551230001", Some(&key))
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["code"], "not_found");
}

#[tokio::test]
async fn any_written_form_finds_it_and_pages_newest_first() {
    let db = pg::fresh_db().await;
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    let mut sids = Vec::new();
    for i in 0..5 {
        sids.push(app.inbound("+15551239999", &format!("message {i}")).await);
        app.drain(jobs::INBOUND).await;
    }
    let key = app.api_key(&["read"], None).await;
    for form in [
        "+15551239999",
        "(555) 123-9999",
        "555.123.9999",
        "15551239999",
        "%2B1%20555%20123%209999",
    ] {
        let (status, body) = app
            .get_json(&format!("/conversations/{form}"), Some(&key))
            .await;
        assert_eq!(status, 200, "{form}");
        assert_eq!(body["phone_number"], "+15551239999");
    }
    let (_, page1) = app
        .get_json("/conversations/+15551239999?limit=2", Some(&key))
        .await;
    for field in [
        "tenant_id",
        "workflow_type",
        "workflow_id",
        "last_message_at",
        "language_detected",
        "language_confidence",
    ] {
        assert!(page1.get(field).is_some(), "has {field}");
    }
    let contents = |page: &Value| -> Vec<String> {
        page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(contents(&page1), vec!["message 4", "message 3"]);
    let m = &page1["messages"][0];
    for field in [
        "direction",
        "content",
        "twilio_sid",
        "delivery_status",
        "created_at",
    ] {
        assert!(m.get(field).is_some(), "message has {field}");
    }
    assert_eq!(m["twilio_sid"], sids[4].as_str());
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get_json(
            &format!("/conversations/+15551239999?limit=2&cursor={cursor}"),
            Some(&key),
        )
        .await;
    assert_eq!(contents(&page2), vec!["message 2", "message 1"]);
    let cursor = page2["next_cursor"].as_str().unwrap();
    let (_, page3) = app
        .get_json(
            &format!("/conversations/+15551239999?limit=2&cursor={cursor}"),
            Some(&key),
        )
        .await;
    assert_eq!(contents(&page3), vec!["message 0"]);
    assert!(page3["next_cursor"].is_null());

    let (_, all) = app
        .get_json("/conversations/+15551239999", Some(&key))
        .await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 5);

    for bad in ["limit=0", "limit=201", "limit=abc", "cursor=%21%21"] {
        let (status, body) = app
            .get_json(&format!("/conversations/+15551239999?{bad}"), Some(&key))
            .await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["detail"].is_string());
    }
}

#[tokio::test]
async fn a_tenant_scoped_key_sees_only_its_tenant() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, phone_numbers) VALUES ('t-a', '[\"+15550000001\"]'), ('t-b', '[\"+15550000002\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db)).await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound("+15550000001", "from a").await;
    app.inbound("+15550000002", "from b").await;
    app.inbound("+15550000003", "from nobody").await;
    app.drain(jobs::INBOUND).await;
    let key_a = app.api_key(&["read"], Some("t-a")).await;
    assert_eq!(
        app.get_json("/conversations/+15550000001", Some(&key_a))
            .await
            .0,
        200
    );
    let (status, body) = app
        .get_json("/conversations/+15550000002", Some(&key_a))
        .await;
    assert_eq!(
        status, 404,
        "another tenant's conversation is not found, not forbidden"
    );
    assert_eq!(body["code"], "not_found");
    assert_eq!(
        app.get_json("/conversations/+15550000003", Some(&key_a))
            .await
            .0,
        404
    );
    let admin = app.api_key(&["read"], None).await;
    assert_eq!(
        app.get_json("/conversations/+15550000002", Some(&admin))
            .await
            .0,
        200
    );
}
