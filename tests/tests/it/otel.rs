//! Traces across processes and the queue: an ingress PROCESS and a worker PROCESS export spans
//! over OTLP/HTTP to the simulator (which also plays Twilio and the agent), and a message's
//! whole path is one trace: the caller's `traceparent` -> the ingress -> the job -> the worker's
//! spans -> the agent and Twilio calls, whose requests carry the trace on.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::Duration,
};

use harness::{
    app::{ACCOUNT_SID, AUTH_TOKEN, OUR_NUMBER, Settings, TestApp, wait_until, workspace_binary},
    pg,
};
use serde_json::json;
use sim::{
    agent::{AgentState, agent_router},
    otlp::{OtlpState, RecordedSpan, otlp_router},
    server::{SimServer, app as sim_app},
    twilio::{TwilioState, twilio_router},
};

const SECRET: &str = "agent-secret-0123456789";
const TENANT_PHONE: &str = "+14159300001";

/// A process killed when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct World {
    app: TestApp,
    /// The ingress process's base URL.
    ingress: String,
    sim: SimServer,
    twilio: TwilioState,
    _processes: Vec<Killed>,
}

/// The simulator (Twilio, an echo agent and the OTLP receiver on one port), a tenant routed to
/// the agent, and the two services as processes exporting traces to the simulator.
async fn world() -> World {
    let db = pg::fresh_db().await;
    sqlx::query("INSERT INTO tenant_profiles (tenant_id, name, phone_numbers) VALUES ('t-otel', 'Olga', $1)")
        .bind(json!([TENANT_PHONE]))
        .execute(&db.pool)
        .await
        .unwrap();
    let twilio = TwilioState::new(ACCOUNT_SID, AUTH_TOKEN);
    let sim = SimServer::start(
        "127.0.0.1:0".parse().unwrap(),
        sim_app([
            twilio_router(twilio.clone()),
            agent_router(AgentState::new(SECRET)),
            otlp_router(OtlpState::new()),
        ]),
    )
    .await
    .unwrap();
    let port = pg::free_port().expect("a free port");
    let ingress = format!("http://127.0.0.1:{port}");
    let settings = Settings::new(&db)
        .set("PUBLIC_URL", ingress.clone())
        .set("BIND_ADDR", format!("127.0.0.1:{port}"))
        .set("TWILIO_API_BASE", sim.base_url())
        .set("SEND_RATE_PER_SENDER", "0");
    let app = TestApp::spawn(settings).await;
    ingress::agent_routes::save(
        &app.pool,
        &shared::fence::Fence::parse("127.0.0.0/8").unwrap(),
        Some("t-otel"),
        None,
        false,
        &format!("{}/agent/echo", sim.base_url()),
        SECRET,
    )
    .await
    .unwrap();

    let endpoint = sim.base_url();
    // Short batches so spans arrive within the test; logs stay quiet (RUST_LOG=warn), which
    // must not cut the traces short.
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut cmd = Command::new(workspace_binary("sms-ingress"));
    cmd.arg("serve").env_clear();
    for (k, v) in &app.settings.0 {
        cmd.env(k, v);
    }
    for (k, v) in otel {
        cmd.env(k, v);
    }
    let log = if std::env::var_os("TEST_LOG").is_some() {
        cmd.env("RUST_LOG", "info");
        Stdio::inherit()
    } else {
        cmd.env("RUST_LOG", "warn");
        Stdio::null()
    };
    let ingress_process = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start sms-ingress");
    let worker = app.spawn_worker_process("inbound,route,outbound-send", &otel);
    let processes = vec![Killed(ingress_process), Killed(worker)];

    let http = reqwest::Client::new();
    let up = wait_until(Duration::from_secs(20), || async {
        http.get(format!("{ingress}/health")).send().await.is_ok()
    })
    .await;
    assert!(up.is_ok(), "the ingress process never answered");
    World {
        app,
        ingress,
        sim,
        twilio,
        _processes: processes,
    }
}

fn traceparent(trace_id: &str, parent: &str) -> String {
    format!("00-{trace_id}-{parent}-01")
}

/// A random 32-hex-digit trace id.
fn new_trace_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The spans of `trace_id` received so far, read over the simulator's HTTP API.
async fn spans_of(world: &World, trace_id: &str) -> Vec<RecordedSpan> {
    world
        .app
        .http
        .get(format!(
            "{}/_sim/otlp/spans?trace_id={trace_id}",
            world.sim.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `trace_id` has a span of each `(service, name)`; returns the trace's spans.
async fn wait_for_spans(world: &World, trace_id: &str, want: &[(&str, &str)]) -> Vec<RecordedSpan> {
    let has_all = |spans: &[RecordedSpan]| {
        want.iter().all(|(service, name)| {
            spans
                .iter()
                .any(|s| s.service_name == *service && s.name == *name)
        })
    };
    let ok = wait_until(Duration::from_secs(30), || async {
        has_all(&spans_of(world, trace_id).await)
    })
    .await;
    let spans = spans_of(world, trace_id).await;
    assert!(
        ok.is_ok(),
        "trace {trace_id} lacks some of {want:?}; it has {:?}",
        spans
            .iter()
            .map(|s| (&s.service_name, &s.name))
            .collect::<Vec<_>>()
    );
    spans
}

fn one<'a>(spans: &'a [RecordedSpan], service: &str, name: &str) -> &'a RecordedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service_name == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "one {service} {name} span: {found:?}");
    found[0]
}

#[tokio::test]
async fn an_inbound_message_is_one_trace_from_the_webhook_through_the_queue_to_twilio() {
    let w = world().await;
    // Several webhooks at once, each in its own trace: the group commit may store them with ONE
    // job, and each message must still continue its own webhook's trace.
    let caller_span = "00f067aa0ba902b7";
    let traces: Vec<String> = (0..4).map(|_| new_trace_id()).collect();
    let posts = traces.iter().enumerate().map(|(i, trace_id)| {
        let sms = sim::webhook::InboundSms::new(TENANT_PHONE, OUR_NUMBER, format!("hola {i}"));
        let url = format!("{}/webhook/twilio/sms", w.ingress);
        let (body, signature) =
            sim::webhook::signed_request(AUTH_TOKEN, &url, &sms.params(ACCOUNT_SID));
        let request = w
            .app
            .http
            .post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .header("traceparent", traceparent(trace_id, caller_span))
            .body(body);
        async move { request.send().await.unwrap().status() }
    });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status, 200);
    }

    let mut twilio_parents = HashMap::new();
    for trace_id in &traces {
        let spans = wait_for_spans(
            &w,
            trace_id,
            &[
                ("sms-ingress", "request"),
                ("sms-ingress", "inbound_sms"),
                ("sms-worker", "process_inbound"),
                ("sms-worker", "route_message"),
                ("sms-worker", "agent_request"),
                ("sms-worker", "send_message"),
                ("sms-worker", "twilio_create_message"),
            ],
        )
        .await;
        // The ingress continued the caller's span...
        let request = one(&spans, "sms-ingress", "request");
        assert_eq!(request.parent_span_id, caller_span);
        assert_eq!(request.kind, "server");
        let webhook = one(&spans, "sms-ingress", "inbound_sms");
        assert_eq!(webhook.parent_span_id, request.span_id);
        // ...and the worker continued the webhook's span, across the queue.
        let processing = one(&spans, "sms-worker", "process_inbound");
        assert_eq!(processing.parent_span_id, webhook.span_id);
        let route = one(&spans, "sms-worker", "route_message");
        assert_eq!(route.parent_span_id, processing.span_id);
        let agent = one(&spans, "sms-worker", "agent_request");
        assert_eq!(
            (agent.parent_span_id.as_str(), agent.kind.as_str()),
            (route.span_id.as_str(), "client")
        );
        // The agent's reply is sent in the same trace.
        let send = one(&spans, "sms-worker", "send_message");
        assert_eq!(send.parent_span_id, route.span_id);
        let call = one(&spans, "sms-worker", "twilio_create_message");
        assert_eq!(
            (call.parent_span_id.as_str(), call.kind.as_str()),
            (send.span_id.as_str(), "client")
        );
        assert_eq!(
            call.attributes
                .get("http.response.status_code")
                .map(String::as_str),
            Some("201")
        );
        twilio_parents.insert(trace_id.clone(), call.span_id.clone());
    }
    // Twilio received each reply's create with its trace, the call's span as the parent.
    let received: Vec<String> = w
        .twilio
        .stats()
        .messages
        .into_iter()
        .filter_map(|m| m.traceparent)
        .collect();
    for (trace_id, call_span) in &twilio_parents {
        assert!(
            received.contains(&traceparent(trace_id, call_span)),
            "Twilio got no traceparent for trace {trace_id}: {received:?}"
        );
    }
}

#[tokio::test]
async fn an_api_send_carries_its_callers_trace_to_twilio() {
    let w = world().await;
    let key = w.app.api_key(&["send"], None).await;
    let trace_id = new_trace_id();
    let resp = w
        .app
        .http
        .post(format!("{}/sms/send", w.ingress))
        .bearer_auth(&key)
        .header("traceparent", traceparent(&trace_id, "1111111111111111"))
        .json(&json!({"to": "+14159300002", "body": "Su recibo está listo."}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);

    let spans = wait_for_spans(
        &w,
        &trace_id,
        &[
            ("sms-ingress", "request"),
            ("sms-worker", "send_message"),
            ("sms-worker", "twilio_create_message"),
        ],
    )
    .await;
    let request = one(&spans, "sms-ingress", "request");
    assert_eq!(request.parent_span_id, "1111111111111111");
    let ingress_ids: Vec<&str> = spans
        .iter()
        .filter(|s| s.service_name == "sms-ingress")
        .map(|s| s.span_id.as_str())
        .collect();
    let send = one(&spans, "sms-worker", "send_message");
    assert!(
        ingress_ids.contains(&send.parent_span_id.as_str()),
        "the worker's send continues an ingress span: {spans:?}"
    );
    let call = one(&spans, "sms-worker", "twilio_create_message");
    assert_eq!(call.parent_span_id, send.span_id);
    let created = w.twilio.stats().messages;
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0].traceparent.as_deref(),
        Some(traceparent(&trace_id, &call.span_id).as_str())
    );
}
