//! What the node does besides documents: texts, peers, sync state, the
//! stream of changes, the store-and-forward queue and the transports.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use ecomesh_sync::{EventKind, PeerId, SendOutcome, Source, SyncError, SyncState, Value};
use ecomesh_types::TransportType;
use serde::Deserialize;

use super::ApiState;
use super::docs::page_limit;
use super::error::{ApiError, ApiResult};
use super::json::{JsonBody, cid_json};
use super::rest::{Endpoint, Params, build, ep, sync_err};

/// Most entries of one `GET /api/v1/changes` page (`page_too_large` beyond it).
pub const MAX_CHANGES: usize = 1000;
/// Longest wait for the LoRa driver's figures in `GET /api/v1/transports`;
/// past it the `lora` figures are `null`.
pub const LORA_STATUS_WAIT: Duration = Duration::from_secs(2);

type Answer = ApiResult<Json<serde_json::Value>>;

/// The routes of this module.
pub(crate) fn endpoints() -> Vec<Endpoint> {
    vec![
        ep("GET", "/texts/inbox", get(inbox)),
        ep("GET", "/texts/outbox", get(outbox)),
        ep("POST", "/texts", post(send_text)),
        ep("GET", "/peers", get(peers)),
        ep("GET", "/sync", get(sync_state)),
        ep("POST", "/sync", post(force_sync)),
        ep("GET", "/changes", get(changes)),
        ep("GET", "/queue", get(queue)),
        ep("GET", "/transports", get(transports)),
    ]
}

/// The router of this module.
pub(crate) fn routes() -> axum::Router<Arc<ApiState>> {
    build(endpoints())
}

/// A sync state's name: `offline`, `connecting`, `syncing`, `synced`,
/// `conflict` or `resolved`.
pub fn state_name(s: SyncState) -> &'static str {
    match s {
        SyncState::Offline => "offline",
        SyncState::Connecting => "connecting",
        SyncState::Syncing => "syncing",
        SyncState::Synced => "synced",
        SyncState::Conflict => "conflict",
        SyncState::Resolved => "resolved",
        _ => "unknown",
    }
}

fn peer_id(text: &str) -> ApiResult<PeerId> {
    text.trim().parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_peer",
            format!("{text:?} is not a peer id; take one from GET /api/v1/peers"),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitParams {
    limit: Option<usize>,
}

/// The newest `limit` of `rows` (oldest first) and whether older ones were left out.
fn newest<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let skip = rows.len().saturating_sub(limit);
    (rows.split_off(skip), skip > 0)
}

/// `GET /texts/inbox?limit=`: the newest received texts, oldest first.
async fn inbox(State(state): State<Arc<ApiState>>, Params(p): Params<LimitParams>) -> Answer {
    let limit = page_limit(p.limit)?;
    let (rows, more) = newest(state.node().inbox().map_err(sync_err)?, limit);
    let messages: Vec<_> = rows
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id, "from": m.from, "text": m.text,
                "sent_ms": m.sent_ms, "received_ms": m.received_ms,
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "messages": messages, "more": more }),
    ))
}

/// `GET /texts/outbox?limit=`: the newest sent texts with their status.
async fn outbox(State(state): State<Arc<ApiState>>, Params(p): Params<LimitParams>) -> Answer {
    let limit = page_limit(p.limit)?;
    let (rows, more) = newest(state.node().outbox().map_err(sync_err)?, limit);
    let messages: Vec<_> = rows
        .into_iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id, "to": m.to, "text": m.text,
                "sent_ms": m.sent_ms, "status": m.status.as_str(),
            })
        })
        .collect();
    Ok(Json(
        serde_json::json!({ "messages": messages, "more": more }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    peer: String,
    text: String,
}

/// `POST /texts`: `{"peer", "text"}` sealed to the peer and queued durably.
async fn send_text(
    State(state): State<Arc<ApiState>>,
    JsonBody(body): JsonBody<SendBody>,
) -> Answer {
    let to = peer_id(&body.peer)?;
    let node = state.node();
    if to == node.peer_id() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "that is this node's own id; send to another node",
        ));
    }
    if body.text.len() > ecomesh_sync::MAX_TEXT {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the text is {} bytes; at most {} fit in one message",
                body.text.len(),
                ecomesh_sync::MAX_TEXT
            ),
        ));
    }
    let sent = node.send_text(to, body.text).await.map_err(|e| match e {
        SyncError::Mesh(m) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "send_refused",
            format!("refused, nothing queued: {m}"),
        ),
        e => sync_err(e),
    })?;
    let (outcome, transport) = match sent.outcome {
        SendOutcome::Sent(t) => ("sent", Some(t.to_string())),
        SendOutcome::Queued => ("queued", None),
    };
    Ok(Json(serde_json::json!({
        "id": sent.id.to_string(),
        "outcome": outcome,
        "transport": transport,
    })))
}

fn last_sync(ms: Option<u64>) -> serde_json::Value {
    ms.map_or(serde_json::Value::Null, Into::into)
}

/// `GET /peers`: the peers reachable now, with their transports, last
/// contact, reputation and sync state.
async fn peers(State(state): State<Arc<ApiState>>) -> Answer {
    let node = state.node();
    let rows: Vec<_> = node
        .peers()
        .into_iter()
        .map(|p| {
            let s = node.peer_sync_state(&p.peer_id);
            serde_json::json!({
                "peer_id": p.peer_id.to_string(),
                "display_name": p.display_name,
                "transports": p.transports.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
                "address": match p.metadata.get("address") {
                    Some(Value::Text(a)) => Some(a.clone()),
                    _ => None,
                },
                "last_seen_ms": p.last_seen_ms,
                "reputation": p.reputation,
                "sync": { "state": state_name(s.state), "last_sync_ms": last_sync(s.last_synced_ms) },
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "peers": rows })))
}

/// `GET /sync`: the node's sync state, and each reachable peer's with the
/// messages buffered for it.
async fn sync_state(State(state): State<Arc<ApiState>>) -> Answer {
    let node = state.node();
    let queue = node.queue_status();
    let pending = |p: &PeerId| {
        queue
            .by_destination
            .iter()
            .find(|(d, _)| d.as_ref() == Some(p))
            .map_or(0, |(_, n)| *n)
    };
    let rows: Vec<_> = node
        .peers()
        .into_iter()
        .map(|p| {
            let s = node.peer_sync_state(&p.peer_id);
            serde_json::json!({
                "peer_id": p.peer_id.to_string(),
                "state": state_name(s.state),
                "pending": pending(&p.peer_id),
                "last_sync_ms": last_sync(s.last_synced_ms),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "state": state_name(node.sync_state()),
        "sync_pending": queue.sync_pending,
        "peers": rows,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    peer: Option<String>,
}

/// `POST /sync`: `{"peer": id}` or `{}` (every reachable peer) starts an
/// anti-entropy session now.
async fn force_sync(
    State(state): State<Arc<ApiState>>,
    JsonBody(body): JsonBody<SyncBody>,
) -> Answer {
    let peer = body.peer.as_deref().map(peer_id).transpose()?;
    let started = state.node().force_sync(peer).map_err(|e| match e {
        SyncError::InvalidArgument(m) => ApiError::not_found(m),
        e => sync_err(e),
    })?;
    let started: Vec<String> = started.iter().map(ToString::to_string).collect();
    Ok(Json(serde_json::json!({ "started": started })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesParams {
    since: Option<u64>,
    limit: Option<usize>,
}

/// `GET /changes?since=N&limit=M`: the node's stream of versions after position `since`.
async fn changes(State(state): State<Arc<ApiState>>, Params(p): Params<ChangesParams>) -> Answer {
    let limit = p.limit.unwrap_or(100);
    if limit == 0 {
        return Err(ApiError::bad_request("limit must be at least 1"));
    }
    if limit > MAX_CHANGES {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "page_too_large",
            format!("limit {limit} is above the largest page, {MAX_CHANGES}"),
        ));
    }
    let page = state.node().changes(p.since.unwrap_or(0), limit);
    let entries: Vec<_> = page
        .entries
        .iter()
        .map(|e| {
            serde_json::json!({
                "position": e.position,
                "kind": match e.kind {
                    EventKind::Local => "local",
                    EventKind::New => "new",
                    EventKind::Backfill => "backfill",
                    EventKind::Outlier => "outlier",
                },
                "source": match e.source {
                    Source::Local => "local".to_owned(),
                    Source::Remote(p) => p.to_string(),
                },
                "version": cid_json(&e.version),
                "collection": e.collection,
                "id": e.id,
            })
        })
        .collect();
    Ok(Json(serde_json::json!({
        "entries": entries,
        "next": page.next,
        "more": page.more,
    })))
}

/// `GET /queue`: the store-and-forward buffer and the other queues.
async fn queue(State(state): State<Arc<ApiState>>) -> Answer {
    let q = state.node().queue_status();
    let by: Vec<_> = q
        .by_destination
        .iter()
        .map(|(p, n)| serde_json::json!({ "peer_id": p.map(|p| p.to_string()), "messages": n }))
        .collect();
    Ok(Json(serde_json::json!({
        "messages": q.messages,
        "bytes": q.bytes,
        "max_messages": q.max_messages,
        "max_bytes": q.max_bytes,
        "by_destination": by,
        "sync_pending": q.sync_pending,
        "outbox_waiting": q.outbox_waiting,
        "awaiting_key": q.awaiting_key,
    })))
}

/// `GET /transports`: each transport the node runs, its listen addresses,
/// the peers reachable over it and, for LoRa, the duty cycle used.
async fn transports(State(state): State<Arc<ApiState>>) -> Answer {
    let served = &state.served;
    let peers = served.node.peers();
    let count = |t: TransportType| peers.iter().filter(|p| p.transports.contains(&t)).count();
    let mut rows = Vec::new();
    if let Some(w) = &served.wired {
        rows.push(serde_json::json!({
            "type": "wired",
            "listen": w.local_addr().map(|a| vec![a.to_string()]).unwrap_or_default(),
            "peers": count(TransportType::Wired),
        }));
    }
    if let Some(t) = &served.internet {
        let me = t.libp2p_peer_id();
        let listen: Vec<String> = t
            .listen_addrs()
            .into_iter()
            .map(|a| format!("{a}/p2p/{me}"))
            .collect();
        rows.push(serde_json::json!({
            "type": "internet",
            "listen": listen,
            "peers": count(TransportType::Internet),
        }));
    }
    if let Some((t, duty)) = &served.lora {
        let allowed = duty.allowance_ms();
        let lora = match tokio::time::timeout(LORA_STATUS_WAIT, t.status()).await {
            Ok(Ok(s)) => serde_json::json!({
                "airtime_used_ms": s.airtime_used_ms,
                "airtime_allowed_ms": allowed,
                "duty_cycle_used": if allowed == 0 { 0.0 } else { s.airtime_used_ms as f64 / duty.window_ms as f64 },
                "duty_cycle_budget": f64::from(duty.permille.min(1000)) / 1000.0,
                "window_secs": duty.window_ms / 1000,
                "queued": s.queued,
            }),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "LoRa status unavailable");
                serde_json::Value::Null
            }
            Err(_) => serde_json::Value::Null,
        };
        rows.push(serde_json::json!({
            "type": "lora",
            "listen": [],
            "peers": count(TransportType::Lora),
            "lora": lora,
        }));
    }
    if let Some(adapter) = &served.ble_adapter {
        rows.push(serde_json::json!({
            "type": "bluetooth",
            "listen": [],
            "adapter": adapter,
            "peers": count(TransportType::Bluetooth),
        }));
    }
    Ok(Json(serde_json::json!({ "transports": rows })))
}
