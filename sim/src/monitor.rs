//! Collections Monitor simulator.
//!
//! The contract we expect from a real Monitor:
//! - `GET /tenants/lookup?phone=<any written form>` -> `200 {"tenant_id", "name", "phone_numbers",
//!   "language_preference"}` or `404 {"error":"not_found"}`.
//! - `PUT /tenants/{tenant_id}/language` with `{"language":"es","confidence":0.93}` -> `204`, or
//!   `404` for an unknown tenant.
//! - With an API key configured, requests carry `Authorization: Bearer <key>`, else `401`.
//!
//! The simulator matches `phone` EXACTLY against each number as seeded (no normalisation), so tests
//! can see the caller trying variants. Control endpoints under `/_sim/monitor` seed tenants, inject
//! latency, failures, hangs and outages, and report what was asked.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub tenant_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    #[serde(default)]
    pub language_preference: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default)]
pub struct Faults {
    /// Added to every Monitor request.
    pub latency_ms: u64,
    /// The next N requests answer `fail_status`.
    pub fail_next: u32,
    /// Status for `fail_next` (503 when 0).
    pub fail_status: u16,
    /// The next N requests hang for 30 s (callers time out).
    pub timeout_next: u32,
    /// Answer 503 to everything until cleared.
    pub down: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LanguageUpdate {
    pub tenant_id: String,
    pub language: String,
    pub confidence: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Stats {
    pub lookups: u64,
    pub lookup_phones: Vec<String>,
    pub language_updates: Vec<LanguageUpdate>,
}

#[derive(Default)]
struct Inner {
    tenants: BTreeMap<String, Tenant>,
    faults: Faults,
    stats: Stats,
}

/// Shared state of one simulated Monitor.
#[derive(Clone, Default)]
pub struct MonitorState {
    inner: Arc<Mutex<Inner>>,
    api_key: Option<String>,
}

impl MonitorState {
    pub fn new(api_key: Option<String>) -> Self {
        Self {
            inner: Arc::default(),
            api_key,
        }
    }

    pub fn seed(&self, tenants: Vec<Tenant>) {
        let mut inner = self.inner.lock().unwrap();
        for t in tenants {
            inner.tenants.insert(t.tenant_id.clone(), t);
        }
    }

    pub fn set_faults(&self, faults: Faults) {
        self.inner.lock().unwrap().faults = faults;
    }

    pub fn stats(&self) -> Stats {
        self.inner.lock().unwrap().stats.clone()
    }

    pub fn reset(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.faults = Faults::default();
        inner.stats = Stats::default();
    }

    /// Applies latency and injected failures; Some(response) when the request must fail.
    async fn fault(&self) -> Option<Response> {
        let (latency, action) = {
            let mut inner = self.inner.lock().unwrap();
            let f = &mut inner.faults;
            let action = if f.down {
                Some(503)
            } else if f.timeout_next > 0 {
                f.timeout_next -= 1;
                Some(0)
            } else if f.fail_next > 0 {
                f.fail_next -= 1;
                Some(if f.fail_status == 0 { 503 } else { f.fail_status })
            } else {
                None
            };
            (f.latency_ms, action)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        match action {
            None => None,
            Some(0) => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Some(StatusCode::GATEWAY_TIMEOUT.into_response())
            }
            Some(code) => {
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                Some((status, Json(json!({"error": "injected"}))).into_response())
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|v| v == key)
    }
}

#[derive(Deserialize)]
struct LookupQuery {
    phone: Option<String>,
}

async fn lookup(
    State(state): State<MonitorState>,
    headers: HeaderMap,
    Query(q): Query<LookupQuery>,
) -> Response {
    if !state.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))).into_response();
    }
    let phone = q.phone.unwrap_or_default();
    {
        let mut inner = state.inner.lock().unwrap();
        inner.stats.lookups += 1;
        inner.stats.lookup_phones.push(phone.clone());
    }
    if let Some(resp) = state.fault().await {
        return resp;
    }
    let inner = state.inner.lock().unwrap();
    match inner
        .tenants
        .values()
        .find(|t| t.phone_numbers.iter().any(|n| *n == phone))
    {
        Some(t) => Json(t.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response(),
    }
}

#[derive(Deserialize)]
struct LanguageBody {
    language: String,
    #[serde(default)]
    confidence: f32,
}

async fn update_language(
    State(state): State<MonitorState>,
    headers: HeaderMap,
    Path(tenant_id): Path<String>,
    body: Result<Json<LanguageBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !state.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized"}))).into_response();
    }
    let Ok(Json(body)) = body else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "bad_body"}))).into_response();
    };
    if let Some(resp) = state.fault().await {
        return resp;
    }
    let mut inner = state.inner.lock().unwrap();
    let Some(t) = inner.tenants.get_mut(&tenant_id) else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"}))).into_response();
    };
    t.language_preference = Some(body.language.clone());
    inner.stats.language_updates.push(LanguageUpdate {
        tenant_id,
        language: body.language,
        confidence: body.confidence,
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn seed(State(state): State<MonitorState>, Json(tenants): Json<Vec<Tenant>>) -> StatusCode {
    state.seed(tenants);
    StatusCode::NO_CONTENT
}

async fn faults(State(state): State<MonitorState>, Json(f): Json<Faults>) -> StatusCode {
    state.set_faults(f);
    StatusCode::NO_CONTENT
}

async fn stats(State(state): State<MonitorState>) -> Json<Stats> {
    Json(state.stats())
}

async fn reset(State(state): State<MonitorState>) -> StatusCode {
    state.reset();
    StatusCode::NO_CONTENT
}

/// The Monitor's routes plus its control API, ready to merge into a larger simulator.
pub fn monitor_router(state: MonitorState) -> Router {
    Router::new()
        .route("/tenants/lookup", get(lookup))
        .route("/tenants/{tenant_id}/language", put(update_language))
        .route("/_sim/monitor/tenants", post(seed))
        .route("/_sim/monitor/faults", post(faults))
        .route("/_sim/monitor/stats", get(stats))
        .route("/_sim/monitor/reset", post(reset))
        .with_state(state)
}

/// A few realistic demo tenants (en, es, pt; one with two numbers).
pub fn demo_tenants() -> Vec<Tenant> {
    let t = |id: &str, name: &str, numbers: &[&str], lang: &str| Tenant {
        tenant_id: id.into(),
        name: Some(name.into()),
        phone_numbers: numbers.iter().map(|s| s.to_string()).collect(),
        language_preference: Some(lang.into()),
    };
    vec![
        t("t-1001", "Maria Gonzalez", &["+15551230001"], "es"),
        t("t-1002", "Ana Souza", &["+15551230002", "(555) 123-0012"], "pt"),
        t("t-1003", "James Carter", &["555-123-0003"], "en"),
        t("t-1004", "Lucia Fernandez", &["+15551230004"], "es"),
    ]
}

pub struct MonitorSim;

/// A running simulated Monitor; stops when dropped.
pub struct MonitorSimHandle {
    addr: SocketAddr,
    state: MonitorState,
    stop: CancellationToken,
}

impl MonitorSim {
    pub async fn start(bind: SocketAddr) -> anyhow::Result<MonitorSimHandle> {
        Self::start_with_key(bind, None).await
    }

    pub async fn start_with_key(
        bind: SocketAddr,
        api_key: Option<String>,
    ) -> anyhow::Result<MonitorSimHandle> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = MonitorState::new(api_key);
        let stop = CancellationToken::new();
        let app = monitor_router(state.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(MonitorSimHandle { addr, state, stop })
    }
}

impl MonitorSimHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn seed(&self, tenants: Vec<Tenant>) {
        self.state.seed(tenants);
    }
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }
    pub fn reset(&self) {
        self.state.reset();
    }
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl Drop for MonitorSimHandle {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
