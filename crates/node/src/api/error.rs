//! The API's one error shape: a status code, a machine-readable kind and a
//! human message, sent as `{"error": {"kind": "...", "message": "..."}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ecomesh_sync::SyncError;

/// An error answered to an API client.
///
/// `kind` is stable (clients match on it); `message` is for people and may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable, machine-readable name (`snake_case`), listed in `docs/api.md`.
    pub kind: &'static str,
    /// What went wrong and, where there is one, the fix.
    pub message: String,
}

impl ApiError {
    /// An error of `kind` with `status`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    /// 400 `bad_request`: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 400 `bad_json`: the body is not the JSON (DAG-JSON) the route expects.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_json", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413 `body_too_large`.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is larger than this route's limit of {limit} bytes"),
        )
    }

    /// 500 `internal`: the node failed; the message says how.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.kind,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "kind": self.kind, "message": self.message }
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<SyncError> for ApiError {
    fn from(e: SyncError) -> Self {
        let message = e.to_string();
        match e {
            SyncError::InvalidArgument(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
            }
            SyncError::UnknownKey(_) => Self::new(StatusCode::CONFLICT, "unknown_key", message),
            SyncError::OutboxFull { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "outbox_full", message)
            }
            SyncError::Timeout(_) => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            SyncError::Stopped => Self::new(StatusCode::SERVICE_UNAVAILABLE, "stopped", message),
            SyncError::Wire(_) => Self::new(StatusCode::BAD_REQUEST, "bad_value", message),
            _ => Self::internal(message),
        }
    }
}

/// Results of API handlers.
pub type ApiResult<T> = Result<T, ApiError>;
