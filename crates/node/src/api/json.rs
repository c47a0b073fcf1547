//! Bodies: plain JSON for the API's own envelopes, DAG-JSON for document
//! fields, so links (`{"/": "bafy..."}`) and bytes (`{"/": {"bytes": "..."}}`)
//! round-trip exactly.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use ecomesh_sync::Value;
use ecomesh_types::{ContentId, Map};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Largest JSON body any route reads, in bytes (`body_too_large` beyond it).
pub const MAX_JSON_BODY: usize = 1 << 20;

/// A JSON body of at most [`MAX_JSON_BODY`] bytes, deserialized into `T`.
///
/// Refuses oversized bodies with 413 `body_too_large` and malformed ones with
/// 400 `bad_json`, naming the position of the error.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_limited(req, MAX_JSON_BODY).await?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::bad_json(format!("the body is not the JSON this route takes: {e}"))
        })
    }
}

/// Reads a whole body of at most `limit` bytes.
///
/// A declared `Content-Length` over the limit is refused before any of the
/// body is read, so a client that waits for `100 Continue` gets the 413 at once
/// instead of a connection closed under its upload.
pub(crate) async fn read_limited(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                ApiError::too_large(limit)
            } else {
                ApiError::bad_request(format!("reading the body: {e}"))
            }
        })
}

/// Document fields from a JSON object in DAG-JSON form.
pub fn fields_from_json(json: &serde_json::Value) -> Result<Map, ApiError> {
    let text = json.to_string();
    match ecomesh_wire::from_dag_json(&text) {
        Ok(Value::Map(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_json("document fields must be a JSON object")),
        Err(e) => Err(ApiError::bad_json(format!(
            "the fields are not valid DAG-JSON: {e}"
        ))),
    }
}

/// A value as DAG-JSON, embedded in a JSON envelope.
pub fn value_to_json(value: &Value) -> Result<serde_json::Value, ApiError> {
    let text = ecomesh_wire::to_dag_json(value)
        .map_err(|e| ApiError::internal(format!("encoding DAG-JSON: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ApiError::internal(format!("re-reading DAG-JSON: {e}")))
}

/// Document fields as a DAG-JSON object.
pub fn fields_to_json(fields: &Map) -> Result<serde_json::Value, ApiError> {
    value_to_json(&Value::Map(fields.clone()))
}

/// A CID as a DAG-JSON link: `{"/": "bafy..."}`.
pub fn cid_json(cid: &ContentId) -> serde_json::Value {
    serde_json::json!({ "/": cid_text(cid) })
}

/// A CID as its multibase (base32) text.
pub fn cid_text(cid: &ContentId) -> String {
    ecomesh_wire::from_content_id(cid)
        .map(|c| ecomesh_wire::cid_to_text(&c))
        .unwrap_or_default()
}
