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
    let header_timeout = state.cfg.request_header_timeout;
    serve_app(listener, crate::router(state), header_timeout, shutdown).await
}

/// Serves the operations listener (`METRICS_ADDR`): metrics and detailed readiness, no key.
pub async fn serve_operations(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let header_timeout = state.cfg.request_header_timeout;
    serve_app(
        listener,
        crate::operations_router(state),
        header_timeout,
        shutdown,
    )
    .await
}

async fn serve_app(
    listener: TcpListener,
    app: axum::Router,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    // A client that trickles its headers (slowloris) is cut off. Hyper applies the same deadline
    // to an idle keep-alive connection waiting for its next request.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
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
    graceful.shutdown().await;
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
