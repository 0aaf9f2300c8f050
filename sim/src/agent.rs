//! Agent simulator: the HTTP endpoint each tenant's inbound SMS is routed to.
//!
//! # The agent contract
//!
//! For every inbound SMS it routes, the service sends
//!
//! ```text
//! POST <agent url>
//! Content-Type: application/json
//! X-SMS-Timestamp: <unix seconds>
//! X-SMS-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>
//!
//! {"message": {"id", "content", "twilio_sid", "received_at", "language"},
//!  "conversation": {"id", "phone_number", "workflow_type", "workflow_id"},
//!  "tenant": {"tenant_id", "name", "language_preference"},
//!  "language": {"detected", "confidence", "conversation"}}
//! ```
//!
//! `secret` is the route's shared secret. To verify, an agent recomputes the HMAC over the RAW
//! body bytes (not re-serialised JSON), compares in constant time, and refuses timestamps more
//! than 5 minutes away from its clock (replay window); `shared::agent_signature::verify` does
//! exactly that. The agent answers:
//!
//! - `200` `{"reply": "..."}`: the service sends the reply to the sender as an SMS;
//! - any other `2xx` without a `reply` string: the message is routed, nothing is sent back;
//! - `4xx`: the service marks the message unroutable at once (no retry);
//! - `5xx`, a timeout or no connection: the service retries with backoff, then marks the
//!   message unroutable. Agents must therefore tolerate the same message (same `message.id`)
//!   arriving more than once.
//!
//! # What the simulator adds
//!
//! `POST /agent/{mode}` plays an agent whose behaviour the path chooses:
//! - `echo`: `200` `{"reply": "Echo: <message.content>"}` (`"Echo"` when there is no content);
//! - `silent`: `200` `{}`;
//! - `slow?ms=N`: waits `N` ms (default 2000), then answers like `echo`;
//! - `fail`: `500` `{"error":"agent failure"}`;
//! - `reject`: `400` `{"error":"rejected"}`;
//! - any other mode: `404` `{"error":"unknown_mode"}`.
//!
//! A missing or wrong signature, or a timestamp outside the window, answers `401`
//! `{"error":"bad_signature"}`; a signed body that is not JSON answers `400`
//! `{"error":"bad_body"}`.
//!
//! Control API for tests (never affected by injected faults or signatures):
//! - `POST /_sim/agent/faults` with `{"latency_ms": u64, "fail_next": u32, "fail_status": u16}`
//!   (all optional; replaces the current faults): `latency_ms` delays every agent request; the
//!   next `fail_next` agent requests answer `fail_status` (default `503`) whatever the mode.
//!   `GET` shows the current faults and what is left of `fail_next`.
//! - `GET /_sim/agent/stats`: `{"requests", "verified", "rejected_signature", "received":
//!   [{"mode", "tenant_id", "message_id", "content", "language", "body"}], "by_message_id":
//!   {"<message.id>": n}}`. Every agent request is recorded on arrival, whatever its answer
//!   (faults, `401`), so retries show in `by_message_id`; `verified + rejected_signature ==
//!   requests`.
//! - `POST /_sim/agent/reset`: clears faults and stats.
//!
//! Order of processing for an agent request: record and check the signature, latency, injected
//! fault, refuse a bad signature, mode. A failing agent answers before it looks at signatures,
//! as the Monitor simulator does with credentials.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shared::agent_signature;
use tokio::sync::watch;

use crate::server::{self, SimServer, bad_request};

/// The secret `sms-sim serve` verifies with unless told otherwise.
pub const DEFAULT_SECRET: &str = "local-agent-secret";

/// How long `slow` waits without `?ms=`.
pub const DEFAULT_SLOW_MS: u64 = 2000;

/// Injected misbehaviour. Setting faults replaces all of them. Unknown fields are refused so a
/// misspelt fault does not silently do nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentFaults {
    /// Added to every agent request.
    pub latency_ms: u64,
    /// The next N agent requests answer `fail_status`, whatever the mode.
    pub fail_next: u32,
    /// Status for `fail_next` (`503` by default).
    pub fail_status: u16,
}

impl Default for AgentFaults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            fail_next: 0,
            fail_status: 503,
        }
    }
}

/// One agent request as it arrived.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReceivedRequest {
    /// The `{mode}` of the path.
    pub mode: String,
    /// `tenant.tenant_id` of the body.
    pub tenant_id: Option<String>,
    /// `message.id` of the body (a number is kept as its decimal text).
    pub message_id: Option<String>,
    /// `message.content` of the body.
    pub content: Option<String>,
    /// The body's `language` object as sent (`null` when absent).
    pub language: Value,
    /// The whole body (`null` when it is not JSON).
    pub body: Value,
}

/// What the simulated agent was sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct AgentStats {
    /// Agent requests of any kind (not control requests), whatever their answer.
    pub requests: u64,
    /// Requests whose signature verified.
    pub verified: u64,
    /// Requests with a missing or wrong signature or a timestamp outside the window.
    pub rejected_signature: u64,
    /// Every agent request, in arrival order.
    pub received: Vec<ReceivedRequest>,
    /// Requests per `message.id`: more than one means the service retried or redelivered.
    pub by_message_id: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Inner {
    faults: AgentFaults,
    stats: AgentStats,
}

/// Shared state of one simulated agent; cheap to clone.
#[derive(Clone)]
pub struct AgentState {
    inner: Arc<Mutex<Inner>>,
    secret: Arc<str>,
    /// Set when the server stops, so slow requests let go instead of delaying shutdown.
    closed: Arc<watch::Sender<bool>>,
}

impl AgentState {
    /// An agent verifying signatures with `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            inner: Arc::default(),
            secret: Arc::from(secret),
            closed: Arc::new(watch::channel(false).0),
        }
    }

    /// A panic elsewhere must not turn every later request into a panic too.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Replaces the current faults.
    pub fn set_faults(&self, faults: AgentFaults) {
        self.lock().faults = faults;
    }

    /// The current faults, with what is left of `fail_next`.
    pub fn faults(&self) -> AgentFaults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> AgentStats {
        self.lock().stats.clone()
    }

    /// Clears faults and stats.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.faults = AgentFaults::default();
        inner.stats = AgentStats::default();
    }

    /// Releases slow requests now and makes later waits return at once.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Sleeps `d` unless closed first.
    async fn pause(&self, d: Duration) {
        if d.is_zero() {
            return;
        }
        let mut closed = self.closed.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = closed.wait_for(|c| *c) => {}
        }
    }

    /// Whether the request carries a valid signature for `body`, checked against the clock now.
    fn signature_ok(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(ts), Some(sig)) = (
            header(agent_signature::TIMESTAMP_HEADER),
            header(agent_signature::SIGNATURE_HEADER),
        ) else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        agent_signature::verify(&self.secret, ts, sig, body, now).is_ok()
    }

    /// Records the request and its signature check; `true` when the signature verified.
    fn record(&self, mode: &str, headers: &HeaderMap, body: &[u8], json: &Value) -> bool {
        let ok = self.signature_ok(headers, body);
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        let message_id = text(&json["message"]["id"]);
        let received = ReceivedRequest {
            mode: mode.to_owned(),
            tenant_id: text(&json["tenant"]["tenant_id"]),
            message_id: message_id.clone(),
            content: json["message"]["content"].as_str().map(str::to_owned),
            language: json["language"].clone(),
            body: json.clone(),
        };
        let mut inner = self.lock();
        let stats = &mut inner.stats;
        stats.requests += 1;
        if ok {
            stats.verified += 1;
        } else {
            stats.rejected_signature += 1;
        }
        if let Some(id) = message_id {
            *stats.by_message_id.entry(id).or_default() += 1;
        }
        stats.received.push(received);
        ok
    }

    /// Applies latency and the next injected failure; `Some(response)` when the request must fail.
    async fn fault(&self) -> Option<Response> {
        let (latency, status) = {
            let mut inner = self.lock();
            let f = &mut inner.faults;
            let status = (f.fail_next > 0).then(|| {
                f.fail_next -= 1;
                StatusCode::from_u16(f.fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            });
            (f.latency_ms, status)
        };
        self.pause(Duration::from_millis(latency)).await;
        status.map(|s| error(s, "injected_failure"))
    }
}

/// `{"error": code}` with `status`.
fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

#[derive(Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

/// `200` `{"reply": "Echo: <message.content>"}`.
fn echo(json: &Value) -> Response {
    let reply = match json["message"]["content"].as_str() {
        Some(content) => format!("Echo: {content}"),
        None => "Echo".to_owned(),
    };
    Json(json!({ "reply": reply })).into_response()
}

async fn agent(
    State(state): State<AgentState>,
    mode: Result<Path<String>, PathRejection>,
    query: Result<Query<SlowQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = match mode {
        Ok(Path(m)) => m,
        Err(e) => return bad_request("bad_path", e.body_text()),
    };
    let parsed: Result<Value, _> = serde_json::from_slice(&body);
    let json = parsed.as_ref().cloned().unwrap_or(Value::Null);
    let signed = state.record(&mode, &headers, &body, &json);
    if let Some(resp) = state.fault().await {
        return resp;
    }
    if !signed {
        return error(StatusCode::UNAUTHORIZED, "bad_signature");
    }
    if let Err(e) = parsed {
        return bad_request("bad_body", e);
    }
    match mode.as_str() {
        "echo" => echo(&json),
        "silent" => Json(json!({})).into_response(),
        "slow" => {
            let ms = match query {
                Ok(Query(q)) => q.ms.unwrap_or(DEFAULT_SLOW_MS),
                Err(e) => return bad_request("bad_query", e.body_text()),
            };
            state.pause(Duration::from_millis(ms)).await;
            echo(&json)
        }
        "fail" => error(StatusCode::INTERNAL_SERVER_ERROR, "agent failure"),
        "reject" => error(StatusCode::BAD_REQUEST, "rejected"),
        _ => error(StatusCode::NOT_FOUND, "unknown_mode"),
    }
}

impl server::Controlled for AgentState {
    type Faults = AgentFaults;
    type Stats = AgentStats;
    fn set_faults(&self, faults: AgentFaults) {
        AgentState::set_faults(self, faults)
    }
    fn faults(&self) -> AgentFaults {
        AgentState::faults(self)
    }
    fn stats(&self) -> AgentStats {
        AgentState::stats(self)
    }
    fn reset(&self) {
        AgentState::reset(self)
    }
    fn fail_status(faults: &AgentFaults) -> u16 {
        faults.fail_status
    }
}

/// The agent's routes plus its control API. It sets no fallback, so it merges into a larger
/// simulator (see [`server::app`]).
pub fn agent_router(state: AgentState) -> Router {
    Router::new()
        .route("/agent/{mode}", post(agent))
        .merge(server::control_routes::<AgentState>("agent"))
        .with_state(state)
}

/// Starts simulated agents.
pub struct AgentSim;

/// A running simulated agent; stops when dropped.
pub struct AgentSimHandle {
    addr: SocketAddr,
    /// `None` only once `shutdown` has taken it.
    server: Option<SimServer>,
    state: AgentState,
}

impl AgentSim {
    /// Serves an agent verifying signatures with `secret` on `bind` (`127.0.0.1:0` for tests).
    pub async fn start(bind: SocketAddr, secret: &str) -> anyhow::Result<AgentSimHandle> {
        let state = AgentState::new(secret);
        let server = SimServer::start(bind, server::app([agent_router(state.clone())])).await?;
        Ok(AgentSimHandle {
            addr: server.addr(),
            server: Some(server),
            state,
        })
    }
}

impl AgentSimHandle {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// The URL of one mode, e.g. `url("echo")` or `url("slow?ms=50")`: what a route points to.
    pub fn url(&self, mode: &str) -> String {
        format!("{}/agent/{mode}", self.base_url())
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn state(&self) -> &AgentState {
        &self.state
    }
    pub fn set_faults(&self, faults: AgentFaults) {
        self.state.set_faults(faults);
    }
    pub fn faults(&self) -> AgentFaults {
        self.state.faults()
    }
    pub fn stats(&self) -> AgentStats {
        self.state.stats()
    }
    pub fn reset(&self) {
        self.state.reset();
    }
    /// Stops accepting, releases slow requests and waits (briefly) for the server to finish.
    pub async fn shutdown(mut self) {
        self.state.close();
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for AgentSimHandle {
    fn drop(&mut self) {
        // The server, if still here, stops through its own Drop.
        self.state.close();
    }
}
