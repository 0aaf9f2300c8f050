//! Serving simulators over HTTP: one composable Axum app, a server handle that stops on drop, and
//! the `serve` entry point of the binary.

use std::{net::SocketAddr, time::Duration, time::Instant};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Request, State, rejection::JsonRejection},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    agent::{AgentState, agent_router},
    monitor::{MonitorState, demo_tenants, monitor_router},
    otlp::{OtlpState, otlp_router},
    twilio::{TwilioState, twilio_router},
};

/// How long `shutdown` waits for in-flight requests before cutting them.
const GRACE: Duration = Duration::from_secs(5);

/// Merges simulator routers (each without a fallback) into one app with `GET /_sim/health`, a
/// JSON 404 fallback and a request log line, e.g. `app([monitor_router(m), twilio_router(t),
/// agent_router(a)])`. More simulators are added by passing their routers here.
pub fn app(routers: impl IntoIterator<Item = Router>) -> Router {
    let mut app = Router::new().route("/_sim/health", get(health));
    for r in routers {
        app = app.merge(r);
    }
    app.fallback(not_found)
        .layer(middleware::from_fn(log_request))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"ok": true, "service": "sms-sim"}))
}

/// Under Twilio's API path, Twilio's own error shape (`{code, message, more_info, status}`, code
/// 20404), as a client of the real API sees for any unknown resource; elsewhere ours.
async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/2010-04-01/") {
        return crate::twilio::twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {} was not found", uri.path()),
        );
    }
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no_such_route"})),
    )
        .into_response()
}

/// One line per request (path only: queries can hold phone numbers), so a local run shows what
/// the services asked. Without a subscriber (tests) this costs next to nothing.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        %method,
        path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "sim request"
    );
    resp
}

/// A running HTTP server; stops accepting when dropped or shut down.
pub struct SimServer {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimServer {
    /// Binds `bind` (port 0 picks a free port) and serves `router` in a background task.
    pub async fn start(bind: SocketAddr, router: Router) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(bind)
            .await
            .with_context(|| format!("binding {bind}"))?;
        let addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    // Also resolves when the sender is gone.
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await
        });
        Ok(Self {
            addr,
            stop,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting and lets in-flight requests finish, waiting at most [`GRACE`].
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(GRACE, &mut task).await.is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Options of `sms-sim serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub bind: SocketAddr,
    /// When set, Monitor requests need `Authorization: Bearer <key>`.
    pub monitor_api_key: Option<String>,
    /// Start with [`demo_tenants`].
    pub seed_demo: bool,
    /// The simulated Twilio account: REST requests authenticate as `SID:token`, and status
    /// callbacks are signed with the token.
    pub twilio_account_sid: String,
    pub twilio_auth_token: String,
    /// Secret the agent simulator verifies `X-SMS-Signature` with (the routes' secret).
    pub agent_secret: String,
}

/// Serves the simulators (Monitor, Twilio REST and the agent on one port) until Ctrl-C or
/// SIGTERM.
pub async fn serve(opts: ServeOptions) -> anyhow::Result<()> {
    anyhow::ensure!(
        !opts.twilio_account_sid.is_empty() && !opts.twilio_auth_token.is_empty(),
        "the Twilio account SID and auth token must not be empty"
    );
    // An empty secret would make every signature trivially forgeable.
    anyhow::ensure!(
        !opts.agent_secret.is_empty(),
        "the agent secret must not be empty"
    );
    let monitor = MonitorState::new(opts.monitor_api_key.clone());
    if opts.seed_demo {
        monitor.seed(demo_tenants());
    }
    let twilio = TwilioState::new(opts.twilio_account_sid, opts.twilio_auth_token);
    let agent = AgentState::new(&opts.agent_secret);
    let server = SimServer::start(
        opts.bind,
        app([
            monitor_router(monitor.clone()),
            twilio_router(twilio.clone()),
            agent_router(agent.clone()),
            otlp_router(OtlpState::new()),
        ]),
    )
    .await?;
    tracing::info!(
        url = %server.base_url(),
        api_key = opts.monitor_api_key.is_some(),
        tenants = monitor.tenants().len(),
        "Collections Monitor simulator listening"
    );
    tracing::info!(
        api_base = %server.base_url(),
        account_sid = twilio.account_sid(),
        "Twilio REST simulator listening"
    );
    tracing::info!(
        echo = %format!("{}/agent/echo", server.base_url()),
        "agent simulator listening (modes: echo, silent, slow, fail, reject)"
    );
    tracing::info!(
        endpoint = %server.base_url(),
        "OTLP trace receiver listening (OTEL_EXPORTER_OTLP_ENDPOINT; spans at /_sim/otlp/spans)"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down");
    monitor.close();
    twilio.close();
    agent.close();
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

/// `{"error": code, "detail": ...}` with `400`: the control APIs' error shape.
pub(crate) fn bad_request(code: &str, detail: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": code, "detail": detail.to_string() })),
    )
        .into_response()
}

/// A simulator's state with the common control API: faults to set and read, stats, reset.
pub(crate) trait Controlled: Clone + Send + Sync + 'static {
    type Faults: Serialize + DeserializeOwned + Send + 'static;
    type Stats: Serialize + Send + 'static;
    fn set_faults(&self, faults: Self::Faults);
    fn faults(&self) -> Self::Faults;
    fn stats(&self) -> Self::Stats;
    fn reset(&self);
    /// The `fail_status` field, which must be a 4xx or 5xx status.
    fn fail_status(faults: &Self::Faults) -> u16;
}

/// `/_sim/{name}/faults` (POST replaces, GET reads), `/_sim/{name}/stats` and
/// `POST /_sim/{name}/reset`, for any [`Controlled`] simulator.
pub(crate) fn control_routes<S: Controlled>(name: &str) -> Router<S> {
    async fn set_faults<S: Controlled>(
        State(state): State<S>,
        body: Result<Json<Value>, JsonRejection>,
    ) -> Response {
        match parse_faults(body, S::fail_status) {
            Ok(faults) => {
                state.set_faults(faults);
                StatusCode::NO_CONTENT.into_response()
            }
            Err(detail) => bad_request("bad_body", detail),
        }
    }
    async fn get_faults<S: Controlled>(State(state): State<S>) -> Json<S::Faults> {
        Json(state.faults())
    }
    async fn stats<S: Controlled>(State(state): State<S>) -> Json<S::Stats> {
        Json(state.stats())
    }
    async fn reset<S: Controlled>(State(state): State<S>) -> StatusCode {
        state.reset();
        StatusCode::NO_CONTENT
    }
    Router::new()
        .route(
            &format!("/_sim/{name}/faults"),
            post(set_faults::<S>).get(get_faults::<S>),
        )
        .route(&format!("/_sim/{name}/stats"), get(stats::<S>))
        .route(&format!("/_sim/{name}/reset"), post(reset::<S>))
}

/// A control API's faults body: a JSON object of known fields whose `fail_status` (read by
/// `fail_status`) is a 4xx or 5xx status. Otherwise, why not (to answer as `bad_body`).
pub(crate) fn parse_faults<F: DeserializeOwned>(
    body: Result<Json<Value>, JsonRejection>,
    fail_status: impl FnOnce(&F) -> u16,
) -> Result<F, String> {
    let value = body.map_err(|e| e.body_text())?.0;
    // serde would take `[]` for an all-default struct; only an object is meant.
    if !value.is_object() {
        return Err("expected a JSON object".into());
    }
    let faults: F = serde_json::from_value(value).map_err(|e| e.to_string())?;
    if !(400..=599).contains(&fail_status(&faults)) {
        return Err("fail_status must be a 4xx or 5xx status".into());
    }
    Ok(faults)
}
