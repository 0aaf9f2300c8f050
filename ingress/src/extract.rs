//! axum's `Path` and `Query` with their rejections as our JSON errors: a malformed id or query
//! gets `400 {"code": "invalid_path" | "invalid_query", ...}` instead of axum's plain text.

use axum::extract::{
    FromRequestParts,
    rejection::{JsonRejection, PathRejection, QueryRejection},
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

/// A JSON body's rejection: over the size limit is 413 like every other body, else 400.
pub fn json_rejection(e: JsonRejection, limit: usize) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge { limit }
    } else {
        ApiError::bad_request("malformed_body", e.body_text())
    }
}
