//! Blobs: `/api/v1/blobs`. Uploads are read incrementally and refused past
//! [`MAX_BLOB`] without reading further; downloads honour one `Range`.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, head, post};
use ecomesh_sync::{BlobId, BlobInfo};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::ApiState;
use super::error::{ApiError, ApiResult};
use super::rest::{Endpoint, Params, PathParams, build, check_name, ep, sync_err};

/// Largest blob an upload may carry, in bytes (413 `body_too_large` beyond
/// it): the node holds a blob whole while storing it, and the pieces of
/// larger ones exceed peers' default reassembly limit.
pub const MAX_BLOB: u64 = crate::serve::MAX_BLOB_FILE;
/// Longest wait for the next piece of an upload's body (408 `timeout`).
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);
/// Most uploads read at once (503 `busy` beyond it): each holds up to
/// [`MAX_BLOB`] bytes in memory until stored.
pub const MAX_UPLOADS: usize = 4;
/// Most downloads answered at once (503 `busy` beyond it): each holds its
/// whole blob in memory.
pub const MAX_DOWNLOADS: usize = 8;

static UPLOADS: Semaphore = Semaphore::const_new(MAX_UPLOADS);
static DOWNLOADS: Semaphore = Semaphore::const_new(MAX_DOWNLOADS);

/// A transfer slot of `pool`, or 503 `busy`.
fn slot(pool: &'static Semaphore, what: &str, max: usize) -> ApiResult<SemaphorePermit<'static>> {
    pool.try_acquire().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!("{max} {what} are running, the most at once; retry when one ends"),
        )
    })
}

/// The collection of an upload that names none.
pub const DEFAULT_BLOB_COLLECTION: &str = "blobs";

/// The routes of this module.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep("GET", "/blobs", get(list)),
        ep("POST", "/blobs", post(upload)),
        ep("GET", "/blobs/{id}", get(download)),
        ep("HEAD", "/blobs/{id}", head(info)),
    ]
}

/// The router of this module.
pub(crate) fn routes() -> axum::Router<Arc<ApiState>> {
    build(endpoints())
}

fn blob_json(b: &BlobInfo) -> serde_json::Value {
    serde_json::json!({
        "id": b.id.to_text(),
        "collection": b.collection,
        "size": b.len,
        "encoding": b.encoding,
        "held": b.held,
        "pieces": b.pieces,
    })
}

fn blob_id(text: &str) -> ApiResult<BlobId> {
    if text.len() > 256 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_blob_id",
            "a blob id is far shorter than this",
        ));
    }
    BlobId::parse(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_blob_id",
            format!("{text:?} is not a blob id ({e}); take one from GET /api/v1/blobs"),
        )
    })
}

/// `GET /blobs`: every blob whose manifest this node holds.
async fn list(State(state): State<Arc<ApiState>>) -> ApiResult<Json<serde_json::Value>> {
    let blobs = state.node().blobs().map_err(sync_err)?;
    let rows: Vec<_> = blobs.iter().map(blob_json).collect();
    Ok(Json(serde_json::json!({ "blobs": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadParams {
    collection: Option<String>,
}

/// Reads a body of at most `limit` bytes piece by piece, refusing it as
/// soon as its declared or read length passes the limit.
async fn read_blob_body(req: Request, limit: u64) -> ApiResult<Vec<u8>> {
    let too_large = || ApiError::too_large(usize::try_from(limit).unwrap_or(usize::MAX));
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    // Reserve what the client declared (already bounded), not more.
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(64 << 20));
    let mut stream = req.into_body().into_data_stream();
    loop {
        let next = tokio::time::timeout(UPLOAD_IDLE, stream.next())
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!("no body bytes for {} s", UPLOAD_IDLE.as_secs()),
                )
            })?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if bytes.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// `POST /blobs?collection=c`: the body (any bytes) becomes a blob of `c`.
async fn upload(
    State(state): State<Arc<ApiState>>,
    Params(p): Params<UploadParams>,
    req: Request,
) -> ApiResult<Response> {
    let collection = p
        .collection
        .unwrap_or_else(|| DEFAULT_BLOB_COLLECTION.to_owned());
    check_name("the collection name", &collection)?;
    let _slot = slot(&UPLOADS, "uploads", MAX_UPLOADS)?;
    let bytes = read_blob_body(req, MAX_BLOB).await?;
    let node = state.node().clone();
    let info = tokio::task::spawn_blocking(move || node.put_blob(&collection, &bytes))
        .await
        .map_err(|e| ApiError::internal(format!("storing the blob: {e}")))?
        .map_err(sync_err)?;
    Ok((StatusCode::CREATED, Json(blob_json(&info))).into_response())
}

/// A byte range of a blob of `len` bytes: `(first, last)` inclusive.
type Span = (u64, u64);

/// Parses one `Range: bytes=...` (`a-b`, `a-`, `-n`) against `len`: `None`
/// without the header, 400 `bad_request` when malformed, 416
/// `range_not_satisfiable` when outside the blob or when several ranges are asked.
fn range(headers: &HeaderMap, len: u64) -> ApiResult<Option<Span>> {
    let Some(v) = headers.get(RANGE) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("Range must be bytes=FIRST-LAST, bytes=FIRST- or bytes=-N");
    let unsatisfiable = |why: &str| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("{why}; the blob has {len} bytes"),
        )
    };
    let text = v.to_str().map_err(|_| bad())?.trim();
    let spec = text.strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(unsatisfiable("one range at a time"));
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let num = |s: &str| s.trim().parse::<u64>().map_err(|_| bad());
    let span = match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, true) => return Err(bad()),
        (true, false) => {
            let n = num(b)?;
            if n == 0 || len == 0 {
                return Err(unsatisfiable("an empty suffix"));
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, true) => (num(a)?, len.saturating_sub(1)),
        (false, false) => {
            let (first, last) = (num(a)?, num(b)?);
            if last < first {
                return Err(bad());
            }
            (first, last.min(len.saturating_sub(1)))
        }
    };
    if span.0 >= len {
        return Err(unsatisfiable("the range starts past the end"));
    }
    Ok(Some(span))
}

fn header(v: impl ToString) -> HeaderValue {
    HeaderValue::from_str(&v.to_string()).unwrap_or(HeaderValue::from_static("0"))
}

/// `GET /blobs/{id}`: the bytes (fetched from peers when this node lacks
/// pieces); `Range` gives 206 with `Content-Range`.
async fn download(
    State(state): State<Arc<ApiState>>,
    PathParams(id): PathParams<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = blob_id(&id)?;
    let node = state.node();
    if node.blob(&id).map_err(sync_err)?.is_none() && node.peers().is_empty() {
        return Err(ApiError::not_found(format!(
            "no blob {} here and no peer to ask",
            id.to_text()
        )));
    }
    let _slot = slot(&DOWNLOADS, "downloads", MAX_DOWNLOADS)?;
    let bytes = axum::body::Bytes::from(node.get_blob(id).await.map_err(sync_err)?);
    let len = bytes.len() as u64;
    let span = match range(&headers, len) {
        Err(e) if e.status == StatusCode::RANGE_NOT_SATISFIABLE => {
            let mut r = e.into_response();
            r.headers_mut()
                .insert(CONTENT_RANGE, header(format!("bytes */{len}")));
            return Ok(r);
        }
        other => other?,
    };
    let mut out = match span {
        None => Response::new(Body::from(bytes)),
        Some((first, last)) => {
            let part = bytes.slice(first as usize..=last as usize);
            let mut r = Response::new(Body::from(part));
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            r.headers_mut()
                .insert(CONTENT_RANGE, header(format!("bytes {first}-{last}/{len}")));
            r
        }
    };
    let h = out.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    Ok(out)
}

/// `HEAD /blobs/{id}`: the size (`Content-Length`) of a blob whose manifest
/// this node holds, without its bytes.
async fn info(
    State(state): State<Arc<ApiState>>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    let id = blob_id(&id)?;
    let Some(b) = state.node().blob(&id).map_err(sync_err)? else {
        return Err(ApiError::not_found(format!(
            "no blob {} here",
            id.to_text()
        )));
    };
    let mut r = Response::new(Body::empty());
    let h = r.headers_mut();
    h.insert(CONTENT_LENGTH, header(b.len));
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("x-blob-collection", header(&b.collection));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(v: &str, len: u64) -> ApiResult<Option<Span>> {
        let mut h = HeaderMap::new();
        h.insert(RANGE, HeaderValue::from_str(v).unwrap());
        range(&h, len)
    }

    fn chunked(chunks: usize, size: usize) -> Request {
        let parts = (0..chunks).map(move |_| Ok::<_, std::io::Error>(vec![1u8; size]));
        Request::new(Body::from_stream(futures::stream::iter(parts)))
    }

    #[tokio::test]
    async fn uploads_stop_at_the_limit_declared_or_not() {
        // Undeclared length: refused once the pieces read pass the limit.
        let e = read_blob_body(chunked(10, 100), 950).await.unwrap_err();
        assert_eq!(
            (e.status, e.kind),
            (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
        );
        assert_eq!(
            read_blob_body(chunked(10, 95), 950).await.unwrap().len(),
            950
        );
        // Declared length above the limit: refused before reading.
        let mut req = chunked(1, 1);
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("951"));
        let e = read_blob_body(req, 950).await.unwrap_err();
        assert_eq!(e.kind, "body_too_large");
    }

    #[test]
    fn ranges_parse_and_clamp() {
        assert_eq!(range(&HeaderMap::new(), 10).unwrap(), None);
        assert_eq!(r("bytes=0-3", 10).unwrap(), Some((0, 3)));
        assert_eq!(r("bytes=4-", 10).unwrap(), Some((4, 9)));
        assert_eq!(r("bytes=-3", 10).unwrap(), Some((7, 9)));
        assert_eq!(r("bytes=-30", 10).unwrap(), Some((0, 9)));
        assert_eq!(r("bytes=5-100", 10).unwrap(), Some((5, 9)));
        let kind = |v, len| r(v, len).unwrap_err().kind;
        assert_eq!(kind("bytes=10-", 10), "range_not_satisfiable");
        assert_eq!(kind("bytes=0-1,4-5", 10), "range_not_satisfiable");
        assert_eq!(kind("bytes=-0", 10), "range_not_satisfiable");
        assert_eq!(kind("bytes=0-", 0), "range_not_satisfiable");
        assert_eq!(kind("items=0-1", 10), "bad_request");
        assert_eq!(kind("bytes=5-2", 10), "bad_request");
        assert_eq!(kind("bytes=x-2", 10), "bad_request");
        assert_eq!(kind("bytes=-", 10), "bad_request");
        assert_eq!(kind("bytes=99999999999999999999-", 10), "bad_request");
    }
}
