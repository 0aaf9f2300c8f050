//! Bad text and unavailable dependencies get stable JSON errors, never a 500: a NUL character
//! (U+0000, which Postgres cannot store) in any text field or path is 400 `invalid_text`, and
//! nothing is stored.

use harness::{
    app::{Settings, TestApp},
    pg,
};
use serde_json::{Value, json};

#[tokio::test]
async fn a_nul_character_in_any_field_or_path_is_400_and_stores_nothing() {
    let db = pg::fresh_db().await;
    let app = TestApp::spawn(Settings::new(&db)).await;
    let key = app.api_key(&["read", "send", "admin"], None).await;
    let requests: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            "/sms/send".into(),
            Some(json!({"to": "+14155550101", "body": "a\u{0}b"})),
        ),
        (
            "POST",
            "/sms/send".into(),
            Some(json!({"to": "+14155550101", "body": "hi", "workflow_type": "x\u{0}"})),
        ),
        (
            "POST",
            "/routes".into(),
            Some(
                json!({"tenant_id": "t\u{0}", "agent_url": "http://127.0.0.1:9/a", "signing_secret": "0123456789abcdef0"}),
            ),
        ),
        ("GET", "/usage?tenant_id=t%00".into(), None),
        ("GET", "/conversations/%00".into(), None),
        ("GET", "/tenants/t%00/phones".into(), None),
        (
            "POST",
            "/tenants/t%00/phones".into(),
            Some(json!({"phone_number": "+15551230009"})),
        ),
        ("DELETE", "/tenants/t%00/phones/%2B15551230009".into(), None),
    ];
    for (method, path, body) in requests {
        let mut req = app
            .http
            .request(method.parse().unwrap(), app.url(&path))
            .bearer_auth(&key);
        if let Some(body) = &body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(
            status == 400 || status == 404,
            "{method} {path}: {status} {answer}"
        );
        if status == 400 {
            assert!(answer["code"].is_string(), "{method} {path}: {answer}");
        }
    }
    for count in [
        "SELECT count(*) FROM sms_messages",
        "SELECT count(*) FROM sms_conversations",
        "SELECT count(*) FROM agent_routes",
        "SELECT count(*) FROM tenant_profiles",
    ] {
        assert_eq!(app.count(count).await, 0, "{count}");
    }
}
