//! The ingress's one error type, mapped to stable JSON `{"code", "detail"}`. Server-side failures
//! are logged here and answered without internals.

use std::collections::BTreeMap;

use axum::{
    Json,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Serialize;

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(
    as = ApiError,
    example = json!({"code": "invalid_request", "detail": "the request has invalid fields",
                     "errors": {"to": "is required"}})
)]
pub struct ErrorBody {
    /// Stable, machine-readable: `malformed_body`, `missing_field`, `invalid_request`,
    /// `invalid_limit`, `invalid_cursor`, `invalid_idempotency_key`, `unknown_status`,
    /// `unauthorized`, `forbidden`, `unscoped_admin_only`, `not_found`, `number_claimed`, `recipient_opted_out`, `idempotency_key_in_use`,
    /// `route_exists`, `idempotency_key_reused`, `conversation_mismatch`, `payload_too_large`,
    /// `invalid_path`, `invalid_query`, `invalid_text`, `rate_limited`, `request_timeout`,
    /// `unavailable`, `commit_unknown`, `internal`.
    pub code: &'static str,
    /// For people; may change.
    pub detail: String,
    /// `invalid_request` only: a message per invalid field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest { code: &'static str, detail: String },
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    /// 400 with a message per invalid field.
    #[error("the request has invalid fields")]
    Validation(Vec<(&'static str, String)>),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    NotFound(&'static str),
    /// A global resource (default or workflow routes, keys without a tenant, service-wide
    /// figures) asked for with a tenant-scoped key.
    #[error("only an admin key without a tenant may do this")]
    UnscopedOnly,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A webhook source over its invalid-signature limit.
    #[error(
        "too many invalid signatures from this source; retry in {} s",
        retry_after_secs(*retry_after)
    )]
    RateLimited { retry_after: std::time::Duration },
    #[error("the request was not completed in time")]
    RequestTimeout,
    #[error("database unavailable")]
    Unavailable,
    /// The connection failed during COMMIT: the change may or may not be stored.
    #[error(
        "the database connection was lost while committing, so the request may have been applied: \
         retry with the same Idempotency-Key to get its answer without applying it twice"
    )]
    CommitUnknown,
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::Validation(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::UnscopedOnly => (StatusCode::FORBIDDEN, "unscoped_admin_only"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Self::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Self::CommitUnknown => (StatusCode::SERVICE_UNAVAILABLE, "commit_unknown"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        shared::pool_mode::observe(&err);
        // Postgres refuses U+0000 in text (22021) and in JSON (22P05): the client's text, so a
        // 400 for every field and path at once; the transaction is rolled back.
        if let sqlx::Error::Database(db) = &err
            && matches!(db.code().as_deref(), Some("22021" | "22P05"))
        {
            return Self::bad_request(
                "invalid_text",
                "text must not contain the NUL character (U+0000)",
            );
        }
        if shared::db::is_unavailable(&err) {
            tracing::warn!(error = %err, "database unavailable");
            Self::Unavailable
        } else {
            Self::Internal(err.into())
        }
    }
}

/// Commits `tx`. The server refusing the COMMIT (a constraint checked at commit, a serialisation
/// failure) means nothing was stored and maps like any database error; any other failure (the
/// connection lost with the COMMIT sent) leaves the outcome unknown: 503 `commit_unknown`, never a
/// 500, which promises that nothing was stored.
pub async fn commit(tx: sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), ApiError> {
    match tx.commit().await {
        Ok(()) => Ok(()),
        Err(e @ sqlx::Error::Database(_)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(error = %e, "commit outcome unknown");
            Err(ApiError::CommitUnknown)
        }
    }
}

/// A job push fails like the database under it: unreachable is 503 (nothing was committed, retry),
/// anything else 500 (nothing was committed either: the push is inside the transaction).
impl From<apalis_postgres::Error> for ApiError {
    fn from(err: apalis_postgres::Error) -> Self {
        match err {
            apalis_postgres::Error::Database(e) => e.into(),
            other => Self::Internal(other.into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let body = match &self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                ErrorBody {
                    code,
                    detail: "internal error".into(),
                    errors: None,
                }
            }
            Self::Validation(fields) => ErrorBody {
                code,
                detail: self.to_string(),
                errors: Some(
                    fields
                        .iter()
                        .map(|(f, m)| ((*f).to_owned(), m.clone()))
                        .collect(),
                ),
            },
            _ => ErrorBody {
                code,
                detail: self.to_string(),
                errors: None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("5"));
        }
        if let Self::RateLimited { retry_after } = self {
            response
                .headers_mut()
                .insert("retry-after", retry_after_secs(retry_after).into());
        }
        response
    }
}

/// Whole seconds for `Retry-After`, rounded up and at least 1.
fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_errors_map_like_the_database_under_them() {
        let table: Vec<(apalis_postgres::Error, StatusCode)> = vec![
            (
                apalis_postgres::Error::Database(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                apalis_postgres::Error::Database(sqlx::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))),
                StatusCode::SERVICE_UNAVAILABLE,
            ),
            (
                apalis_postgres::Error::Database(sqlx::Error::RowNotFound),
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
            (
                apalis_postgres::Error::WorkerOutOfSync,
                StatusCode::INTERNAL_SERVER_ERROR,
            ),
        ];
        for (err, want) in table {
            let shown = format!("{err}");
            let response = ApiError::from(err).into_response();
            assert_eq!(response.status(), want, "{shown}");
            if want == StatusCode::SERVICE_UNAVAILABLE {
                assert!(response.headers().contains_key("retry-after"));
            }
        }
    }
}
