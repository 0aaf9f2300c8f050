//! Tenant isolation across the whole API: with two tenants' data in place, a key scoped to one
//! tenant (with every scope) tries every endpoint of the OpenAPI document against the other
//! tenant. Anything of the other tenant is 404, never 403, and no answer carries any of its data.
//! A new endpoint that this sweep does not cover fails the test.

use std::collections::BTreeSet;

use harness::{
    app::{Settings, TestApp},
    pg,
};
use serde_json::{Value, json};
use shared::jobs;

const A_PHONE: &str = "+14159300001";
const B_PHONE: &str = "+14159300002";
const B_PHONE_2: &str = "+14159300022";
const B_BODY: &str = "b-private-body";
const B_ROUTE: &str = "http://agent-b.invalid/hook";

/// Every trace of tenant B that must never reach tenant A's key.
fn b_markers() -> Vec<&'static str> {
    vec!["t-b", "4159300002", "4159300022", B_BODY, "agent-b"]
}

struct Sweep<'a> {
    app: &'a TestApp,
    key: String,
    covered: BTreeSet<(String, String)>,
}

impl Sweep<'_> {
    /// Calls `method path` (the template is what the coverage is recorded under) with A's key,
    /// checks the status and that the body carries nothing of B.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> Value {
        self.covered
            .insert((method.to_ascii_lowercase(), template.to_owned()));
        let mut req = self
            .app
            .http
            .request(method.parse().unwrap(), self.app.url(path))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        for marker in b_markers() {
            assert!(
                !text.contains(marker),
                "{method} {path} leaked {marker:?}: {text}"
            );
        }
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Endpoints that take no API key and are checked only for leaks.
    fn not_tenant_data(&mut self, method: &str, template: &str) {
        self.covered
            .insert((method.to_ascii_lowercase(), template.to_owned()));
    }
}

async fn one(app: &TestApp, sql: &str) -> Value {
    sqlx::query_scalar::<_, Value>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tenant_scoped_key_sees_nothing_of_another_tenant_on_any_endpoint() {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, name, phone_numbers) VALUES
           ('t-a', 'Ana', '[\"+14159300001\"]'),
           ('t-b', 'Bo', '[\"+14159300002\", \"+14159300022\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut app = TestApp::spawn(Settings::new(&db).set("SEND_RATE_PER_SENDER", "0")).await;
    app.start_worker(&[jobs::INBOUND]).await;
    app.inbound(A_PHONE, "a says hello").await;
    app.inbound(B_PHONE, B_BODY).await;
    app.drain(jobs::INBOUND).await;

    // Data of both tenants everywhere: routes, the quarantine, outbound messages.
    let root = app.api_key(&["read", "send", "admin"], None).await;
    for (tenant, url) in [("t-a", "http://agent-a.invalid/hook"), ("t-b", B_ROUTE)] {
        let r = app
            .http
            .post(app.url("/routes"))
            .bearer_auth(&root)
            .json(&json!({"tenant_id": tenant, "agent_url": url, "signing_secret": "s3cret-s3cret-s3cret"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = app
        .http
        .post(app.url("/sms/send"))
        .bearer_auth(&root)
        .json(&json!({"to": B_PHONE, "body": B_BODY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    sqlx::query(
        "INSERT INTO sms_unroutable (message_id, tenant_id, reason)
         SELECT m.id, c.tenant_id, 'no_route' FROM sms_messages m JOIN sms_conversations c ON c.id = m.conversation_id
         WHERE m.direction = 'inbound'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let b_route = one(
        &app,
        "SELECT to_jsonb(id::text) FROM agent_routes WHERE tenant_id = 't-b'",
    )
    .await;
    let b_route = b_route.as_str().unwrap().to_owned();
    let b_conv = one(
        &app,
        "SELECT to_jsonb(id::text) FROM sms_conversations WHERE tenant_id = 't-b'",
    )
    .await;
    let b_conv = b_conv.as_str().unwrap().to_owned();
    let b_msg = one(
        &app,
        "SELECT to_jsonb(m.id::text) FROM sms_messages m JOIN sms_conversations c ON c.id = m.conversation_id WHERE c.tenant_id = 't-b' AND m.direction = 'inbound'",
    )
    .await;
    let b_msg = b_msg.as_str().unwrap().to_owned();
    let a_msg = one(
        &app,
        "SELECT to_jsonb(m.id::text) FROM sms_messages m JOIN sms_conversations c ON c.id = m.conversation_id WHERE c.tenant_id = 't-a' AND m.direction = 'inbound'",
    )
    .await;
    let a_msg = a_msg.as_str().unwrap().to_owned();

    let mut s = Sweep {
        app: &app,
        key: app.api_key(&["read", "send", "admin"], Some("t-a")).await,
        covered: BTreeSet::new(),
    };

    // Conversations: B's number does not exist for A, in any written form.
    let conv = "/conversations/{phone_number}";
    let a = s
        .call("GET", conv, &format!("/conversations/{A_PHONE}"), None, 200)
        .await;
    assert!(a.to_string().contains("a says hello"), "control: {a}");
    for form in [B_PHONE, "4159300002", "(415)%20930-0002", B_PHONE_2] {
        let body = s
            .call("GET", conv, &format!("/conversations/{form}"), None, 404)
            .await;
        assert_eq!(body["code"], "not_found");
    }

    // Sending: only to A's numbers, never into B's conversation.
    let send = "/sms/send";
    s.call(
        "POST",
        send,
        send,
        Some(json!({"to": A_PHONE, "body": "hi a"})),
        202,
    )
    .await;
    s.call(
        "POST",
        send,
        send,
        Some(json!({"to": B_PHONE, "body": "hi b"})),
        404,
    )
    .await;
    s.call(
        "POST",
        send,
        send,
        Some(json!({"to": A_PHONE, "body": "hi", "conversation_id": b_conv})),
        404,
    )
    .await;

    // B's message cannot be canceled through A's key.
    let b_out = one(
        &app,
        "SELECT to_jsonb(id::text) FROM sms_messages WHERE direction = 'outbound' AND to_number = '+14159300002'",
    )
    .await;
    s.call(
        "DELETE",
        "/sms/{message_id}",
        &format!("/sms/{}", b_out.as_str().unwrap()),
        None,
        404,
    )
    .await;

    // Routes: A's only; B's cannot be created, deleted or seen.
    let routes = s.call("GET", "/routes", "/routes", None, 200).await;
    assert!(routes.to_string().contains("agent-a"), "control: {routes}");
    s.call(
        "POST",
        "/routes",
        "/routes",
        Some(json!({"tenant_id": "t-b", "agent_url": "http://evil.invalid", "signing_secret": "s3cret-s3cret-s3cret"})),
        404,
    )
    .await;
    s.call(
        "DELETE",
        "/routes/{id}",
        &format!("/routes/{b_route}"),
        None,
        404,
    )
    .await;

    // The quarantine: A's entry listed, B's neither listed nor replayable.
    let list = s.call("GET", "/unroutable", "/unroutable", None, 200).await;
    assert!(list.to_string().contains(&a_msg), "control: {list}");
    assert!(!list.to_string().contains(&b_msg));
    s.call(
        "POST",
        "/unroutable/{message_id}/replay",
        &format!("/unroutable/{b_msg}/replay"),
        None,
        404,
    )
    .await;

    // Usage: A's counts only; asking for B's is asking for nothing.
    let usage = s.call("GET", "/usage", "/usage", None, 200).await;
    assert!(usage.to_string().contains("t-a"), "control: {usage}");
    s.call("GET", "/usage", "/usage?tenant_id=t-b", None, 404)
        .await;

    // The opt-out ledger: A's entries only; B's numbers cannot be recorded through A's key.
    let ledger = s.call("GET", "/opt-outs", "/opt-outs", None, 200).await;
    assert!(ledger["events"].is_array(), "control: {ledger}");
    s.call("GET", "/opt-outs", "/opt-outs?tenant_id=t-b", None, 404)
        .await;
    s.call(
        "POST",
        "/opt-outs",
        "/opt-outs",
        Some(json!({"phone_number": B_PHONE, "method": "phone_call"})),
        404,
    )
    .await;

    // B's phone book: not readable, not writable.
    let phones = "/tenants/{tenant_id}/phones";
    s.call("GET", phones, "/tenants/t-a/phones", None, 200)
        .await;
    s.call("GET", phones, "/tenants/t-b/phones", None, 404)
        .await;
    s.call(
        "POST",
        phones,
        "/tenants/t-b/phones",
        Some(json!({"phone_number": "+14159300099"})),
        404,
    )
    .await;
    s.call(
        "DELETE",
        "/tenants/{tenant_id}/phones/{phone_number}",
        &format!("/tenants/t-b/phones/{B_PHONE_2}"),
        None,
        404,
    )
    .await;

    // B's API keys: not listed, not revocable, none created for B.
    let b_key = app.api_key(&["read"], Some("t-b")).await;
    let b_key_id = one(
        &app,
        "SELECT to_jsonb(id::text) FROM api_keys WHERE tenant_id = 't-b'",
    )
    .await;
    let keys = s.call("GET", "/api-keys", "/api-keys", None, 200).await;
    assert!(!keys.as_array().unwrap().is_empty(), "control: {keys}");
    s.call(
        "POST",
        "/api-keys",
        "/api-keys",
        Some(json!({"name": "for-b", "tenant_id": "t-b"})),
        404,
    )
    .await;
    s.call(
        "DELETE",
        "/api-keys/{id}",
        &format!("/api-keys/{}", b_key_id.as_str().unwrap()),
        None,
        404,
    )
    .await;
    assert_eq!(
        app.get_json("/routes", Some(&b_key)).await.0,
        200,
        "B's key still works"
    );

    // Public, key-less endpoints carry no tenant data; still, nothing of B in them.
    for path in ["/health", "/health/ready", "/metrics"] {
        s.not_tenant_data("get", path);
        let text = app.get_text(path).await;
        for marker in b_markers() {
            assert!(!text.contains(marker), "{path} leaked {marker:?}");
        }
    }
    for path in ["/openapi.json", "/docs"] {
        s.not_tenant_data("get", path);
    }
    // Twilio's webhooks take Twilio's signature, not an API key: nothing tenant-scoped to see.
    s.not_tenant_data("post", "/webhook/twilio/sms");
    s.not_tenant_data("post", "/webhook/twilio/status");

    // Nothing of B changed through A's key.
    let after = one(
        &app,
        "SELECT jsonb_build_object(
            'routes', (SELECT count(*) FROM agent_routes WHERE tenant_id = 't-b'),
            'phones', (SELECT phone_numbers FROM tenant_profiles WHERE tenant_id = 't-b'),
            'replayed', (SELECT count(*) FROM sms_unroutable WHERE tenant_id = 't-b' AND replayed_at IS NOT NULL),
            'outbound', (SELECT count(*) FROM sms_messages m JOIN sms_conversations c ON c.id = m.conversation_id
                         WHERE c.tenant_id = 't-b' AND m.direction = 'outbound'))",
    )
    .await;
    assert_eq!(
        after,
        json!({"routes": 1, "phones": [B_PHONE, B_PHONE_2], "replayed": 0, "outbound": 1})
    );

    // Every operation the API documents was swept.
    let spec: Value = serde_json::from_str(&app.get_text("/openapi.json").await).unwrap();
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"]
        .as_object()
        .expect("paths in the OpenAPI document")
    {
        for method in ops.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let missing: Vec<_> = documented.difference(&s.covered).collect();
    assert!(
        missing.is_empty(),
        "endpoints not covered by the isolation sweep: {missing:?}"
    );
    app.stop_workers().await;
}
