//! The HTTP server around the router: hyper's HTTP/1 with a deadline on request headers, the
//! peer's address on every request (for the per-source webhook limit), a deadline on the whole
//! request, and graceful shutdown. The binary and the tests both serve through here.

use std::{io, time::Duration};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{AppState, error::ApiError};

/// Serves on an already bound listener until `shutdown` is cancelled, then stops accepting and
/// finishes in-flight requests (idle keep-alive connections close at once).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = Limits::of(&state);
    serve_app(listener, crate::router(state), limits, shutdown).await
}

/// The rolling-upgrade order on SIGTERM (`signal`): not ready at once, still serving for
/// `SHUTDOWN_DRAIN_SECS` so load balancers take the replica out of rotation (every answer
/// meanwhile says `Connection: close`, moving keep-alive clients elsewhere), then `shutdown`:
/// no new connections, requests in flight finished within `SHUTDOWN_TIMEOUT_SECS`.
pub async fn drain_on(signal: CancellationToken, state: AppState, shutdown: CancellationToken) {
    signal.cancelled().await;
    state.draining.cancel();
    let drain = state.cfg.shutdown_drain;
    tracing::info!(
        drain_secs = drain.as_secs(),
        "draining: not ready, still serving until load balancers stop sending"
    );
    tokio::select! {
        () = tokio::time::sleep(drain) => {}
        () = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// While draining, every answer closes its connection: a keep-alive client's next request
/// opens a new connection, which the load balancer sends to a replica still in rotation.
pub async fn close_while_draining(
    State(draining): State<CancellationToken>,
    req: Request,
    next: Next,
) -> Response {
    let mut resp = next.run(req).await;
    if draining.is_cancelled() {
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// Per-connection and shutdown limits of a listener.
#[derive(Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    shutdown_timeout: Duration,
}

impl Limits {
    fn of(state: &AppState) -> Self {
        Self {
            header_timeout: state.cfg.request_header_timeout,
            shutdown_timeout: state.cfg.shutdown_timeout,
        }
    }
}

/// Serves the operations listener (`METRICS_ADDR`): metrics and detailed readiness, no key.
pub async fn serve_operations(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = Limits::of(&state);
    serve_app(listener, crate::operations_router(state), limits, shutdown).await
}

async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that trickles its headers (slowloris) is cut off. Hyper applies the same deadline
    // to an idle keep-alive connection waiting for its next request.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    accept_failed(err, &shutdown).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Header timeouts and clients that hang up land here; neither is ours to report.
            if let Err(err) = conn.await {
                tracing::debug!(error = %err, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Bounded: a client that never finishes its request must not hold the process forever.
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            timeout_secs = limits.shutdown_timeout.as_secs(),
            "requests still in flight at the shutdown timeout: their connections are closed"
        );
    }
    Ok(())
}

/// A failed accept: a connection that died in the backlog is skipped; anything else (out of file
/// descriptors) is logged and retried after a pause instead of spinning.
async fn accept_failed(err: io::Error, shutdown: &CancellationToken) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accepting a connection failed; retrying in 1 s");
    tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
        () = shutdown.cancelled() => {}
    }
}

/// Middleware: a request not answered within REQUEST_TIMEOUT_MS of its headers (a body sent
/// slowly, mostly) is answered 408 and its connection closed, so it cannot hold a task forever.
pub async fn deadline(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::info!(
                timeout_ms = limit.as_millis() as u64,
                "request not completed in time"
            );
            let mut response = ApiError::RequestTimeout.into_response();
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

/// Middleware: every answer says `X-Content-Type-Options: nosniff` (a browser never guesses a
/// type other than the one declared), and answers that do not choose their own caching carry
/// `Cache-Control: no-store` (they hold message text, numbers and keys that no cache may keep).
pub async fn security_headers(req: Request, next: Next) -> Response {
    use axum::http::{HeaderValue, header};
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
