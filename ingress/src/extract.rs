//! Request parts turned into our JSON errors: `Path` and `Query` whose malformed id or query
//! gets `400 {"code": "invalid_path" | "invalid_query", ...}` instead of axum's plain text, and
//! bodies that cannot be read (413 when too large, else 400 `malformed_body`).

use axum::extract::{
    FromRequestParts,
    rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection},
};
use axum::http::StatusCode;

use crate::error::ApiError;

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::bad_request("invalid_path", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::bad_request("invalid_query", e.body_text())
    }
}

/// A body that could not be read: over MAX_BODY_BYTES is 413, anything else 400.
pub fn body_rejection(e: BytesRejection, limit: usize) -> ApiError {
    unreadable_body(e.status(), e.body_text(), limit)
}

/// As [`body_rejection`], for a JSON body (whose rejection wraps the bytes' one).
pub fn json_rejection(e: JsonRejection, limit: usize) -> ApiError {
    unreadable_body(e.status(), e.body_text(), limit)
}

fn unreadable_body(status: StatusCode, detail: String, limit: usize) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request("malformed_body", detail)
    }
}
