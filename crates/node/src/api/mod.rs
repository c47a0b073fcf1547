//! The node's local HTTP and WebSocket API (axum), under `/api/v1/`, and the
//! web dashboard at `/`.
//!
//! Every route answers from the embedded [`ecomesh_sync::Node`], so nothing
//! here is beyond what an embedding app can do with `ecomesh-sync` itself.
//! Requests need the bearer token of [`auth`]; errors are [`ApiError`]s.
//! `docs/api.md` documents each route with a curl example that a test runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::paths::DataDir;
use crate::serve::Served;

pub mod auth;
pub mod blobs;
pub mod dashboard;
pub mod docs;
pub mod error;
pub mod json;
pub mod live;
pub mod node_info;
pub mod primary;
pub mod query;
pub mod relations;
pub mod rest;

pub use error::{ApiError, ApiResult};
use json::JsonBody;

/// Default address of the API: loopback only.
pub const DEFAULT_API_ADDR: &str = "127.0.0.1:7780";

/// Where and how the API listens.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// The address to bind (port 0: any free port, written to `api.addr`).
    pub addr: SocketAddr,
    /// Allow an address other than loopback. Anyone who can reach it and
    /// learns the token controls the node, and the API speaks plain HTTP.
    pub expose: bool,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            addr: DEFAULT_API_ADDR.parse().expect("a valid address"),
            expose: false,
        }
    }
}

/// What handlers share: the node, its transports, the token and the address.
pub struct ApiState {
    /// The node and the transports `status` reports.
    pub(crate) served: Arc<Served>,
    /// The bearer token.
    pub token: auth::Token,
    /// The address the API listens on.
    pub local_addr: SocketAddr,
    /// Bound on a non-loopback address by request (`--api-expose`): any Host is accepted.
    pub exposed: bool,
    /// The gate devices authenticate at when this node serves as their
    /// primary (`/primary/v1/`); `None`: those routes answer 404 `not_a_primary`.
    pub gate: Option<primary::SharedGate>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The embedded node.
    pub fn node(&self) -> &ecomesh_sync::Node {
        &self.served.node
    }

    /// True when `host` (a `Host` header) names this API: its own address, or
    /// `localhost` with its port when it listens on loopback.
    pub fn host_allowed(&self, host: &str) -> bool {
        if self.exposed {
            return true;
        }
        let port = self.local_addr.port();
        let own = self.local_addr.to_string();
        host == own
            || host == format!("localhost:{port}")
            || host == format!("127.0.0.1:{port}")
            || host == format!("[::1]:{port}")
    }
}

/// A running API server; dropping it does not stop it, [`ApiServer::stop`] does.
#[derive(Debug)]
pub struct ApiServer {
    addr: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    addr_file: std::path::PathBuf,
}

impl ApiServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets open requests finish for up to 5 s, and removes `api.addr`.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("the API did not stop within 5 s");
        }
        let _ = std::fs::remove_file(&self.addr_file);
    }
}

/// Binds the API and serves it on the current runtime.
///
/// Refuses a non-loopback address unless `options.expose`.
pub(crate) async fn start(
    served: Arc<Served>,
    data: &DataDir,
    options: &ApiOptions,
) -> Result<ApiServer> {
    if !options.addr.ip().is_loopback() && !options.expose {
        bail!(
            "--api {} is not a loopback address: anyone who reaches it and learns the token \
             controls this node, over plain HTTP; pass --api-expose as well if you mean it",
            options.addr
        );
    }
    let token = auth::Token::load_or_create(&data.api_token())?;
    let listener = TcpListener::bind(options.addr).await.with_context(|| {
        format!(
            "binding the API on {} (another node may hold it: pass --api 127.0.0.1:0 \
                 for any free port, or --no-api)",
            options.addr
        )
    })?;
    let addr = listener.local_addr()?;
    if options.expose && !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the API listens beyond loopback (--api-expose), over plain HTTP");
    }
    let gate = served.gate.clone();
    let state = Arc::new(ApiState {
        served,
        token,
        local_addr: addr,
        exposed: options.expose,
        gate,
    });
    let app = router(state);
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "the API server failed");
        }
    });
    let addr_file = data.api_addr();
    std::fs::write(&addr_file, format!("{addr}\n"))
        .with_context(|| format!("writing {}", addr_file.display()))?;
    tracing::info!(%addr, "API listening");
    Ok(ApiServer {
        addr,
        stop,
        task,
        addr_file,
    })
}

/// Every route under `/api/v1/` as `(METHOD, path)`: what `docs/api.md` must
/// document with an example (its test checks it).
pub fn documented_routes() -> Vec<(&'static str, String)> {
    let mut routes = vec![
        ("GET", "/api/v1/status".to_owned()),
        ("POST", "/api/v1/sessions".to_owned()),
        ("GET", "/api/v1/ws".to_owned()),
    ];
    routes.extend(rest::rest_routes());
    routes
}

/// The whole API: `/api/v1/...` behind the token, the dashboard at `/`.
pub fn router(state: Arc<ApiState>) -> Router {
    let v1 = Router::new()
        .route("/status", get(status))
        .route("/sessions", post(new_session))
        .merge(rest::routes())
        .merge(live::routes())
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .nest("/api/v1", v1)
        .nest("/primary/v1", primary::routes())
        .merge(dashboard::routes())
        .fallback(unknown_route)
        .with_state(state)
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_route",
        "no such route; docs/api.md lists them",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; docs/api.md lists the methods",
    )
}

/// `GET /api/v1/status`: the node's identity, addresses, peers and queues.
async fn status(State(state): State<Arc<ApiState>>) -> ApiResult<impl IntoResponse> {
    let s = state
        .served
        .status()
        .map_err(|e| ApiError::internal(format!("{e:#}")))?;
    Ok(axum::Json(s))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    /// Lifetime in seconds (at most [`auth::MAX_SESSION`]).
    ttl_secs: u64,
}

/// `POST /api/v1/sessions`: a token that expires after `ttl_secs`.
async fn new_session(
    State(state): State<Arc<ApiState>>,
    JsonBody(req): JsonBody<SessionRequest>,
) -> ApiResult<impl IntoResponse> {
    if req.ttl_secs == 0 || req.ttl_secs > auth::MAX_SESSION.as_secs() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            format!(
                "ttl_secs must be between 1 and {}",
                auth::MAX_SESSION.as_secs()
            ),
        ));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let expires = now.saturating_add(req.ttl_secs);
    Ok(axum::Json(serde_json::json!({
        "token": state.token.session(expires),
        "expires": expires,
    })))
}
