//! What the REST modules ([`docs`](super::docs), [`blobs`](super::blobs),
//! [`node_info`](super::node_info), [`relations`](super::relations)) share: their route tables, extractors
//! whose rejections are typed [`ApiError`]s, name checks, and the mapping of
//! the node's errors.

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::MethodRouter;
use ecomesh_sync::SyncError;
use ecomesh_types::WriteResult;
use serde::de::DeserializeOwned;

use super::ApiState;
use super::error::ApiError;
use super::json::{cid_json, cid_text};

/// Longest collection name or document id, in bytes (`invalid_name` beyond it).
pub const MAX_NAME: usize = 256;

/// One route: its method, its path under `/api/v1` and its handler.
pub(crate) struct Endpoint {
    pub(crate) method: &'static str,
    pub(crate) path: &'static str,
    pub(crate) handler: MethodRouter<Arc<ApiState>>,
}

/// An [`Endpoint`].
pub(crate) fn ep(
    method: &'static str,
    path: &'static str,
    handler: MethodRouter<Arc<ApiState>>,
) -> Endpoint {
    Endpoint {
        method,
        path,
        handler,
    }
}

/// The router of `endpoints` (several methods on one path merge).
pub(crate) fn build(endpoints: Vec<Endpoint>) -> Router<Arc<ApiState>> {
    endpoints
        .into_iter()
        .fold(Router::new(), |r, e| r.route(e.path, e.handler))
}

/// The REST routes: documents, blobs and the node's state.
pub(crate) fn routes() -> Router<Arc<ApiState>> {
    super::docs::routes()
        .merge(super::blobs::routes())
        .merge(super::node_info::routes())
        .merge(super::relations::routes())
}

/// Every REST route this module family registers, as `(METHOD, /api/v1/...)`:
/// what `docs/api.md` must show an example of.
pub fn rest_routes() -> Vec<(&'static str, String)> {
    [
        super::docs::endpoints(),
        super::blobs::endpoints(),
        super::node_info::endpoints(),
        super::relations::endpoints(),
    ]
    .into_iter()
    .flatten()
    .map(|e| (e.method, format!("/api/v1{}", e.path)))
    .collect()
}

/// Path parameters; a malformed path is a typed 400 `bad_request`.
#[derive(Debug)]
pub(crate) struct PathParams<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| PathParams(t))
            .map_err(|e| ApiError::bad_request(format!("the path: {}", e.body_text())))
    }
}

/// Query-string parameters; malformed ones are a typed 400 `bad_request`.
#[derive(Debug)]
pub(crate) struct Params<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| Params(t))
            .map_err(|e| ApiError::bad_request(format!("the query string: {}", e.body_text())))
    }
}

/// Checks a collection name or document id: 1 to [`MAX_NAME`] bytes, no
/// control characters. 400 `invalid_name` otherwise.
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    let bad = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_name",
            format!("{what} {why}; names are 1 to {MAX_NAME} bytes without control characters"),
        )
    };
    if name.is_empty() {
        return Err(bad("is empty".into()));
    }
    if name.len() > MAX_NAME {
        return Err(bad(format!("is {} bytes", name.len())));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("contains a control character".into()));
    }
    Ok(())
}

/// The node's errors as API errors: a missing document or version is 404
/// `not_found`, a bad argument 400 `invalid_argument`, the rest as
/// [`ApiError::from`] maps them.
pub(crate) fn sync_err(e: SyncError) -> ApiError {
    use ecomesh_sync::StoreError;
    use ecomesh_types::Error as TypesError;
    match &e {
        SyncError::Store(StoreError::NotFound { .. })
        | SyncError::Storage(TypesError::NotFound { .. })
        | SyncError::Store(StoreError::UnknownVersion(_)) => ApiError::not_found(e.to_string()),
        SyncError::Store(StoreError::InvalidArgument(_))
        | SyncError::Storage(TypesError::InvalidArgument(_)) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", e.to_string())
        }
        _ => ApiError::from(e),
    }
}

/// A CID from its text: 400 `bad_cid` when it is not one.
pub(crate) fn parse_cid(text: &str) -> Result<ecomesh_types::ContentId, ApiError> {
    if text.len() > 512 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_cid",
            "a CID is far shorter than this",
        ));
    }
    ecomesh_wire::cid::parse_content_id(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_cid",
            format!("{text:?} is not a CID: {e}"),
        )
    })
}

/// A write's answer: `{"version": link|null, "root_cid": "bafy..."}`.
pub(crate) fn written(state: &ApiState, w: &WriteResult) -> Result<serde_json::Value, ApiError> {
    let root = state.node().root_cid().map_err(sync_err)?;
    Ok(serde_json::json!({
        "version": w.version.as_ref().map(cid_json),
        "root_cid": cid_text(&root),
    }))
}
