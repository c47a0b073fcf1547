//! `RemoteStorageAdapter`: a [`PrimaryStore`] that is another `ecomesh node`,
//! reached over its HTTP API's `/primary/v1/` routes (issue 19).
//!
//! **Why here:** the client needs an HTTP client (hyper), and `sync` and
//! `hybrid-storage` stay free of transports; the node already serves the
//! routes ([`crate::api::primary`]), so both ends of the protocol (and its
//! JSON types) live in one crate and cannot drift apart. **Why HTTP:** the
//! primary is one always-on server that devices dial by address, which is
//! what the node's API already is (bounded bodies, typed errors), with no
//! libp2p swarm needed on the device's path to it.
//!
//! Each request opens one HTTP/1 connection (no pool: a device talks to its
//! primary every few seconds), is bounded by [`RemoteConfig::timeout`] as a
//! whole, and reads at most [`RemoteConfig::max_response`] bytes of answer
//! ([`RemoteError::ResponseTooLarge`] beyond it). The device authenticates
//! with the gate's challenge, signature and expiring token before anything
//! else; a request answered 401 (an expired token, or a primary restarted
//! with a new token key) authenticates once more and is sent again.
//!
//! Only the reads and the merge a [`PrimaryStore`] is used for go to the
//! primary: `get`, `query`, `apply_versions` and `ping`. Writes reach a
//! primary as the device's signed version nodes (`apply_versions`), never as
//! re-issued writes, so `set`, `update`, `delete`, `batch_write` and the
//! subscriptions answer `InvalidArgument` ([`RemoteError::NotOnPrimary`]).
//! Query answers carry no cursor (the primary's sync engine returns whole
//! results up to the query's limit).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ecomesh_hybrid_storage::{
    DeviceAuth, Grant, HybridError, MAX_BATCH, PrimaryStore, VersionApplied,
};
use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_types::{
    BatchOperation, BatchResult, BoxFuture, Document, Error, HlcTimestamp, Listener, Map, Query,
    QueryPage, SetOptions, StorageAdapter, Subscription, WriteResult,
};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::primary::{
    ChallengeAnswer, ChallengeRequest, GrantAnswer, MAX_VERSIONS_BODY, VerifyRequest,
    VersionsAnswer, VersionsRequest,
};

/// Default bound on one request, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on one answer's body.
pub const DEFAULT_MAX_RESPONSE: usize = 16 << 20;
/// A token with less than this to live is renewed before use.
const TOKEN_MARGIN_MS: u64 = 30_000;

/// What can go wrong talking to a primary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// No TCP connection or HTTP exchange with the primary.
    #[error("connecting to the primary at {addr}: {reason}")]
    Connect {
        /// Its address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
    /// The request did not finish within the timeout.
    #[error("the primary did not answer within {0:?}")]
    Timeout(Duration),
    /// The answer's body is larger than the configured bound.
    #[error("the primary's answer is larger than {limit} bytes")]
    ResponseTooLarge {
        /// The bound.
        limit: usize,
    },
    /// The primary answered with an error status.
    #[error("the primary answered {status}: {kind}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The API error kind (`unauthorized`, `batch_too_large`, ...).
        kind: String,
        /// Its message.
        message: String,
    },
    /// An answer that is not what the route promises.
    #[error("the primary's answer is malformed: {0}")]
    Malformed(String),
    /// The authentication failed on this side (the primary's Confirm does
    /// not verify, or the device's key is refused).
    #[error("authenticating to the primary: {0}")]
    Auth(#[from] HybridError),
    /// A document write asked of the primary: writes reach it as signed
    /// versions through `apply_versions`.
    #[error("{0} is not sent to a primary: writes reach it as signed versions")]
    NotOnPrimary(&'static str),
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::NotOnPrimary(_) => Error::InvalidArgument(e.to_string()),
            other => Error::backend(other),
        }
    }
}

/// Where the primary is and how long to wait for it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RemoteConfig {
    /// The primary's API address (`ecomesh node --api ADDR` on the primary).
    pub addr: SocketAddr,
    /// Bound on one request, connection included.
    pub timeout: Duration,
    /// Bound on one answer's body.
    pub max_response: usize,
}

impl RemoteConfig {
    /// The primary at `addr`, with the default bounds.
    pub fn new(addr: SocketAddr) -> Self {
        RemoteConfig {
            addr,
            timeout: DEFAULT_TIMEOUT,
            max_response: DEFAULT_MAX_RESPONSE,
        }
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the bound on an answer's body.
    #[must_use]
    pub fn with_max_response(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }
}

/// Another `ecomesh node` as this device's primary; see the module docs.
pub struct RemoteStorageAdapter {
    config: RemoteConfig,
    identity: Identity,
    policy: Arc<AccessPolicy>,
    token: tokio::sync::Mutex<Option<(String, u64)>>,
}

impl std::fmt::Debug for RemoteStorageAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteStorageAdapter")
            .field("addr", &self.config.addr)
            .finish_non_exhaustive()
    }
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

fn malformed(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::Malformed(e.to_string())
}

impl RemoteStorageAdapter {
    /// A client of the primary `config.addr`, authenticating as `identity`
    /// to a primary that `policy` admits. Nothing is sent before the first call.
    pub fn new(config: RemoteConfig, identity: Identity, policy: Arc<AccessPolicy>) -> Self {
        RemoteStorageAdapter {
            config,
            identity,
            policy,
            token: tokio::sync::Mutex::new(None),
        }
    }

    /// One request, bounded by the timeout and the answer's size: the status
    /// and the body.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), RemoteError> {
        let timeout = self.config.timeout;
        tokio::time::timeout(timeout, self.exchange_unbounded(method, path, token, body))
            .await
            .map_err(|_| RemoteError::Timeout(timeout))?
    }

    async fn exchange_unbounded(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), RemoteError> {
        let addr = self.config.addr;
        let connect = |e: &dyn std::fmt::Display| RemoteError::Connect {
            addr,
            reason: e.to_string(),
        };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| connect(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| connect(&e))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "primary connection ended");
            }
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, addr.to_string());
        if let Some(t) = token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(malformed)?;
        let result = async {
            let res = sender.send_request(req).await.map_err(|e| connect(&e))?;
            let status = res.status();
            let limit = self.config.max_response;
            let bytes = Limited::new(res.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        RemoteError::ResponseTooLarge { limit }
                    } else {
                        connect(&e)
                    }
                })?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        driver.abort();
        result
    }

    /// A JSON request; a non-2xx answer is [`RemoteError::Status`].
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&impl Serialize>,
    ) -> Result<T, RemoteError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(malformed))
            .transpose()?;
        let (status, bytes) = self.exchange(method, path, token, body).await?;
        if !status.is_success() {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let text = |k: &str| v["error"][k].as_str().unwrap_or_default().to_owned();
            return Err(RemoteError::Status {
                status: status.as_u16(),
                kind: text("kind"),
                message: text("message"),
            });
        }
        serde_json::from_slice(&bytes).map_err(malformed)
    }

    /// Authenticates: Hello, Challenge, signed Response, the primary's
    /// Confirm checked, then the token kept.
    async fn authenticate(&self) -> Result<String, RemoteError> {
        let (mut auth, hello) = DeviceAuth::start(self.identity.clone(), self.policy.clone())?;
        let c: ChallengeAnswer = self
            .call(
                Method::POST,
                "/primary/v1/challenge",
                None,
                Some(&ChallengeRequest {
                    hello: STANDARD.encode(hello),
                }),
            )
            .await?;
        let challenge = STANDARD.decode(&c.challenge).map_err(malformed)?;
        let response = auth.on_challenge(&challenge)?;
        let g: GrantAnswer = self
            .call(
                Method::POST,
                "/primary/v1/verify",
                None,
                Some(&VerifyRequest {
                    session: c.session,
                    response: STANDARD.encode(response),
                }),
            )
            .await?;
        let device = g.device.parse().map_err(malformed)?;
        let confirm = STANDARD.decode(&g.confirm).map_err(malformed)?;
        auth.on_grant(&Grant::new(confirm, g.token.clone(), g.expires_ms, device))?;
        tracing::debug!(addr = %self.config.addr, "authenticated to the primary");
        Ok(g.token)
    }

    /// The token, authenticating when there is none or it is about to expire
    /// (or `renew`: the primary refused it).
    async fn token(&self, renew: bool) -> Result<String, RemoteError> {
        let mut held = self.token.lock().await;
        if !renew
            && let Some((t, exp)) = held.as_ref()
            && now_ms().saturating_add(TOKEN_MARGIN_MS) < *exp
        {
            return Ok(t.clone());
        }
        let token = self.authenticate().await?;
        // The primary's clock decides the expiry; keep it for the margin check.
        *held = Some((token.clone(), expiry_of(&token).unwrap_or(0)));
        Ok(token)
    }

    /// A call with the gate's token, authenticating again once on 401.
    async fn authed<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, RemoteError> {
        let token = self.token(false).await?;
        match self.call(method.clone(), path, Some(&token), body).await {
            Err(RemoteError::Status { status: 401, .. }) => {
                let token = self.token(true).await?;
                self.call(method, path, Some(&token), body).await
            }
            other => other,
        }
    }

    /// Merges `versions` on the primary, split into requests of at most
    /// [`MAX_BATCH`] versions whose bodies stay under the primary's bound;
    /// one outcome per version, in order. A version whose base64 alone
    /// exceeds the bound goes alone and is refused by the primary (413).
    pub async fn send_versions(
        &self,
        versions: &[Vec<u8>],
    ) -> Result<Vec<VersionApplied>, RemoteError> {
        let mut outcomes = Vec::with_capacity(versions.len());
        let mut chunk: Vec<String> = Vec::new();
        let mut size = 0usize;
        // Room for the envelope and the separators.
        let budget = MAX_VERSIONS_BODY - 1024;
        for v in versions {
            let text = STANDARD.encode(v);
            if !chunk.is_empty() && (size + text.len() + 3 > budget || chunk.len() == MAX_BATCH) {
                self.send_chunk(std::mem::take(&mut chunk), &mut outcomes)
                    .await?;
                size = 0;
            }
            size += text.len() + 3;
            chunk.push(text);
        }
        if !chunk.is_empty() {
            self.send_chunk(chunk, &mut outcomes).await?;
        }
        Ok(outcomes)
    }

    async fn send_chunk(
        &self,
        versions: Vec<String>,
        outcomes: &mut Vec<VersionApplied>,
    ) -> Result<(), RemoteError> {
        let n = versions.len();
        let a: VersionsAnswer = self
            .authed(
                Method::POST,
                "/primary/v1/versions",
                Some(&VersionsRequest { versions }),
            )
            .await?;
        if a.outcomes.len() != n {
            return Err(RemoteError::Malformed(format!(
                "{} outcomes for {n} versions",
                a.outcomes.len()
            )));
        }
        for o in a.outcomes {
            outcomes.push(
                o.into_applied()
                    .ok_or_else(|| malformed("a missing parent that is not a CID"))?,
            );
        }
        Ok(())
    }
}

/// The expiry a gate token names (`peer.expires.mac`).
fn expiry_of(token: &str) -> Option<u64> {
    token.split('.').nth(1)?.parse().ok()
}

fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(serde::Deserialize)]
struct DocAnswer {
    document: Option<Document>,
}

impl StorageAdapter for RemoteStorageAdapter {
    fn get<'a>(
        &'a self,
        collection: &'a str,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Document>, Error>> {
        Box::pin(async move {
            let path = format!(
                "/primary/v1/docs/{}/{}",
                path_segment(collection),
                path_segment(id)
            );
            let a: DocAnswer = self.authed(Method::GET, &path, None::<&()>).await?;
            Ok(a.document)
        })
    }

    fn set<'a>(
        &'a self,
        _collection: &'a str,
        _id: &'a str,
        _fields: Map,
        _options: SetOptions,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async { Err(RemoteError::NotOnPrimary("set").into()) })
    }

    fn update<'a>(
        &'a self,
        _collection: &'a str,
        _id: &'a str,
        _fields: Map,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async { Err(RemoteError::NotOnPrimary("update").into()) })
    }

    fn delete<'a>(
        &'a self,
        _collection: &'a str,
        _id: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, Error>> {
        Box::pin(async { Err(RemoteError::NotOnPrimary("delete").into()) })
    }

    fn query<'a>(
        &'a self,
        collection: &'a str,
        query: &'a Query,
    ) -> BoxFuture<'a, Result<QueryPage, Error>> {
        Box::pin(async move {
            let path = format!("/primary/v1/query/{}", path_segment(collection));
            Ok(self.authed(Method::POST, &path, Some(query)).await?)
        })
    }

    fn batch_write(
        &self,
        _operations: Vec<BatchOperation>,
    ) -> BoxFuture<'_, Result<BatchResult, Error>> {
        Box::pin(async { Err(RemoteError::NotOnPrimary("batch_write").into()) })
    }

    fn subscribe_document(
        &self,
        _collection: &str,
        _id: &str,
        _listener: Listener<Option<Document>>,
    ) -> Result<Subscription, Error> {
        Err(RemoteError::NotOnPrimary("subscribe_document").into())
    }

    fn subscribe_query(
        &self,
        _collection: &str,
        _query: Query,
        _listener: Listener<Vec<Document>>,
    ) -> Result<Subscription, Error> {
        Err(RemoteError::NotOnPrimary("subscribe_query").into())
    }

    fn server_timestamp(&self) -> HlcTimestamp {
        HlcTimestamp {
            physical_ms: now_ms(),
            logical: 0,
            peer: self.identity.peer_id(),
        }
    }

    fn generate_id(&self, _collection: &str) -> String {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            b[..8].copy_from_slice(&now_ms().to_be_bytes());
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}

impl PrimaryStore for RemoteStorageAdapter {
    fn apply_versions(
        &self,
        versions: Vec<Vec<u8>>,
    ) -> BoxFuture<'_, Result<Vec<VersionApplied>, Error>> {
        Box::pin(async move { Ok(self.send_versions(&versions).await?) })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let _: serde_json::Value = self
                .authed(Method::GET, "/primary/v1/ping", None::<&()>)
                .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn client(addr: SocketAddr) -> RemoteStorageAdapter {
        RemoteStorageAdapter::new(
            RemoteConfig::new(addr)
                .with_timeout(Duration::from_millis(500))
                .with_max_response(1024),
            Identity::from_secret_bytes(&[7; 32]),
            Arc::new(AccessPolicy::Open),
        )
    }

    /// A one-shot server that reads a request and answers `answer` (or
    /// nothing, keeping the connection open, when `None`).
    async fn server(answer: Option<Vec<u8>>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            match answer {
                Some(a) => {
                    let _ = s.write_all(&a).await;
                }
                None => std::future::pending::<()>().await,
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_oversized_answer_a_silent_primary_and_a_closed_port_are_typed_errors() {
        let big = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: 4096\r\n\r\n{}",
            "x".repeat(4096)
        );
        let c = client(server(Some(big.into_bytes())).await);
        let e = c
            .exchange(Method::GET, "/primary/v1/ping", None, None)
            .await
            .unwrap_err();
        assert!(
            matches!(e, RemoteError::ResponseTooLarge { limit: 1024 }),
            "{e:?}"
        );

        let c = client(server(None).await);
        let e = c
            .exchange(Method::GET, "/primary/v1/ping", None, None)
            .await
            .unwrap_err();
        assert!(matches!(e, RemoteError::Timeout(_)), "{e:?}");

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = client(closed).ping().await.unwrap_err();
        assert!(e.to_string().contains("connecting to the primary"), "{e}");

        let refusal = "HTTP/1.1 401 Unauthorized\r\ncontent-length: 53\r\n\r\n\
                       {\"error\":{\"kind\":\"unauthorized\",\"message\":\"forged!\"}}";
        let c = client(server(Some(refusal.as_bytes().to_vec())).await);
        let e = c
            .call::<serde_json::Value>(Method::GET, "/primary/v1/ping", Some("t"), None::<&()>)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, RemoteError::Status { status: 401, kind, .. } if kind == "unauthorized"),
            "{e:?}"
        );
        assert!(
            c.set("c", "d", Map::new(), SetOptions::default())
                .await
                .is_err_and(|e| matches!(e, Error::InvalidArgument(_)))
        );
    }
}
