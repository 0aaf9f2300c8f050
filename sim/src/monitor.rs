//! Collections Monitor simulator.
//!
//! # The contract we expect from a real Monitor
//!
//! - `GET /tenants/lookup?phone=<value>`: `value` is URL-encoded and may be any written form of
//!   the number (`+14155550101`, `(415) 555-0101`, `4155550101`, ...). Answers
//!   - `200` `{"tenant_id":"t-1001","name":"Ana Souza","phone_numbers":["+14155550101"],
//!     "language_preference":"pt"}` (`language_preference` may be `null`), or
//!   - `404` `{"error":"not_found"}`.
//! - `PUT /tenants/{tenant_id}/language` with `{"language":"es","confidence":0.93}`: `204`, or
//!   `404` `{"error":"not_found"}` for an unknown tenant.
//! - With an API key configured, every request carries `Authorization: Bearer <key>`; otherwise
//!   `401` `{"error":"unauthorized"}`.
//! - Errors are JSON `{"error": "<code>"}`; `5xx`, `429` and timeouts are worth retrying.
//!
//! # What the simulator adds
//!
//! Lookups match the decoded `phone` value EXACTLY against each number of each tenant as it was
//! seeded (no normalisation), so tests can see which written forms a caller tries. Remember that
//! a raw `+` in a query string decodes to a space: callers must encode it (`%2B`).
//!
//! Control API for tests (never affected by injected faults or the API key):
//! - `POST /_sim/monitor/tenants` with a JSON array of `{tenant_id, name?, phone_numbers,
//!   language_preference?}`: upsert by `tenant_id`; `204`.
//! - `GET /_sim/monitor/tenants`: the stored tenants.
//! - `POST /_sim/monitor/faults` with `{"latency_ms": u64, "fail_next": u32, "fail_status": u16,
//!   "timeout_next": u32, "down": bool}` (all optional; replaces the current faults): `latency_ms`
//!   delays every Monitor request; the next `fail_next` requests answer `fail_status` (default
//!   `503`); the next `timeout_next` requests hang for 30 s so callers time out; `down` answers
//!   `503` to everything until set back to `false`. `GET` shows the current faults and counters.
//! - `GET /_sim/monitor/stats`: `{"requests": n, "lookups": n, "lookup_phones": [every phone
//!   value queried, in order], "language_updates": [{"tenant_id","language","confidence"}],
//!   "unauthorized": n}`. Requests are recorded whatever their answer (faults, 401); language
//!   updates only once applied (`204`).
//! - `POST /_sim/monitor/reset`: clears faults and stats, keeps tenants.
//!
//! Order of processing for a Monitor request: record, latency, injected fault, API key, request
//! validation, answer. A down or failing Monitor answers before it looks at credentials.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, PathRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::watch;

use crate::server::{self, SimServer, bad_request};

/// How long a `timeout_next` request hangs: longer than any sane client timeout.
pub const HANG: Duration = Duration::from_secs(30);

/// A tenant as the Monitor returns it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Tenant {
    pub tenant_id: String,
    #[serde(default)]
    pub name: Option<String>,
    /// Stored exactly as written; lookups match these strings byte for byte.
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    #[serde(default)]
    pub language_preference: Option<String>,
}

/// Injected misbehaviour. Setting faults replaces all of them. Unknown fields are refused so a
/// misspelt fault does not silently do nothing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every Monitor request.
    pub latency_ms: u64,
    /// The next N requests answer `fail_status`.
    pub fail_next: u32,
    /// Status for `fail_next` (`503` by default).
    pub fail_status: u16,
    /// The next N requests hang for [`HANG`] (callers time out).
    pub timeout_next: u32,
    /// Answer 503 to everything until cleared.
    pub down: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            fail_next: 0,
            fail_status: 503,
            timeout_next: 0,
            down: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LanguageUpdate {
    pub tenant_id: String,
    pub language: String,
    pub confidence: f32,
}

/// What the simulated Monitor was asked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Stats {
    /// Monitor requests of any kind (not control requests), whatever their answer.
    pub requests: u64,
    pub lookups: u64,
    /// Every `phone` value looked up, decoded, in arrival order.
    pub lookup_phones: Vec<String>,
    /// Updates applied (answered `204`), in order.
    pub language_updates: Vec<LanguageUpdate>,
    /// Requests refused with `401`.
    pub unauthorized: u64,
}

#[derive(Default)]
struct Inner {
    tenants: BTreeMap<String, Tenant>,
    faults: Faults,
    stats: Stats,
}

/// Shared state of one simulated Monitor; cheap to clone.
#[derive(Clone)]
pub struct MonitorState {
    inner: Arc<Mutex<Inner>>,
    api_key: Option<Arc<str>>,
    /// Set when the server stops, so hanging requests let go instead of delaying shutdown.
    closed: Arc<watch::Sender<bool>>,
}

impl Default for MonitorState {
    fn default() -> Self {
        Self::new(None)
    }
}

/// What an injected fault makes of a request.
enum Injected {
    Hang,
    Fail(StatusCode),
}

impl MonitorState {
    /// `api_key`: when set, Monitor requests need `Authorization: Bearer <key>`.
    pub fn new(api_key: Option<String>) -> Self {
        Self {
            inner: Arc::default(),
            api_key: api_key.filter(|k| !k.is_empty()).map(Arc::from),
            closed: Arc::new(watch::channel(false).0),
        }
    }

    /// A panic elsewhere must not turn every later request into a panic too.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Upserts tenants by `tenant_id`.
    pub fn seed(&self, tenants: impl IntoIterator<Item = Tenant>) {
        let mut inner = self.lock();
        for t in tenants {
            inner.tenants.insert(t.tenant_id.clone(), t);
        }
    }

    pub fn tenants(&self) -> Vec<Tenant> {
        self.lock().tenants.values().cloned().collect()
    }

    pub fn tenant(&self, tenant_id: &str) -> Option<Tenant> {
        self.lock().tenants.get(tenant_id).cloned()
    }

    /// Replaces the current faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The current faults, with what is left of the `*_next` counters.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Clears faults and stats; tenants stay.
    pub fn reset(&self) {
        let mut inner = self.lock();
        inner.faults = Faults::default();
        inner.stats = Stats::default();
    }

    /// Releases hanging requests now and makes later hangs return at once.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Applies latency and the next injected fault; `Some(response)` when the request must fail.
    async fn fault(&self) -> Option<Response> {
        let (latency, injected) = {
            let mut inner = self.lock();
            let f = &mut inner.faults;
            let injected = if f.down {
                Some(Injected::Fail(StatusCode::SERVICE_UNAVAILABLE))
            } else if f.timeout_next > 0 {
                f.timeout_next -= 1;
                Some(Injected::Hang)
            } else if f.fail_next > 0 {
                f.fail_next -= 1;
                let status =
                    StatusCode::from_u16(f.fail_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                Some(Injected::Fail(status))
            } else {
                None
            };
            (f.latency_ms, injected)
        };
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        match injected? {
            Injected::Hang => {
                let mut closed = self.closed.subscribe();
                tokio::select! {
                    _ = tokio::time::sleep(HANG) => {}
                    _ = closed.wait_for(|c| *c) => {}
                }
                Some(error(StatusCode::GATEWAY_TIMEOUT, "injected_timeout"))
            }
            Injected::Fail(StatusCode::SERVICE_UNAVAILABLE) => {
                Some(error(StatusCode::SERVICE_UNAVAILABLE, "unavailable"))
            }
            Injected::Fail(status) => Some(error(status, "injected_failure")),
        }
    }

    /// `None` when the request may proceed, else the `401` to answer.
    fn check_key(&self, headers: &HeaderMap) -> Option<Response> {
        let key = self.api_key.as_deref()?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        if given == Some(key) {
            return None;
        }
        self.lock().stats.unauthorized += 1;
        Some(error(StatusCode::UNAUTHORIZED, "unauthorized"))
    }

    /// Record, latency, fault, key: the common front of every Monitor endpoint.
    async fn admit(&self, headers: &HeaderMap, lookup_phone: Option<&str>) -> Option<Response> {
        {
            let mut inner = self.lock();
            inner.stats.requests += 1;
            if let Some(phone) = lookup_phone {
                inner.stats.lookups += 1;
                inner.stats.lookup_phones.push(phone.to_owned());
            }
        }
        if let Some(resp) = self.fault().await {
            return Some(resp);
        }
        self.check_key(headers)
    }
}

/// `{"error": code}` with `status`.
fn error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

#[derive(Deserialize)]
struct LookupQuery {
    phone: Option<String>,
}

async fn lookup(
    State(state): State<MonitorState>,
    headers: HeaderMap,
    query: Result<Query<LookupQuery>, QueryRejection>,
) -> Response {
    let phone = match &query {
        Ok(Query(q)) => q.phone.as_deref(),
        Err(_) => None,
    };
    if let Some(resp) = state.admit(&headers, phone).await {
        return resp;
    }
    let phone = match query {
        Ok(Query(LookupQuery { phone: Some(p) })) => p,
        Ok(_) => return bad_request("missing_phone", "the phone query parameter is required"),
        Err(e) => return bad_request("bad_query", e.body_text()),
    };
    let inner = state.lock();
    let found = inner
        .tenants
        .values()
        .find(|t| t.phone_numbers.contains(&phone));
    match found {
        Some(t) => Json(t).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found"),
    }
}

#[derive(Deserialize)]
struct LanguageBody {
    language: String,
    confidence: f32,
}

async fn update_language(
    State(state): State<MonitorState>,
    headers: HeaderMap,
    tenant_id: Result<Path<String>, PathRejection>,
    body: Result<Json<LanguageBody>, JsonRejection>,
) -> Response {
    if let Some(resp) = state.admit(&headers, None).await {
        return resp;
    }
    let tenant_id = match tenant_id {
        Ok(Path(id)) => id,
        Err(e) => return bad_request("bad_path", e.body_text()),
    };
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_request("bad_body", e.body_text()),
    };
    if body.language.trim().is_empty() {
        return bad_request("bad_body", "language must not be empty");
    }
    if !(0.0..=1.0).contains(&body.confidence) {
        return bad_request("bad_body", "confidence must be between 0 and 1");
    }
    let mut inner = state.lock();
    let Some(t) = inner.tenants.get_mut(&tenant_id) else {
        return error(StatusCode::NOT_FOUND, "not_found");
    };
    t.language_preference = Some(body.language.clone());
    inner.stats.language_updates.push(LanguageUpdate {
        tenant_id,
        language: body.language,
        confidence: body.confidence,
    });
    StatusCode::NO_CONTENT.into_response()
}

async fn seed(
    State(state): State<MonitorState>,
    body: Result<Json<Vec<Tenant>>, JsonRejection>,
) -> Response {
    let tenants = match body {
        Ok(Json(t)) => t,
        Err(e) => return bad_request("bad_body", e.body_text()),
    };
    if tenants.iter().any(|t| t.tenant_id.trim().is_empty()) {
        return bad_request("bad_body", "tenant_id must not be empty");
    }
    state.seed(tenants);
    StatusCode::NO_CONTENT.into_response()
}

async fn list_tenants(State(state): State<MonitorState>) -> Json<Vec<Tenant>> {
    Json(state.tenants())
}

impl server::Controlled for MonitorState {
    type Faults = Faults;
    type Stats = Stats;
    fn set_faults(&self, faults: Faults) {
        MonitorState::set_faults(self, faults)
    }
    fn faults(&self) -> Faults {
        MonitorState::faults(self)
    }
    fn stats(&self) -> Stats {
        MonitorState::stats(self)
    }
    fn reset(&self) {
        MonitorState::reset(self)
    }
    fn fail_status(faults: &Faults) -> u16 {
        faults.fail_status
    }
}

/// The Monitor's routes plus its control API. It sets no fallback, so it merges into a larger
/// simulator (see [`server::app`]).
pub fn monitor_router(state: MonitorState) -> Router {
    Router::new()
        .route("/tenants/lookup", get(lookup))
        .route("/tenants/{tenant_id}/language", put(update_language))
        .route("/_sim/monitor/tenants", post(seed).get(list_tenants))
        .merge(server::control_routes::<MonitorState>("monitor"))
        .with_state(state)
}

/// Demo tenants in en, es and pt. Numbers are stored in written forms the worker's lookup
/// variants reach (E.164 or national), and one tenant has two numbers.
pub fn demo_tenants() -> Vec<Tenant> {
    let t = |id: &str, name: &str, numbers: &[&str], lang: Option<&str>| Tenant {
        tenant_id: id.into(),
        name: Some(name.into()),
        phone_numbers: numbers.iter().map(|s| s.to_string()).collect(),
        language_preference: lang.map(str::to_owned),
    };
    vec![
        t("t-1001", "Maria Gonzalez", &["+14155550101"], Some("es")),
        t(
            "t-1002",
            "Ana Souza",
            &["+14155550102", "(415) 555-0112"],
            Some("pt"),
        ),
        t("t-1003", "James Carter", &["(415) 555-0103"], Some("en")),
        t("t-1004", "Lucía Fernández", &["+14155550104"], Some("es")),
        t("t-1005", "João Pereira", &["+14155550105"], Some("pt")),
        t("t-1006", "Emily Nguyen", &["4155550106"], None),
    ]
}

/// Starts simulated Monitors.
pub struct MonitorSim;

/// A running simulated Monitor; stops when dropped.
pub struct MonitorSimHandle {
    addr: SocketAddr,
    /// `None` only once `shutdown` has taken it.
    server: Option<SimServer>,
    state: MonitorState,
}

impl MonitorSim {
    /// Serves a Monitor without an API key on `bind` (`127.0.0.1:0` for tests).
    pub async fn start(bind: SocketAddr) -> anyhow::Result<MonitorSimHandle> {
        Self::start_with_key(bind, None).await
    }

    /// Serves a Monitor that requires `Authorization: Bearer <api_key>` when a key is given.
    pub async fn start_with_key(
        bind: SocketAddr,
        api_key: Option<String>,
    ) -> anyhow::Result<MonitorSimHandle> {
        let state = MonitorState::new(api_key);
        let server = SimServer::start(bind, server::app([monitor_router(state.clone())])).await?;
        Ok(MonitorSimHandle {
            addr: server.addr(),
            server: Some(server),
            state,
        })
    }
}

impl MonitorSimHandle {
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn state(&self) -> &MonitorState {
        &self.state
    }
    pub fn seed(&self, tenants: impl IntoIterator<Item = Tenant>) {
        self.state.seed(tenants);
    }
    pub fn tenants(&self) -> Vec<Tenant> {
        self.state.tenants()
    }
    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }
    pub fn faults(&self) -> Faults {
        self.state.faults()
    }
    pub fn stats(&self) -> Stats {
        self.state.stats()
    }
    pub fn reset(&self) {
        self.state.reset();
    }
    /// Stops accepting, releases hanging requests and waits (briefly) for the server to finish.
    pub async fn shutdown(mut self) {
        self.state.close();
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

impl Drop for MonitorSimHandle {
    fn drop(&mut self) {
        // The server, if still here, stops through its own Drop.
        self.state.close();
    }
}
