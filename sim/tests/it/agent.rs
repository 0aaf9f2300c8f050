use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::agent_signature::{self, REPLAY_WINDOW_SECS, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use sim::agent::{AgentFaults, AgentSim, AgentSimHandle, ReceivedRequest};

const SECRET: &str = "test-agent-secret";

async fn agent() -> AgentSimHandle {
    AgentSim::start("127.0.0.1:0".parse().unwrap(), SECRET)
        .await
        .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A body shaped like the one the worker sends.
fn payload(message_id: &str, content: &str) -> Value {
    json!({
        "message": {"id": message_id, "content": content, "twilio_sid": "SM1", "language": "es"},
        "conversation": {"id": "c-1", "phone_number": "+15551230001"},
        "tenant": {"tenant_id": "t-1001", "name": "Maria", "language_preference": "es"},
        "language": {"detected": "es", "confidence": 0.9, "conversation": "es"},
    })
}

/// Posts `body` to `url` signed with `secret` at `ts`; `(status, JSON body or Null)`.
async fn send_signed(
    http: &reqwest::Client,
    url: &str,
    secret: &str,
    ts: i64,
    body: &Value,
) -> (u16, Value) {
    let raw = serde_json::to_vec(body).unwrap();
    let resp = http
        .post(url)
        .header("content-type", "application/json")
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, agent_signature::sign(secret, ts, &raw))
        .body(raw)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn send(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    send_signed(http, url, SECRET, now(), body).await
}

#[tokio::test]
async fn echo_replies_with_the_content() {
    let a = agent().await;
    let http = reqwest::Client::new();
    assert!(a.base_url().starts_with("http://127.0.0.1:") && !a.base_url().ends_with('/'));
    assert_eq!(a.url("echo"), format!("{}/agent/echo", a.base_url()));

    let (status, body) = send(&http, &a.url("echo"), &payload("m-1", "hola")).await;
    assert_eq!((status, body), (200, json!({"reply": "Echo: hola"})));
    // No content: a bare "Echo".
    let (status, body) = send(&http, &a.url("echo"), &json!({"message": {"id": "m-2"}})).await;
    assert_eq!((status, body), (200, json!({"reply": "Echo"})));

    let stats = a.stats();
    assert_eq!((stats.requests, stats.verified), (2, 2));
    assert_eq!(
        stats.received[0],
        ReceivedRequest {
            mode: "echo".into(),
            tenant_id: Some("t-1001".into()),
            message_id: Some("m-1".into()),
            content: Some("hola".into()),
            language: json!({"detected": "es", "confidence": 0.9, "conversation": "es"}),
            body: payload("m-1", "hola"),
        }
    );
    assert_eq!(stats.received[1].tenant_id, None);
    assert_eq!(stats.received[1].language, Value::Null);
}

#[tokio::test]
async fn bad_or_expired_signatures_are_refused() {
    let a = agent().await;
    let http = reqwest::Client::new();
    let url = a.url("echo");
    let body = payload("m-1", "hola");
    let refused = (401, json!({"error": "bad_signature"}));

    assert_eq!(
        send_signed(&http, &url, "wrong-secret", now(), &body).await,
        refused
    );
    let expired = now() - REPLAY_WINDOW_SECS - 60;
    assert_eq!(
        send_signed(&http, &url, SECRET, expired, &body).await,
        refused
    );
    let future = now() + REPLAY_WINDOW_SECS + 60;
    assert_eq!(
        send_signed(&http, &url, SECRET, future, &body).await,
        refused
    );
    // No headers at all.
    let resp = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Signed for another body.
    let ts = now();
    let resp = http
        .post(&url)
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, agent_signature::sign(SECRET, ts, b"{}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);

    // Still served correctly afterwards.
    assert_eq!(send(&http, &url, &body).await.0, 200);
    let stats = a.stats();
    assert_eq!(
        (stats.requests, stats.verified, stats.rejected_signature),
        (6, 1, 5)
    );
    // Refused requests are recorded too.
    assert_eq!(stats.by_message_id.get("m-1"), Some(&6));
}

#[tokio::test]
async fn silent_fail_reject_and_unknown_modes() {
    let a = agent().await;
    let http = reqwest::Client::new();
    let body = payload("m-1", "hola");
    assert_eq!(send(&http, &a.url("silent"), &body).await, (200, json!({})));
    assert_eq!(
        send(&http, &a.url("fail"), &body).await,
        (500, json!({"error": "agent failure"}))
    );
    assert_eq!(
        send(&http, &a.url("reject"), &body).await,
        (400, json!({"error": "rejected"}))
    );
    assert_eq!(
        send(&http, &a.url("dance"), &body).await,
        (404, json!({"error": "unknown_mode"}))
    );
    // A signed body that is not JSON.
    let ts = now();
    let resp = http
        .post(a.url("echo"))
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, agent_signature::sign(SECRET, ts, b"nope"))
        .body("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "bad_body");

    let modes: Vec<String> = a.stats().received.into_iter().map(|r| r.mode).collect();
    assert_eq!(modes, ["silent", "fail", "reject", "dance", "echo"]);
}

#[tokio::test]
async fn slow_waits_then_echoes() {
    let a = agent().await;
    let http = reqwest::Client::new();
    let started = Instant::now();
    let (status, body) = send(&http, &a.url("slow?ms=150"), &payload("m-1", "hola")).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!((status, body), (200, json!({"reply": "Echo: hola"})));
    assert_eq!(a.stats().received[0].mode, "slow");

    // A client timing out shorter than the wait sees a timeout, as the worker would.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let raw = b"{}";
    let ts = now();
    let err = impatient
        .post(a.url("slow?ms=1000"))
        .header(TIMESTAMP_HEADER, ts.to_string())
        .header(SIGNATURE_HEADER, agent_signature::sign(SECRET, ts, raw))
        .body(&raw[..])
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());

    let resp = http.post(a.url("slow?ms=abc")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "signature comes first");
    // Shutting down does not wait for the slow request.
    let started = Instant::now();
    a.shutdown().await;
    assert!(started.elapsed() < Duration::from_millis(900));
}

#[tokio::test]
async fn faults_fail_next_then_recover() {
    let a = agent().await;
    let http = reqwest::Client::new();
    let body = payload("m-1", "hola");
    a.set_faults(AgentFaults {
        fail_next: 2,
        ..Default::default()
    });
    // Whatever the mode, and before the signature is looked at.
    assert_eq!(
        send(&http, &a.url("echo"), &body).await,
        (503, json!({"error": "injected_failure"}))
    );
    assert_eq!(
        send_signed(&http, &a.url("silent"), "wrong", now(), &body)
            .await
            .0,
        503
    );
    assert_eq!(a.faults().fail_next, 0);
    assert_eq!(send(&http, &a.url("echo"), &body).await.0, 200);

    // Over HTTP: custom status and latency; unknown fields and bad statuses refused.
    let faults = format!("{}/_sim/agent/faults", a.base_url());
    let post = |v: Value| http.post(&faults).json(&v).send();
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            post(json!({"fail_next": 1, "fail_status": 429}))
                .await
                .unwrap()
        ),
        204
    );
    assert_eq!(send(&http, &a.url("echo"), &body).await.0, 429);
    assert_eq!(status(post(json!({"fail_nxt": 1})).await.unwrap()), 400);
    assert_eq!(
        status(post(json!({"fail_status": 200})).await.unwrap()),
        400
    );
    assert_eq!(status(post(json!([])).await.unwrap()), 400);
    assert_eq!(status(post(json!({"latency_ms": 120})).await.unwrap()), 204);
    let got: Value = http
        .get(&faults)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        got,
        json!({"latency_ms": 120, "fail_next": 0, "fail_status": 503})
    );
    let started = Instant::now();
    assert_eq!(send(&http, &a.url("echo"), &body).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(120));
}

#[tokio::test]
async fn stats_count_per_message_and_reset() {
    let a = agent().await;
    let http = reqwest::Client::new();
    a.set_faults(AgentFaults {
        fail_next: 1,
        ..Default::default()
    });
    // m-1 retried after a failure, m-2 once, a numeric id, and no id at all.
    for (url, body) in [
        (a.url("echo"), payload("m-1", "a")),
        (a.url("echo"), payload("m-1", "a")),
        (a.url("silent"), payload("m-2", "b")),
        (
            a.url("echo"),
            json!({"message": {"id": 42, "content": "c"}}),
        ),
        (a.url("echo"), json!({"hello": true})),
    ] {
        send(&http, &url, &body).await;
    }
    let stats_url = format!("{}/_sim/agent/stats", a.base_url());
    let stats: Value = http
        .get(&stats_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"], 5);
    assert_eq!(stats["verified"], 5);
    assert_eq!(stats["rejected_signature"], 0);
    assert_eq!(stats["by_message_id"], json!({"m-1": 2, "m-2": 1, "42": 1}));
    assert_eq!(stats["received"].as_array().unwrap().len(), 5);
    assert_eq!(stats["received"][3]["message_id"], "42");
    assert_eq!(stats["received"][4]["message_id"], Value::Null);
    assert_eq!(stats["received"][2]["content"], "b");
    assert_eq!(stats, serde_json::to_value(a.stats()).unwrap());

    a.set_faults(AgentFaults {
        latency_ms: 5000,
        ..Default::default()
    });
    let resp = http
        .post(format!("{}/_sim/agent/reset", a.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(a.stats(), Default::default());
    assert_eq!(a.faults(), AgentFaults::default());
    a.reset();
}
