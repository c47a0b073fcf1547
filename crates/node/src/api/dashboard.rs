//! The web dashboard: a page and its scripts, compiled into the binary and
//! served at `/` and `/assets/{name}` without a token (they hold no secrets;
//! the page asks the API for everything with the token it is given).
//!
//! Every answer carries a Content-Security-Policy that allows only this
//! node's own scripts, styles and images and connections back to it (HTTP and
//! its WebSocket), plus `X-Content-Type-Options: nosniff`. Nothing is fetched
//! from elsewhere, at build time or at run time.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HOST, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use super::auth::{Token, check_origin};
use super::error::{ApiError, ApiResult};
use crate::paths::DataDir;

/// The page.
const INDEX_HTML: &str = include_str!("../../assets/index.html");

/// The files under `/assets/`: name, media type, contents.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "errors.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/errors.js"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../assets/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../assets/icon.svg"),
    ),
];

/// Default lifetime of the session token in the link `ecomesh dashboard` prints.
pub const DEFAULT_LINK_TTL: Duration = Duration::from_secs(12 * 3600);

/// `GET /` and `GET /assets/{name}`.
pub(crate) fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{name}", get(asset))
}

async fn index(State(state): State<Arc<ApiState>>, req: Request) -> ApiResult<Response> {
    check_origin(&state, &req)?;
    Ok(respond(
        "text/html; charset=utf-8",
        INDEX_HTML,
        request_host(&req),
    ))
}

async fn asset(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    req: Request,
) -> ApiResult<Response> {
    check_origin(&state, &req)?;
    let (_, media_type, body) = ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::not_found(format!("the dashboard has no asset {name:?}")))?;
    Ok(respond(media_type, body, request_host(&req)))
}

/// The request's `Host` when it is a plain `host:port` (it goes into the
/// policy, so anything that could add a directive is left out).
fn request_host(req: &Request) -> Option<&str> {
    let host = req.headers().get(HOST)?.to_str().ok()?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    plain.then_some(host)
}

/// The Content-Security-Policy of every dashboard answer: this node's own
/// files only, connections back to it (the WebSocket at `ws://host` too, for
/// browsers whose `'self'` does not cover `ws:`), no plugins, no framing, no
/// form posts, no `<base>` rewriting.
pub fn content_security_policy(host: Option<&str>) -> String {
    let ws = host.map(|h| format!(" ws://{h}")).unwrap_or_default();
    format!(
        "default-src 'self'; connect-src 'self'{ws}; img-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

fn respond(media_type: &'static str, body: &'static str, host: Option<&str>) -> Response {
    let mut res = (StatusCode::OK, body).into_response();
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(media_type));
    if let Ok(csp) = HeaderValue::from_str(&content_security_policy(host)) {
        h.insert(CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The link `ecomesh dashboard` prints: the running node's dashboard with a
/// session token in the fragment (browsers never send the fragment to a
/// server, and the page removes it from the address bar).
#[derive(Clone, Debug, serde::Serialize)]
pub struct DashboardLink {
    /// `http://HOST:PORT/#token=...`.
    pub url: String,
    /// When the token in it expires (Unix seconds).
    pub expires: u64,
}

/// The dashboard link of the node running over `data`, with a session token
/// valid for `ttl` (at most [`super::auth::MAX_SESSION`]).
///
/// The token is minted here from the API token file, as `POST /api/v1/sessions`
/// would; it expires, so a link left in a terminal or a browser's history
/// stops working, and replacing `api-token` revokes it. Fails when the node
/// is not running (no `api.addr`).
pub fn link(data: &DataDir, ttl: Duration) -> Result<DashboardLink> {
    if ttl.is_zero() || ttl > super::auth::MAX_SESSION {
        bail!(
            "a dashboard link lasts between 1 s and {} h",
            super::auth::MAX_SESSION.as_secs() / 3600
        );
    }
    let addr_file = data.api_addr();
    let addr = match std::fs::read_to_string(&addr_file) {
        Ok(a) => a.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no node is serving the API over {} (no {}); start one with `ecomesh node`",
            data.root().display(),
            addr_file.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", addr_file.display())),
    };
    let addr: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("{} holds {addr:?}, not an address", addr_file.display()))?;
    let host = if addr.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    };
    let token = Token::load_or_create(&data.api_token())?;
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        .saturating_add(ttl.as_secs());
    Ok(DashboardLink {
        url: format!("http://{host}/#token={}", token.session(expires)),
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `src`/`href` in the page names an embedded asset: nothing is
    /// fetched from elsewhere, and nothing the page needs is missing.
    #[test]
    fn the_page_refers_only_to_embedded_assets() {
        let mut refs = 0;
        for attr in ["src=\"", "href=\""] {
            for (_, rest) in INDEX_HTML
                .match_indices(attr)
                .map(|(i, _)| INDEX_HTML.split_at(i))
            {
                let value = &rest[attr.len()..];
                let value = &value[..value.find('"').unwrap_or(value.len())];
                let name = value
                    .strip_prefix("/assets/")
                    .unwrap_or_else(|| panic!("{value} is not under /assets/"));
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == name),
                    "{value} is not embedded"
                );
                refs += 1;
            }
        }
        assert!(refs >= 4, "the page loads its scripts, style and icon");
        for (name, _, body) in ASSETS {
            let body = body.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
            assert!(
                !body.contains("http://") && !body.contains("https://"),
                "{name} names a remote URL"
            );
        }
    }

    #[test]
    fn the_policy_names_only_a_plain_host() {
        let p = content_security_policy(Some("127.0.0.1:7780"));
        assert!(p.starts_with("default-src 'self';"));
        assert!(p.contains("connect-src 'self' ws://127.0.0.1:7780;"));
        assert!(!content_security_policy(None).contains("ws://"));
        let req = Request::builder()
            .header(HOST, "x; script-src *")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(request_host(&req), None);
    }

    #[test]
    fn a_link_needs_a_running_node_and_carries_a_session_token() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path());
        data.create().unwrap();
        let e = link(&data, DEFAULT_LINK_TTL).unwrap_err();
        assert!(format!("{e:#}").contains("ecomesh node"), "{e:#}");
        std::fs::write(data.api_addr(), "127.0.0.1:4321\n").unwrap();
        let l = link(&data, DEFAULT_LINK_TTL).unwrap();
        let token = l.url.strip_prefix("http://127.0.0.1:4321/#token=").unwrap();
        let t = Token::load_or_create(&data.api_token()).unwrap();
        assert!(t.check(token, SystemTime::now()).is_ok());
        let later = UNIX_EPOCH + Duration::from_secs(l.expires);
        assert_eq!(t.check(token, later).unwrap_err().kind, "token_expired");
        assert!(link(&data, Duration::ZERO).is_err());
    }
}
