//! Routing inbound messages to their tenant's agent: route choice, signed delivery, replies sent
//! back as SMS, retries, the quarantine and its replay, and tenant isolation of the admin API.

use std::time::Duration;

use harness::sims;
use harness::{
    app::{Settings, TestApp, wait_until},
    pg,
};
use serde_json::{Value, json};
use shared::jobs;
use sim::agent::{AgentFaults, AgentSimHandle};
use sim::twilio::TwilioSimHandle;

const SECRET: &str = "agent-secret-0123456789";

struct World {
    app: TestApp,
    agent: AgentSimHandle,
    twilio: TwilioSimHandle,
    admin: String,
}

async fn world(extra: &[(&str, &str)]) -> World {
    let db = pg::fresh_db().await;
    sqlx::query(
        "INSERT INTO tenant_profiles (tenant_id, name, phone_numbers) VALUES
           ('t-a', 'Ana', '[\"+14159000001\", \"+14159000011\"]'),
           ('t-b', 'Bo', '[\"+14159000002\"]'),
           ('t-c', 'Cy', '[\"+14159000003\"]')",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let agent = sims::agent(SECRET).await;
    let twilio = sims::twilio().await;
    let mut settings = Settings::new(&db)
        .set("TWILIO_API_BASE", twilio.base_url())
        .set("SEND_RATE_PER_SENDER", "0")
        .set("ROUTE_MAX_ATTEMPTS", "3")
        .set("ROUTE_BACKOFF_BASE_MS", "100")
        .set("ROUTE_TIMEOUT_MS", "1000");
    for (k, v) in extra {
        settings = settings.set(k, *v);
    }
    let mut app = TestApp::spawn(settings).await;
    app.start_worker(&[
        jobs::INBOUND,
        jobs::ROUTE,
        jobs::OUTBOUND_SEND,
        jobs::OUTBOUND_STATUS,
    ])
    .await;
    let admin = app.api_key(&["admin"], None).await;
    World {
        app,
        agent,
        twilio,
        admin,
    }
}

async fn add_route(w: &World, target: Value, mode: &str) -> (u16, Value) {
    let mut body = target;
    body["agent_url"] = json!(w.agent.url(mode));
    body["signing_secret"] = json!(SECRET);
    let resp = w
        .app
        .http
        .post(w.app.url("/routes"))
        .bearer_auth(&w.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn route_status(app: &TestApp, sid: &str) -> Option<String> {
    sqlx::query_scalar("SELECT route_status FROM sms_messages WHERE twilio_sid = $1")
        .bind(sid)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn wait_route(app: &TestApp, sid: &str, want: &str) {
    let ok = wait_until(Duration::from_secs(20), || async {
        route_status(app, sid).await.as_deref() == Some(want)
    })
    .await;
    assert!(
        ok.is_ok(),
        "{sid} never {want}: {:?}",
        route_status(app, sid).await
    );
}

async fn decisions(app: &TestApp, sid: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT d.reason, d.outcome FROM sms_routing_decisions d JOIN sms_messages m ON m.id = d.message_id
         WHERE m.twilio_sid = $1 ORDER BY d.id",
    )
    .bind(sid)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn tenant_route_wins_then_workflow_then_default() {
    let w = world(&[]).await;
    assert_eq!(
        add_route(&w, json!({"tenant_id": "t-a"}), "silent").await.0,
        201
    );
    assert_eq!(
        add_route(&w, json!({"workflow_type": "maintenance"}), "silent")
            .await
            .0,
        201
    );
    assert_eq!(
        add_route(&w, json!({"default": true}), "silent").await.0,
        201
    );
    // t-b's conversation is in the maintenance workflow; t-c falls to the default.
    sqlx::query("INSERT INTO sms_conversations (phone_number, phone_number_original, tenant_id, workflow_type) VALUES ('+14159000002', '+14159000002', 't-b', 'maintenance')")
        .execute(&w.app.pool)
        .await
        .unwrap();
    let a = w.app.inbound("+14159000011", "I will pay Friday").await;
    let b = w.app.inbound("+14159000002", "The sink is leaking").await;
    let c = w.app.inbound("+14159000003", "Hello").await;
    for sid in [&a, &b, &c] {
        wait_route(&w.app, sid, "routed").await;
    }
    assert_eq!(
        decisions(&w.app, &a).await,
        vec![("tenant".to_string(), "delivered".to_string())]
    );
    assert_eq!(
        decisions(&w.app, &b).await,
        vec![("workflow_type".to_string(), "delivered".to_string())]
    );
    assert_eq!(
        decisions(&w.app, &c).await,
        vec![("default".to_string(), "delivered".to_string())]
    );
    let stats = w.agent.stats();
    assert_eq!(stats.verified, 3, "every request signed");
    let tenants: Vec<Option<String>> = stats.received.iter().map(|r| r.tenant_id.clone()).collect();
    assert!(
        tenants.contains(&Some("t-a".into()))
            && tenants.contains(&Some("t-b".into()))
            && tenants.contains(&Some("t-c".into()))
    );
}

#[tokio::test]
async fn an_agent_reply_is_sent_back_on_the_same_conversation() {
    let w = world(&[]).await;
    add_route(&w, json!({"tenant_id": "t-a"}), "echo").await;
    let sid = w
        .app
        .inbound("+14159000001", "Can you fix the heater?")
        .await;
    wait_route(&w.app, &sid, "routed").await;
    let ok = wait_until(Duration::from_secs(20), || async {
        w.app.count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound' AND delivery_status = 'delivered'").await == 1
    })
    .await;
    assert!(ok.is_ok(), "reply delivered");
    let reply = sqlx::query!("SELECT message_content, to_number, conversation_id, priority FROM sms_messages WHERE direction = 'outbound'")
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
    assert_eq!(reply.message_content, "Echo: Can you fix the heater?");
    assert_eq!(reply.to_number.as_deref(), Some("+14159000001"));
    assert!(reply.priority > 0, "a reply goes ahead of bulk sends");
    let inbound_conv: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT conversation_id FROM sms_messages WHERE twilio_sid = $1")
            .bind(&sid)
            .fetch_one(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(reply.conversation_id, inbound_conv);
    assert_eq!(w.twilio.stats().creates, 1);
    assert_eq!(decisions(&w.app, &sid).await[0].1, "replied");
}

/// A tenant may list a number libphonenumber does not know as assigned (it must not lose its
/// messages to stale metadata), but a text cannot go there: the agent's reply is not sent, nor an
/// opt-out confirmation, and each says why (the decision's detail in the API and the console; the
/// ledger entry's note).
#[tokio::test]
async fn a_reply_to_a_number_that_takes_no_texts_is_not_sent_and_says_why() {
    let w = world(&[("OPT_OUT_CONFIRMATION", "true")]).await;
    sqlx::query("INSERT INTO tenant_profiles (tenant_id, name, phone_numbers) VALUES ('t-x', 'Xi', '[\"+15559000009\"]')")
        .execute(&w.app.pool)
        .await
        .unwrap();
    add_route(&w, json!({"default": true}), "echo").await;
    let sid = w.app.inbound("+15559000009", "Is the office open?").await;
    wait_route(&w.app, &sid, "routed").await;
    assert_eq!(decisions(&w.app, &sid).await[0].1, "delivered");
    let (status, view) = w
        .app
        .get_json("/conversations/+15559000009", Some(&w.admin))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        view["messages"][0]["routing"][0]["detail"], "reply not sent: not a valid number",
        "{view}"
    );
    // STOP from it: recorded, in force, and no confirmation attempted.
    let stop = w.app.inbound("+15559000009", "STOP").await;
    let noted = wait_until(Duration::from_secs(20), || async {
        w.app
            .count("SELECT count(*) FROM sms_opt_out_events WHERE note = 'confirmation not sent: not a valid number'")
            .await
            == 1
    })
    .await;
    assert!(noted.is_ok(), "the ledger says why ({stop})");
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound'")
            .await,
        0,
        "neither the reply nor the confirmation was created"
    );
    assert_eq!(w.twilio.stats().creates, 0, "nothing sent to Twilio");
}

#[tokio::test]
async fn agent_failures_are_retried_then_quarantined_and_4xx_at_once() {
    let w = world(&[]).await;
    add_route(&w, json!({"tenant_id": "t-a"}), "fail").await;
    add_route(&w, json!({"tenant_id": "t-b"}), "reject").await;
    let a = w.app.inbound("+14159000001", "hello").await;
    let b = w.app.inbound("+14159000002", "hello").await;
    wait_route(&w.app, &a, "unroutable").await;
    wait_route(&w.app, &b, "unroutable").await;
    let outcomes = |d: Vec<(String, String)>| d.into_iter().map(|(_, o)| o).collect::<Vec<_>>();
    assert_eq!(
        outcomes(decisions(&w.app, &a).await),
        vec!["retry", "retry", "unroutable"]
    );
    assert_eq!(outcomes(decisions(&w.app, &b).await), vec!["unroutable"]);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM sms_unroutable ORDER BY reason")
            .fetch_all(&w.app.pool)
            .await
            .unwrap();
    assert_eq!(reasons, vec!["agent_rejected", "agent_unavailable"]);
}

#[tokio::test]
async fn transient_agent_failure_then_success() {
    let w = world(&[]).await;
    add_route(&w, json!({"tenant_id": "t-a"}), "silent").await;
    w.agent.set_faults(AgentFaults {
        fail_next: 1,
        fail_status: 503,
        ..AgentFaults::default()
    });
    let sid = w.app.inbound("+14159000001", "hello").await;
    wait_route(&w.app, &sid, "routed").await;
    let d = decisions(&w.app, &sid).await;
    assert_eq!(
        d.iter().map(|(_, o)| o.as_str()).collect::<Vec<_>>(),
        vec!["retry", "delivered"]
    );
}

#[tokio::test]
async fn unknown_numbers_are_quarantined_and_can_be_replayed() {
    let w = world(&[]).await;
    let sid = w
        .app
        .inbound("+14159000099", "Who do I talk to about my lease?")
        .await;
    wait_route(&w.app, &sid, "unroutable").await;
    let list: Value = w.app.get_json("/unroutable", Some(&w.admin)).await.1;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["reason"], "unknown_number");
    assert_eq!(list[0]["content"], "Who do I talk to about my lease?");
    let message_id = list[0]["message_id"].as_str().unwrap().to_owned();
    // The operator learns whose number it is and adds a route, then replays.
    sqlx::query(
        "UPDATE sms_conversations SET tenant_id = 't-c' WHERE phone_number = '+14159000099'",
    )
    .execute(&w.app.pool)
    .await
    .unwrap();
    add_route(&w, json!({"tenant_id": "t-c"}), "silent").await;
    let resp = w
        .app
        .http
        .post(w.app.url(&format!("/unroutable/{message_id}/replay")))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    wait_route(&w.app, &sid, "routed").await;
    let list: Value = w.app.get_json("/unroutable", Some(&w.admin)).await.1;
    assert!(list.as_array().unwrap().is_empty());
    let again = w
        .app
        .http
        .post(w.app.url(&format!("/unroutable/{message_id}/replay")))
        .bearer_auth(&w.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404, "already replayed");
}

#[tokio::test]
async fn no_route_is_quarantined_and_opt_out_keywords_are_not_routed() {
    let w = world(&[]).await;
    let sid = w.app.inbound("+14159000001", "hello").await;
    wait_route(&w.app, &sid, "unroutable").await;
    assert_eq!(
        decisions(&w.app, &sid).await,
        vec![("no_route".to_string(), "unroutable".to_string())]
    );
    add_route(&w, json!({"default": true}), "echo").await;
    let stop = w.app.inbound("+14159000002", "STOP").await;
    w.app.drain(jobs::INBOUND).await;
    w.app.drain(jobs::ROUTE).await;
    assert_eq!(
        route_status(&w.app, &stop).await.as_deref(),
        Some("skipped")
    );
    assert_eq!(w.agent.stats().requests, 0);
}

#[tokio::test]
async fn routes_admin_api_validates_and_isolates_tenants() {
    let w = world(&[]).await;
    for bad in [
        json!({"agent_url": "http://x.example", "signing_secret": SECRET}),
        json!({"tenant_id": "t-a", "default": true, "agent_url": "http://x.example", "signing_secret": SECRET}),
        json!({"tenant_id": "t-a", "agent_url": "ftp://x", "signing_secret": SECRET}),
        json!({"tenant_id": "t-a", "agent_url": "http://x.example", "signing_secret": "short"}),
    ] {
        let resp = w
            .app
            .http
            .post(w.app.url("/routes"))
            .bearer_auth(&w.admin)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
    }
    let (_, ra) = add_route(&w, json!({"tenant_id": "t-a"}), "silent").await;
    let (_, rb) = add_route(&w, json!({"tenant_id": "t-b"}), "silent").await;
    assert!(ra.get("signing_secret").is_none(), "secrets are write-only");
    let reader = w.app.api_key(&["read"], None).await;
    let resp = w
        .app
        .http
        .post(w.app.url("/routes"))
        .bearer_auth(&reader)
        .json(&json!({"default": true, "agent_url": "http://x.example", "signing_secret": SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A key scoped to t-a sees only t-a's route; t-b's does not exist for it.
    let key_a = w.app.api_key(&["read", "admin"], Some("t-a")).await;
    let list: Value = w.app.get_json("/routes", Some(&key_a)).await.1;
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tenant_id"], "t-a");
    let resp = w
        .app
        .http
        .delete(
            w.app
                .url(&format!("/routes/{}", rb["id"].as_str().unwrap())),
        )
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = w
        .app
        .http
        .post(w.app.url("/routes"))
        .bearer_auth(&key_a)
        .json(
            &json!({"tenant_id": "t-b", "agent_url": "http://x.example", "signing_secret": SECRET}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // The quarantine is per tenant too.
    let sid = w.app.inbound("+14159000002", "hello").await; // t-b, whose agent is silent: routed
    wait_route(&w.app, &sid, "routed").await;
    sqlx::query("DELETE FROM agent_routes WHERE tenant_id = 't-b'")
        .execute(&w.app.pool)
        .await
        .unwrap();
    let sid = w.app.inbound("+14159000002", "again").await;
    wait_route(&w.app, &sid, "unroutable").await;
    let list: Value = w.app.get_json("/unroutable", Some(&key_a)).await.1;
    assert!(
        list.as_array().unwrap().is_empty(),
        "t-a does not see t-b's quarantine"
    );
    let all: Value = w.app.get_json("/unroutable", Some(&w.admin)).await.1;
    let id = all[0]["message_id"].as_str().unwrap();
    let resp = w
        .app
        .http
        .post(w.app.url(&format!("/unroutable/{id}/replay")))
        .bearer_auth(&key_a)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn malformed_ids_queries_and_oversized_bodies_get_json_errors() {
    let w = world(&[("MAX_BODY_BYTES", "1024")]).await;
    let app = &w.app;
    for (method, path, code) in [
        ("DELETE", "/routes/not-a-uuid", "invalid_path"),
        ("POST", "/unroutable/not-a-uuid/replay", "invalid_path"),
        ("GET", "/unroutable?limit=lots", "invalid_query"),
        (
            "GET",
            "/unroutable?include_replayed=perhaps",
            "invalid_query",
        ),
    ] {
        let resp = app
            .http
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&w.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{method} {path}");
        let body: Value = resp.json().await.expect("a JSON error body");
        assert_eq!(body["code"], code, "{method} {path}: {body}");
    }
    let big = "x".repeat(4096);
    for path in ["/routes", "/tenants/t-a/phones"] {
        let resp = app
            .http
            .post(app.url(path))
            .bearer_auth(&w.admin)
            .json(&json!({"agent_url": big, "phone_number": big}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "payload_too_large");
    }
}

/// An agent's reply goes through the same rules as `POST /sms/send`: over the body limit it is
/// refused (never truncated), and to an opted-out number it is not sent; both are recorded in the
/// routing decision, and the message still counts as delivered to its agent.
#[tokio::test]
async fn a_reply_over_the_limit_or_to_an_opted_out_number_is_recorded_not_sent() {
    let w = world(&[]).await;
    add_route(&w, json!({"tenant_id": "t-a"}), "echo").await;
    // "Echo: " + 1,600 characters is over Twilio's 1,600.
    let long = w.app.inbound("+14159000001", &"a".repeat(1600)).await;
    wait_route(&w.app, &long, "routed").await;
    // t-b opted out of our number earlier.
    sqlx::query(
        "INSERT INTO sms_opt_outs (our_number, their_number, opted_out, keyword) VALUES ($1, '+14159000002', true, 'STOP')",
    )
    .bind(harness::app::OUR_NUMBER)
    .execute(&w.app.pool)
    .await
    .unwrap();
    add_route(&w, json!({"tenant_id": "t-b"}), "echo").await;
    let opted = w.app.inbound("+14159000002", "Who is this?").await;
    wait_route(&w.app, &opted, "routed").await;
    for (sid, why) in [
        (&long, "reply not sent: is 1606 characters; at most 1600"),
        (&opted, "reply not sent: the recipient opted out"),
    ] {
        let (outcome, detail): (String, Option<String>) = sqlx::query_as(
            "SELECT d.outcome, d.detail FROM sms_routing_decisions d JOIN sms_messages m ON m.id = d.message_id WHERE m.twilio_sid = $1",
        )
        .bind(sid)
        .fetch_one(&w.app.pool)
        .await
        .unwrap();
        assert_eq!(outcome, "delivered");
        assert!(
            detail.as_deref().unwrap_or_default().starts_with(why),
            "{detail:?}"
        );
    }
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM sms_messages WHERE direction = 'outbound'")
            .await,
        0,
        "no reply stored, none truncated"
    );
}

/// A route job run again while its first run still waits on the agent (a job re-queued from a
/// worker taken for dead, a replay) finds the message claimed and defers: the agent is called
/// once, and the one call is what `route_calls` records.
#[tokio::test]
async fn a_second_run_while_the_first_waits_on_the_agent_does_not_call_it_again() {
    let w = world(&[]).await;
    add_route(&w, json!({"tenant_id": "t-a"}), "silent").await;
    w.agent.set_faults(AgentFaults {
        latency_ms: 800,
        ..AgentFaults::default()
    });
    let sid = w.app.inbound("+14159000001", "hello").await;
    let id: uuid::Uuid = {
        let found = wait_until(Duration::from_secs(20), || async {
            sqlx::query_scalar::<_, i32>(
                "SELECT route_calls FROM sms_messages WHERE twilio_sid = $1",
            )
            .bind(&sid)
            .fetch_one(&w.app.pool)
            .await
            .unwrap()
                == 1
        })
        .await;
        assert!(found.is_ok(), "the worker's run claimed the message");
        sqlx::query_scalar("SELECT id FROM sms_messages WHERE twilio_sid = $1")
            .bind(&sid)
            .fetch_one(&w.app.pool)
            .await
            .unwrap()
    };
    let cfg = shared::config::Worker::load(&w.app.settings.0).unwrap();
    let deps = worker::Deps::new(&cfg, w.app.pool.clone());
    let job = || shared::jobs::RouteMessage {
        message_id: id,
        attempt: 0,
        trace: None,
    };
    let (a, b) = tokio::join!(
        worker::route::process(&deps, job()),
        worker::route::process(&deps, job())
    );
    for outcome in [a.unwrap(), b.unwrap()] {
        assert!(
            matches!(
                outcome,
                worker::route::Outcome::Deferred | worker::route::Outcome::AlreadyDone
            ),
            "{outcome:?}"
        );
    }
    wait_route(&w.app, &sid, "routed").await;
    assert_eq!(w.agent.stats().by_message_id.get(&id.to_string()), Some(&1));
    assert_eq!(
        sqlx::query_scalar::<_, i32>("SELECT route_calls FROM sms_messages WHERE id = $1")
            .bind(id)
            .fetch_one(&w.app.pool)
            .await
            .unwrap(),
        1
    );
}
