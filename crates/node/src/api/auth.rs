//! Who may call the API: a bearer token kept in the data directory (mode
//! 0600), short-lived session tokens derived from it, and checks of `Host`
//! and `Origin` so a web page on another site cannot reach a loopback node
//! (cross-site requests and DNS rebinding).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::ApiState;
use super::error::ApiError;

/// Longest lifetime of a session token.
pub const MAX_SESSION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Prefix of session tokens; the API token itself never has it.
const SESSION_PREFIX: &str = "s1.";

/// The API's secret: the token that the file holds, and the key that signs
/// session tokens (derived from it, so replacing the file revokes both).
#[derive(Clone)]
pub struct Token {
    text: String,
    session_key: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Loads the token at `path`, or creates it (32 random bytes, mode 0600).
    ///
    /// Refuses a token file that others can read, or that is not a token.
    pub fn load_or_create(path: &Path) -> Result<Token> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                if mode & 0o077 != 0 {
                    bail!(
                        "{} is readable by others (mode {:o}); run `chmod 600 {}`",
                        path.display(),
                        mode & 0o777,
                        path.display()
                    );
                }
                let text = text.trim().to_owned();
                if text.len() < 32 || text.starts_with(SESSION_PREFIX) {
                    bail!(
                        "{} does not hold an API token; delete it and a new one is made",
                        path.display()
                    );
                }
                Ok(Token::from_text(text))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let text = URL_SAFE_NO_PAD.encode(raw);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes())?;
                f.sync_all()?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
                Ok(Token::from_text(text))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn from_text(text: String) -> Token {
        let session_key = blake3::derive_key("ecomesh api session token v1", text.as_bytes());
        Token { text, session_key }
    }

    /// The token as clients send it.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A session token valid until `expires` (Unix seconds).
    pub fn session(&self, expires: u64) -> String {
        format!("{SESSION_PREFIX}{expires}.{}", self.session_mac(expires))
    }

    fn session_mac(&self, expires: u64) -> String {
        let mac = blake3::keyed_hash(&self.session_key, expires.to_string().as_bytes());
        URL_SAFE_NO_PAD.encode(&mac.as_bytes()[..24])
    }

    /// Checks a presented token (the API token, or a session token not past
    /// its expiry at `now`).
    pub fn check(&self, presented: &str, now: SystemTime) -> Result<(), ApiError> {
        if let Some(rest) = presented.strip_prefix(SESSION_PREFIX) {
            let (expires, mac) = rest.split_once('.').ok_or_else(bad_token)?;
            let expires: u64 = expires.parse().map_err(|_| bad_token())?;
            if !constant_time_eq(mac, &self.session_mac(expires)) {
                return Err(bad_token());
            }
            let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
            if now >= expires {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "this session token has expired; ask for a new one with the API token",
                ));
            }
            return Ok(());
        }
        if constant_time_eq(presented, &self.text) {
            Ok(())
        } else {
            Err(bad_token())
        }
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    blake3::hash(a.as_bytes()) == blake3::hash(b.as_bytes())
}

fn bad_token() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "bad_token",
        "the token is not this node's; `ecomesh api token` prints it",
    )
}

/// The token a request presents: `Authorization: Bearer T`, or the
/// `access_token` query parameter (browsers cannot set headers on WebSockets).
fn presented(req: &Request) -> Option<String> {
    if let Some(h) = req.headers().get(AUTHORIZATION) {
        let h = h.to_str().ok()?;
        let t = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))?;
        return Some(t.trim().to_owned());
    }
    let query = req.uri().query()?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "access_token").then(|| v.to_owned())
    })
}

/// Refuses requests whose `Host` is not one this node answers to (DNS
/// rebinding), or whose `Origin` is another site (403 `forbidden_origin`).
pub fn check_origin(state: &ApiState, req: &Request) -> Result<(), ApiError> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !state.host_allowed(host) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            format!(
                "Host {host:?} is not this node's address; use {} (protects against DNS rebinding)",
                state.local_addr
            ),
        ));
    }
    if let Some(origin) = req.headers().get(ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        let same = origin
            .strip_prefix("http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!(
                    "requests from origin {origin:?} are refused; only the node's own dashboard may call it from a browser"
                ),
            ));
        }
    }
    Ok(())
}

/// Middleware of every `/api/v1/` route: origin checks, then the token.
pub async fn require_token(
    State(state): State<Arc<ApiState>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_origin(&state, &req)?;
    let Some(token) = presented(&req) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "send `Authorization: Bearer <token>`; `ecomesh api token` prints the token",
        ));
    };
    state.token.check(&token, SystemTime::now())?;
    Ok(next.run(req).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_tokens_expire_and_cannot_be_forged() {
        let dir = tempfile::tempdir().unwrap();
        let t = Token::load_or_create(&dir.path().join("api-token")).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let s = t.session(1_000_100);
        assert!(t.check(&s, now).is_ok());
        assert_eq!(
            t.check(&s, now + Duration::from_secs(100))
                .unwrap_err()
                .kind,
            "token_expired"
        );
        let forged = s.replace("1000100", "9000100");
        assert_eq!(t.check(&forged, now).unwrap_err().kind, "bad_token");
        assert!(t.check(t.as_str(), now).is_ok());
        assert_eq!(t.check("nope", now).unwrap_err().kind, "bad_token");
    }

    #[test]
    fn the_token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("api-token");
        let a = Token::load_or_create(&p).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(Token::load_or_create(&p).unwrap().as_str(), a.as_str());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::load_or_create(&p).is_err());
    }
}
