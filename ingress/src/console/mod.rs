//! The operator console at `/console`: server-rendered pages for what operators reach for when a
//! tenant says "I never got your text" or "you never answered me" (a number's timeline), and at
//! 3 a.m. (the queues' health), plus the quarantine and the opt-out ledger. No script; the one
//! stylesheet is built into the binary.
//!
//! Sign-in takes an API key (with the `read` scope) and turns it into a session cookie (HttpOnly,
//! SameSite=Strict, Secure when PUBLIC_URL is https, 8 hours); the session ends earlier when its
//! key is revoked or expires, checked on every request. Every form carries the session's CSRF
//! token. A tenant-scoped key sees only its tenant, through the same functions as the API; the
//! quarantine's replays need the `admin` scope, as in the API.
//!
//! The console is for people, not programs: it is not part of `/openapi.json`.

mod health;
mod html;
mod ledger;
mod numbers;
mod quarantine;
mod session;

use axum::{
    Router,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};

use crate::{AppState, error::ApiError};

pub use session::Operator;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(index))
        .route(
            "/console/login",
            get(session::login_form).post(session::login),
        )
        .route("/console/logout", post(session::logout))
        .route("/console/numbers", get(numbers::page))
        .route("/console/messages/{id}", get(numbers::message))
        .route("/console/quarantine", get(quarantine::page))
        .route(
            "/console/quarantine/{id}/replay",
            post(quarantine::replay_one),
        )
        .route(
            "/console/quarantine/replay-all",
            get(quarantine::confirm_all).post(quarantine::replay_all),
        )
        .route("/console/opt-outs", get(ledger::page))
        .route("/console/health", get(health::page))
        .route("/console/assets/console.css", get(stylesheet))
}

async fn index(_: Operator) -> Redirect {
    Redirect::to("/console/numbers")
}

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("console.css"),
    )
}

/// Why a console request was not answered with its page.
#[derive(Debug)]
pub enum ConsoleError {
    /// No live session: to the sign-in page.
    SignIn,
    /// A form without the session's CSRF token.
    Forged,
    /// Everything the API would answer with an error.
    Api(ApiError),
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> Self {
        Self::Api(e.into())
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        match self {
            Self::SignIn => Redirect::to("/console/login").into_response(),
            Self::Forged => html::error_page(
                StatusCode::FORBIDDEN,
                "This form has expired or did not come from this console. Go back, reload the page and try again.",
            ),
            Self::Api(e) => {
                let (status, _) = e.status_and_code();
                let detail = match &e {
                    ApiError::Internal(err) => {
                        tracing::error!(error = ?err, "console request failed");
                        "Something went wrong on our side; nothing was changed.".to_owned()
                    }
                    ApiError::Validation(fields) => fields
                        .iter()
                        .map(|(f, m)| format!("{f}: {m}"))
                        .collect::<Vec<_>>()
                        .join("; "),
                    other => other.to_string(),
                };
                let mut response = html::error_page(status, &detail);
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, "5".parse().expect("a header value"));
                }
                response
            }
        }
    }
}
