//! A minimal agent for the routing tests, over real HTTP: `/agent/{echo|silent|slow|fail|reject}`,
//! checking our signature like a real agent must (401 when wrong), with injectable failures and a
//! record of what it received. (`sms-sim` carries the full agent simulator for local runs.)

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use serde_json::{Value, json};
use shared::agent_signature;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct AgentFaults {
    pub latency_ms: u64,
    pub fail_next: u32,
    pub fail_status: u16,
}

#[derive(Debug, Clone)]
pub struct ReceivedRequest {
    pub mode: String,
    pub tenant_id: Option<String>,
    pub message_id: Option<String>,
    pub content: Option<String>,
    pub body: Value,
}

#[derive(Debug, Clone, Default)]
pub struct AgentStats {
    pub requests: u64,
    pub verified: u64,
    pub rejected_signature: u64,
    pub received: Vec<ReceivedRequest>,
    pub by_message_id: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Inner {
    faults: AgentFaults,
    stats: AgentStats,
}

#[derive(Clone)]
struct AgentState {
    secret: String,
    inner: Arc<Mutex<Inner>>,
}

pub struct AgentSim;

pub struct AgentSimHandle {
    addr: SocketAddr,
    state: AgentState,
    stop: CancellationToken,
}

#[derive(serde::Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

async fn agent(
    State(state): State<AgentState>,
    Path(mode): Path<String>,
    Query(q): Query<SlowQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let verified = agent_signature::verify(
        &state.secret,
        &header(agent_signature::TIMESTAMP_HEADER),
        &header(agent_signature::SIGNATURE_HEADER),
        &body,
        chrono::Utc::now().timestamp(),
    )
    .is_ok();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let content = json["message"]["content"].as_str().map(str::to_owned);
    let (latency, fail) = {
        let mut inner = state.inner.lock().unwrap();
        let stats = &mut inner.stats;
        stats.requests += 1;
        if !verified {
            stats.rejected_signature += 1;
        } else {
            stats.verified += 1;
            let message_id = json["message"]["id"].as_str().map(str::to_owned);
            if let Some(id) = &message_id {
                *stats.by_message_id.entry(id.clone()).or_default() += 1;
            }
            stats.received.push(ReceivedRequest {
                mode: mode.clone(),
                tenant_id: json["tenant"]["tenant_id"].as_str().map(str::to_owned),
                message_id,
                content: content.clone(),
                body: json.clone(),
            });
        }
        let f = &mut inner.faults;
        let fail = if f.fail_next > 0 {
            f.fail_next -= 1;
            Some(if f.fail_status == 0 {
                503
            } else {
                f.fail_status
            })
        } else {
            None
        };
        (f.latency_ms, fail)
    };
    if !verified {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "bad_signature"})),
        )
            .into_response();
    }
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    if let Some(code) = fail {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return (status, Json(json!({"error": "injected"}))).into_response();
    }
    let echo = || Json(json!({"reply": format!("Echo: {}", content.clone().unwrap_or_default())}));
    match mode.as_str() {
        "echo" => echo().into_response(),
        "silent" => Json(json!({})).into_response(),
        "slow" => {
            tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(2000))).await;
            echo().into_response()
        }
        "fail" => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "agent failure"})),
        )
            .into_response(),
        "reject" => (StatusCode::BAD_REQUEST, Json(json!({"error": "rejected"}))).into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "unknown mode"})),
        )
            .into_response(),
    }
}

impl AgentSim {
    pub async fn start(bind: SocketAddr, secret: &str) -> anyhow::Result<AgentSimHandle> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = AgentState {
            secret: secret.to_owned(),
            inner: Arc::default(),
        };
        let app = Router::new()
            .route("/agent/{mode}", post(agent))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(AgentSimHandle { addr, state, stop })
    }
}

impl AgentSimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn url(&self, mode: &str) -> String {
        format!("{}/agent/{mode}", self.base_url())
    }
    pub fn set_faults(&self, faults: AgentFaults) {
        self.state.inner.lock().unwrap().faults = faults;
    }
    pub fn stats(&self) -> AgentStats {
        self.state.inner.lock().unwrap().stats.clone()
    }
}

impl Drop for AgentSimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
