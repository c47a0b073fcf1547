//! The node as a primary for devices (issue 19): routes under `/primary/v1/`
//! that carry only the bytes of `ecomesh_hybrid_storage::PrimaryGate`, so the
//! sans-io gate decides everything and HTTP is a carrier.
//!
//! - `POST /primary/v1/challenge` `{"hello": B64}` → `{"session", "challenge": B64}`
//! - `POST /primary/v1/verify` `{"session", "response": B64}` →
//!   `{"confirm": B64, "token", "expires_ms", "device"}`
//! - `POST /primary/v1/versions` `{"versions": [B64, ...]}` (at most
//!   `MAX_BATCH`) → `{"outcomes": [...]}`, one per version, in order
//! - `GET /primary/v1/ping`, `GET /primary/v1/docs/{collection}/{id}`,
//!   `POST /primary/v1/query/{collection}` (a `Query` as JSON): the reads a
//!   `PrimaryStore` serves.
//!
//! Everything but challenge and verify needs `Authorization: Bearer` with the
//! gate's token (not the API token: a device never learns that). `B64` is
//! standard base64. The node's API token does not open these routes, and the
//! gate's token does not open `/api/v1/`. Bodies are bounded
//! ([`MAX_AUTH_BODY`], [`MAX_VERSIONS_BODY`]); the gate's errors are mapped to
//! statuses by [`gate_error`]. `Host` and `Origin` are checked as for the rest
//! of the API, so a primary serving devices beyond loopback runs with
//! `--api ADDR --api-expose`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ecomesh_hybrid_storage::{HybridError, PrimaryGate, VersionApplied};
use ecomesh_sync::MergedVersion;
use ecomesh_types::{Query, QueryPage};
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ApiResult};
use super::json::read_limited;
use super::{ApiState, auth};

/// Largest body of `challenge` and `verify` (a Hello or a Response is a few
/// hundred bytes).
pub const MAX_AUTH_BODY: usize = 64 * 1024;
/// Largest body of `versions`: a client splits a batch whose base64 would
/// exceed it into several requests.
pub const MAX_VERSIONS_BODY: usize = 8 << 20;

/// The gate of a node acting as primary, shared by its handlers.
pub type SharedGate = Arc<Mutex<PrimaryGate>>;

fn lock(g: &SharedGate) -> MutexGuard<'_, PrimaryGate> {
    g.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}

/// The HTTP status and kind of a gate error: 401 `unauthorized` for a missing,
/// forged or expired token or session, 401 `auth_failed` for a refused
/// signature or key, 413 `batch_too_large`, 500 `internal` otherwise.
pub fn gate_error(e: HybridError) -> ApiError {
    let message = e.to_string();
    match e {
        HybridError::Unauthorized(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        }
        HybridError::Auth(_) => ApiError::new(StatusCode::UNAUTHORIZED, "auth_failed", message),
        HybridError::BatchTooLarge { .. } => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large", message)
        }
        _ => ApiError::internal(message),
    }
}

/// `challenge`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeRequest {
    /// The device's Hello, base64.
    pub hello: String,
}

/// `challenge`'s answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChallengeAnswer {
    /// The session to name in `verify`.
    pub session: u64,
    /// The primary's Challenge, base64.
    pub challenge: String,
}

/// `verify`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The session `challenge` returned.
    pub session: u64,
    /// The device's signed Response, base64.
    pub response: String,
}

/// `verify`'s answer: the gate's `Grant`.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantAnswer {
    /// The primary's Confirm, base64.
    pub confirm: String,
    /// The bearer token.
    pub token: String,
    /// When it expires (Unix ms).
    pub expires_ms: u64,
    /// The device it was issued to (Base58 peer id).
    pub device: String,
}

/// `versions`' body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionsRequest {
    /// Canonical version-node bytes, base64 each.
    pub versions: Vec<String>,
}

/// One version's outcome, as `VersionApplied` on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Merged now; `concurrent` when it did not follow the primary's heads.
    Applied {
        /// Concurrent with the primary's heads.
        concurrent: bool,
    },
    /// Already held.
    AlreadyPresent,
    /// Parents missing (CID texts).
    MissingParents {
        /// The missing parents.
        parents: Vec<String>,
    },
    /// Refused, with the reason.
    Refused {
        /// Why.
        reason: String,
    },
}

/// `versions`' answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct VersionsAnswer {
    /// One outcome per version, in order.
    pub outcomes: Vec<Outcome>,
}

impl Outcome {
    /// The outcome as the hybrid adapter takes it; `None` for a missing
    /// parent whose CID text does not parse (a damaged answer).
    pub fn into_applied(self) -> Option<VersionApplied> {
        Some(match self {
            Outcome::Applied { concurrent } => VersionApplied::Applied { concurrent },
            Outcome::AlreadyPresent => VersionApplied::AlreadyPresent,
            Outcome::Refused { reason } => VersionApplied::Refused(reason),
            Outcome::MissingParents { parents } => VersionApplied::MissingParents(
                parents
                    .iter()
                    .map(|p| ecomesh_wire::cid::parse_content_id(p).ok())
                    .collect::<Option<Vec<_>>>()?,
            ),
        })
    }
}

fn merged(m: MergedVersion) -> Outcome {
    match m {
        MergedVersion::Applied { concurrent } => Outcome::Applied { concurrent },
        MergedVersion::AlreadyPresent => Outcome::AlreadyPresent,
        MergedVersion::MissingParents(p) => Outcome::MissingParents {
            parents: p.iter().map(super::json::cid_text).collect(),
        },
        MergedVersion::Refused(reason) => Outcome::Refused { reason },
        other => Outcome::Refused {
            reason: format!("not merged: {other:?}"),
        },
    }
}

fn b64(text: &str, what: &str) -> ApiResult<Vec<u8>> {
    STANDARD
        .decode(text)
        .map_err(|e| ApiError::bad_request(format!("{what} is not base64: {e}")))
}

async fn json_body<T: serde::de::DeserializeOwned>(req: Request, limit: usize) -> ApiResult<T> {
    let bytes = read_limited(req, limit).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_json(format!("the body is not the JSON this route takes: {e}")))
}

fn gate(state: &ApiState) -> ApiResult<&SharedGate> {
    state.gate.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_a_primary",
            "this node does not serve as a primary",
        )
    })
}

/// Checks `Host`/`Origin` and that a gate token is presented; the token.
fn presented(state: &ApiState, req: &Request) -> ApiResult<String> {
    auth::check_origin(state, req)?;
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send `Authorization: Bearer <token>` with the token `verify` issued",
            )
        })
}

/// Checks `Host`/`Origin` and the gate's token for a batch of `len`; the device.
fn admitted(state: &ApiState, token: &str, len: usize) -> ApiResult<ecomesh_types::PeerId> {
    lock(gate(state)?)
        .admit(token, len, now_ms())
        .map_err(gate_error)
}

async fn challenge(
    State(state): State<Arc<ApiState>>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    auth::check_origin(&state, &req)?;
    let gate = gate(&state)?.clone();
    let body: ChallengeRequest = json_body(req, MAX_AUTH_BODY).await?;
    let hello = b64(&body.hello, "hello")?;
    let (session, challenge) = lock(&gate)
        .challenge(&hello, now_ms())
        .map_err(gate_error)?;
    Ok(axum::Json(ChallengeAnswer {
        session,
        challenge: STANDARD.encode(challenge),
    }))
}

async fn verify(State(state): State<Arc<ApiState>>, req: Request) -> ApiResult<impl IntoResponse> {
    auth::check_origin(&state, &req)?;
    let gate = gate(&state)?.clone();
    let body: VerifyRequest = json_body(req, MAX_AUTH_BODY).await?;
    let response = b64(&body.response, "response")?;
    let grant = lock(&gate)
        .verify(body.session, &response, now_ms())
        .map_err(gate_error)?;
    tracing::info!(device = %grant.device, "a device authenticated to this primary");
    Ok(axum::Json(GrantAnswer {
        confirm: STANDARD.encode(&grant.confirm),
        token: grant.token,
        expires_ms: grant.expires_ms,
        device: grant.device.to_base58(),
    }))
}

async fn versions(
    State(state): State<Arc<ApiState>>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    // The token first, so a stranger's body is never read.
    let token = presented(&state, &req)?;
    admitted(&state, &token, 0)?;
    let body: VersionsRequest = json_body(req, MAX_VERSIONS_BODY).await?;
    let device = admitted(&state, &token, body.versions.len())?;
    let mut outcomes = Vec::with_capacity(body.versions.len());
    for v in &body.versions {
        let bytes = b64(v, "a version")?;
        outcomes.push(merged(state.node().merge_version(&bytes)?));
    }
    tracing::debug!(%device, versions = outcomes.len(), "merged a device's batch");
    Ok(axum::Json(VersionsAnswer { outcomes }))
}

async fn ping(State(state): State<Arc<ApiState>>, req: Request) -> ApiResult<impl IntoResponse> {
    let token = presented(&state, &req)?;
    let device = admitted(&state, &token, 0)?;
    Ok(axum::Json(
        serde_json::json!({ "device": device.to_base58() }),
    ))
}

async fn doc(
    State(state): State<Arc<ApiState>>,
    Path((collection, id)): Path<(String, String)>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    admitted(&state, &presented(&state, &req)?, 0)?;
    let d = state.node().collection(collection).doc(id).get().await?;
    Ok(axum::Json(serde_json::json!({ "document": d })))
}

async fn query(
    State(state): State<Arc<ApiState>>,
    Path(collection): Path<String>,
    req: Request,
) -> ApiResult<impl IntoResponse> {
    admitted(&state, &presented(&state, &req)?, 0)?;
    let q: Query = json_body(req, super::json::MAX_JSON_BODY).await?;
    let documents = state.node().query(&collection, &q).await?;
    Ok(axum::Json(QueryPage {
        documents,
        ..QueryPage::default()
    }))
}

/// The routes, to nest under `/primary/v1`.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/challenge", post(challenge))
        .route("/verify", post(verify))
        .route("/versions", post(versions))
        .route("/ping", get(ping))
        .route("/docs/{collection}/{id}", get(doc))
        .route("/query/{collection}", post(query))
}
