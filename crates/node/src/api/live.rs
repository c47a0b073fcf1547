//! `GET /api/v1/ws`: live subscriptions over a WebSocket, served from
//! `ecomesh-sync`'s watches ([`Node::watch_doc`], [`Node::watch_query`]) and
//! its sync events ([`Node::sync_events`]).
//!
//! The client sends JSON text frames (`subscribe`, `unsubscribe`); the server
//! answers `subscribed`/`unsubscribed`, then `snapshot`s or `event`s, and
//! `error`s (see `docs/api.md`, WebSocket).
//!
//! A slow client never makes the node buffer without bound:
//! - snapshots are states, so each subscription keeps only its latest unsent
//!   one (an older unsent snapshot is replaced, as Firestore does);
//! - sync events are a stream, so each sync subscription queues at most
//!   [`EVENT_QUEUE`] of them; the ones that do not fit (and those the node's
//!   own bounded event channel dropped) are counted and reported as one
//!   `events_dropped` error naming how many, after which the client should
//!   re-read the state it tracks (`GET /api/v1/sync`, `GET /api/v1/peers`);
//! - acknowledgements and errors wait in a queue of [`CONTROL_QUEUE`]; when
//!   it is full the server stops reading the client's frames until it drains;
//! - a send that takes longer than [`SEND_TIMEOUT`] closes the connection.
//!
//! [`Node::watch_doc`]: ecomesh_sync::Node::watch_doc
//! [`Node::watch_query`]: ecomesh_sync::Node::watch_query
//! [`Node::sync_events`]: ecomesh_sync::Node::sync_events

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use ecomesh_sync::{
    DocSnapshot, Operation, OwnClock, QuerySnapshot, SyncEvent, SyncState, VersionEvent,
};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value as Json, json};
use tokio::sync::Notify;

use super::ApiState;
use super::error::ApiError;
use super::json::cid_json;
use super::query::{doc_json, query_from_json};

/// Most WebSocket connections open at once on a node; the next upgrade is
/// refused with HTTP 503 `too_many_connections`.
pub const MAX_CONNECTIONS: usize = 128;
/// Most subscriptions open at once on one connection; the next `subscribe`
/// gets `too_many_subscriptions`.
pub const MAX_SUBSCRIPTIONS: usize = 256;
/// Largest frame (and message) a client may send, in bytes; a larger one
/// gets `frame_too_large` and the connection is closed (code 1009).
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest subscription id (`sub`), in bytes.
pub const MAX_SUB_ID: usize = 128;
/// Sync events queued per sync subscription for a client that reads slowly;
/// beyond it events are dropped and counted (`events_dropped`).
pub const EVENT_QUEUE: usize = 256;
/// Acknowledgements and errors waiting to be sent; while it is full the
/// server reads no more frames from the client.
pub const CONTROL_QUEUE: usize = 64;
/// How often the server pings the client.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// A connection from which nothing (not even a pong) arrives for this long
/// is closed with `idle_timeout`.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A single send that takes longer than this closes the connection.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// The WebSocket route, `/ws` (under `/api/v1`), with its own count of open
/// connections.
pub(crate) fn routes() -> Router<Arc<ApiState>> {
    let open = Arc::new(AtomicUsize::new(0));
    Router::new().route(
        "/ws",
        get(
            move |state: State<Arc<ApiState>>,
                  ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>| {
                upgrade(state, ws, open.clone())
            },
        ),
    )
}

/// One of the node's [`MAX_CONNECTIONS`] connection slots, released on drop.
struct ConnSlot(Arc<AtomicUsize>);

impl ConnSlot {
    fn take(open: &Arc<AtomicUsize>) -> Option<ConnSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONNECTIONS).then_some(n + 1)
        })
        .ok()
        .map(|_| ConnSlot(open.clone()))
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn upgrade(
    State(state): State<Arc<ApiState>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    open: Arc<AtomicUsize>,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            return ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                format!(
                    "this route speaks WebSocket only ({}); send a GET with \
                     `Connection: Upgrade` and `Upgrade: websocket`",
                    e.body_text()
                ),
            )
            .into_response();
        }
    };
    let Some(slot) = ConnSlot::take(&open) else {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            format!(
                "this node serves at most {MAX_CONNECTIONS} WebSocket connections at once; \
                 close one, or share subscriptions over one connection"
            ),
        )
        .into_response();
    };
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            serve(state, socket).await;
        })
}

/// A snapshot waiting to be sent.
enum Snap {
    Doc(DocSnapshot),
    Query(QuerySnapshot),
    /// A numbered stand-in for the outbox's unit tests (the sync crate's
    /// snapshots cannot be built outside it).
    #[cfg(test)]
    Test(usize),
}

/// What one subscription has waiting.
struct Slot {
    /// Tells this subscription from an earlier one of the same id.
    serial: u64,
    /// The latest unsent snapshot (older ones are replaced).
    snapshot: Option<Snap>,
    /// Unsent sync events, at most [`EVENT_QUEUE`].
    events: VecDeque<SyncEvent>,
    /// Sync events dropped since the last `events_dropped` report.
    dropped: u64,
    /// Holds back what arrives until the `subscribed` acknowledgement is queued.
    held: bool,
}

impl Slot {
    fn has_work(&self) -> bool {
        self.snapshot.is_some() || !self.events.is_empty() || self.dropped > 0
    }
}

#[derive(Default)]
struct Queue {
    /// Acknowledgements and errors, sent before anything else.
    control: VecDeque<Json>,
    /// Live subscriptions by id.
    subs: HashMap<String, Slot>,
    /// Subscriptions with something to send, in turn (each at most once).
    ready: VecDeque<String>,
    /// Close the connection once `control` is sent.
    closing: Option<(u16, &'static str)>,
}

impl Queue {
    fn mark_ready(&mut self, sub: &str) {
        if !self.ready.iter().any(|s| s == sub) {
            self.ready.push_back(sub.to_owned());
        }
    }
}

/// What the writer sends next.
enum Out {
    Json(Json),
    Snapshot(String, Snap),
    Event(String, SyncEvent),
    Dropped(String, u64),
    Close(u16, &'static str),
}

/// The per-connection outbox shared by the reader, the subscription tasks
/// and the writer.
#[derive(Default)]
struct Outbox {
    queue: Mutex<Queue>,
    /// Something was queued.
    ready: Notify,
    /// Room was made in `control`.
    space: Notify,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an acknowledgement or error, waiting while [`CONTROL_QUEUE`] are queued.
    async fn control(&self, msg: Json) {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            {
                let mut q = self.lock();
                if q.control.len() < CONTROL_QUEUE {
                    q.control.push_back(msg);
                    drop(q);
                    self.ready.notify_one();
                    return;
                }
            }
            space.await;
        }
    }

    /// Queues an error for `sub` (or the connection), then closes it.
    fn close_with(&self, code: u16, reason: &'static str, error: Json) {
        let mut q = self.lock();
        q.control.push_back(error);
        q.closing = Some((code, reason));
        drop(q);
        self.ready.notify_one();
    }

    fn open(&self, sub: &str, serial: u64) {
        self.lock().subs.insert(
            sub.to_owned(),
            Slot {
                serial,
                snapshot: None,
                events: VecDeque::new(),
                dropped: 0,
                held: true,
            },
        );
    }

    /// Lets subscription `sub` send what it holds (its acknowledgement is queued).
    fn release(&self, sub: &str) {
        let mut q = self.lock();
        let Some(slot) = q.subs.get_mut(sub) else {
            return;
        };
        slot.held = false;
        if slot.has_work() {
            q.mark_ready(sub);
            drop(q);
            self.ready.notify_one();
        }
    }

    fn remove(&self, sub: &str) {
        let mut q = self.lock();
        q.subs.remove(sub);
        q.ready.retain(|s| s != sub);
    }

    /// Runs `f` on subscription `sub` if it is still the one numbered
    /// `serial`, then marks it ready if it has something to send.
    fn with_slot(&self, sub: &str, serial: u64, f: impl FnOnce(&mut Slot)) {
        let mut q = self.lock();
        let Some(slot) = q.subs.get_mut(sub).filter(|s| s.serial == serial) else {
            return;
        };
        f(slot);
        if slot.has_work() && !slot.held {
            q.mark_ready(sub);
            drop(q);
            self.ready.notify_one();
        }
    }

    fn snapshot(&self, sub: &str, serial: u64, snap: Snap) {
        self.with_slot(sub, serial, |slot| slot.snapshot = Some(snap));
    }

    fn event(&self, sub: &str, serial: u64, event: SyncEvent) {
        self.with_slot(sub, serial, |slot| match event {
            SyncEvent::Lagged(n) => slot.dropped = slot.dropped.saturating_add(n),
            _ if slot.events.len() >= EVENT_QUEUE => slot.dropped = slot.dropped.saturating_add(1),
            event => slot.events.push_back(event),
        });
    }

    /// The next message: control first, then the subscriptions in turn
    /// (one item each), then the close.
    async fn next(&self) -> Out {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if let Some(out) = self.pop() {
                return out;
            }
            ready.await;
        }
    }

    fn pop(&self) -> Option<Out> {
        let mut q = self.lock();
        if let Some(m) = q.control.pop_front() {
            drop(q);
            self.space.notify_one();
            return Some(Out::Json(m));
        }
        if let Some((code, reason)) = q.closing {
            return Some(Out::Close(code, reason));
        }
        while let Some(sub) = q.ready.pop_front() {
            let Some(slot) = q.subs.get_mut(&sub) else {
                continue;
            };
            let out = if slot.dropped > 0 {
                Out::Dropped(sub.clone(), std::mem::take(&mut slot.dropped))
            } else if let Some(s) = slot.snapshot.take() {
                Out::Snapshot(sub.clone(), s)
            } else if let Some(e) = slot.events.pop_front() {
                Out::Event(sub.clone(), e)
            } else {
                continue;
            };
            if slot.has_work() {
                q.ready.push_back(sub);
            }
            return Some(out);
        }
        None
    }
}

/// An error message: `{"type":"error","sub":...,"error":{"kind","message"}}`.
fn error_msg(sub: Option<&str>, kind: &str, message: impl Into<String>) -> Json {
    json!({
        "type": "error",
        "sub": sub,
        "error": { "kind": kind, "message": message.into() },
    })
}

fn api_error_msg(sub: Option<&str>, e: &ApiError) -> Json {
    error_msg(sub, e.kind, e.message.clone())
}

/// Serves one upgraded connection until either side closes it.
async fn serve(state: Arc<ApiState>, socket: WebSocket) {
    let (sink, stream) = socket.split();
    let outbox = Arc::new(Outbox::default());
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone()));
    let mut conn = Conn {
        state,
        outbox: outbox.clone(),
        subs: HashMap::new(),
        serial: 0,
    };
    let closed_by_us = tokio::select! {
        c = conn.read_loop(stream) => c,
        _ = &mut writer => return,
    };
    // Dropping the subscriptions stops their tasks.
    conn.subs.clear();
    if closed_by_us {
        // Let the writer send the last error and the close frame.
        if tokio::time::timeout(SEND_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
    } else {
        writer.abort();
    }
}

type Sink = SplitSink<WebSocket, Message>;

/// Sends what the outbox holds, and a ping every [`PING_INTERVAL`]; ends on
/// a failed or slow (beyond [`SEND_TIMEOUT`]) send, or after a close.
async fn write_loop(mut sink: Sink, outbox: Arc<Outbox>) {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            out = outbox.next() => render(out),
            _ = ping.tick() => Message::Ping(Default::default()),
        };
        let close = matches!(msg, Message::Close(_));
        match tokio::time::timeout(SEND_TIMEOUT, sink.send(msg)).await {
            Ok(Ok(())) if !close => {}
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "WebSocket send failed");
                return;
            }
            Err(_) => {
                tracing::info!("WebSocket client too slow to read: closing");
                return;
            }
        }
    }
}

fn text(v: &Json) -> Message {
    Message::Text(v.to_string().into())
}

fn render(out: Out) -> Message {
    match out {
        Out::Json(v) => text(&v),
        Out::Close(code, reason) => Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })),
        Out::Dropped(sub, n) => text(&error_msg(
            Some(&sub),
            "events_dropped",
            format!(
                "{n} sync events were dropped because this client read too slowly \
                 (at most {EVENT_QUEUE} wait per subscription); re-read the state you track \
                 (GET /api/v1/sync, GET /api/v1/peers)"
            ),
        )),
        Out::Snapshot(sub, snap) => match snapshot_json(&sub, &snap) {
            Ok(v) => text(&v),
            Err(e) => text(&api_error_msg(Some(&sub), &e)),
        },
        Out::Event(sub, ev) => text(&json!({
            "type": "event",
            "sub": sub,
            "event": event_json(&ev),
        })),
    }
}

fn snapshot_json(sub: &str, snap: &Snap) -> Result<Json, ApiError> {
    Ok(match snap {
        Snap::Doc(s) => json!({
            "type": "snapshot",
            "sub": sub,
            "doc": s.document.as_ref().map(doc_json).transpose()?,
            "pending_writes": s.has_pending_writes,
        }),
        Snap::Query(s) => json!({
            "type": "snapshot",
            "sub": sub,
            "documents": s.documents.iter().map(doc_json).collect::<Result<Vec<_>, _>>()?,
            "pending_writes": s.has_pending_writes,
        }),
        #[cfg(test)]
        Snap::Test(n) => json!({ "type": "snapshot", "sub": sub, "test": n }),
    })
}

fn state_name(s: SyncState) -> &'static str {
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

fn version_json(kind: &str, v: &VersionEvent) -> Json {
    let operation = match v.operation {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        _ => "unknown",
    };
    json!({
        "kind": kind,
        "collection": v.collection,
        "id": v.id,
        "operation": operation,
        "peer": v.peer.to_string(),
        "transport": v.transport.map(|t| t.to_string()),
        "version": cid_json(&v.version),
    })
}

/// A sync event as JSON: `{"kind": "...", ...}` (see docs/api.md).
/// `Lagged` never gets here: the outbox counts it into `events_dropped`.
fn event_json(ev: &SyncEvent) -> Json {
    match ev {
        SyncEvent::VersionReceived(v) => version_json("version_received", v),
        SyncEvent::VersionSent(v) => version_json("version_sent", v),
        SyncEvent::PeerState { peer, from, to } => json!({
            "kind": "peer_state",
            "peer": peer.to_string(),
            "from": state_name(*from),
            "to": state_name(*to),
        }),
        SyncEvent::NodeState { from, to } => json!({
            "kind": "node_state",
            "from": state_name(*from),
            "to": state_name(*to),
        }),
        SyncEvent::ClockSkew {
            peer,
            skew_ms,
            skewed,
        } => json!({
            "kind": "clock_skew",
            "peer": peer.to_string(),
            "skew_ms": skew_ms,
            "skewed": skewed,
        }),
        SyncEvent::OwnClock(own) => {
            let (verdict, by_ms) = match own {
                OwnClock::Unknown => ("unknown", None),
                OwnClock::Agrees => ("agrees", None),
                OwnClock::Ahead { by_ms } => ("ahead", Some(*by_ms)),
                OwnClock::Behind { by_ms } => ("behind", Some(*by_ms)),
                _ => ("unknown", None),
            };
            json!({ "kind": "own_clock", "verdict": verdict, "by_ms": by_ms })
        }
        SyncEvent::PrimaryConflict {
            collection,
            id,
            version,
        } => json!({
            "kind": "primary_conflict",
            "collection": collection,
            "id": id,
            "version": cid_json(version),
        }),
        SyncEvent::CapabilityRefused {
            peer,
            collection,
            action,
        } => json!({
            "kind": "capability_refused",
            "peer": peer.to_string(),
            "collection": collection,
            "action": action,
        }),
        other => json!({ "kind": "unknown", "debug": format!("{other:?}") }),
    }
}

/// A subscription's forwarding task, stopped when dropped.
struct Sub(tokio::task::JoinHandle<()>);

impl Drop for Sub {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The reading side of a connection: its subscriptions.
struct Conn {
    state: Arc<ApiState>,
    outbox: Arc<Outbox>,
    subs: HashMap<String, Sub>,
    serial: u64,
}

/// What a subscribe frame asks for.
enum Target {
    Doc { collection: String, id: String },
    Query { collection: String, query: Json },
    Sync,
}

impl Conn {
    /// Reads frames until the client closes (`false`) or the server closes
    /// the connection for a reason it has queued (`true`).
    async fn read_loop(&mut self, mut stream: SplitStream<WebSocket>) -> bool {
        loop {
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, stream.next()).await {
                Err(_) => {
                    self.outbox.close_with(
                        close_code::POLICY,
                        "idle",
                        error_msg(
                            None,
                            "idle_timeout",
                            format!(
                                "nothing arrived for {} s (answer pings, or send frames)",
                                IDLE_TIMEOUT.as_secs()
                            ),
                        ),
                    );
                    return true;
                }
                Ok(None) => return false,
                Ok(Some(Err(e))) => return self.read_failed(e),
                Ok(Some(Ok(m))) => m,
            };
            match frame {
                Message::Text(t) => self.on_text(t.as_str()).await,
                Message::Binary(_) => {
                    self.outbox
                        .control(error_msg(
                            None,
                            "bad_frame",
                            "send JSON in text frames, not binary ones",
                        ))
                        .await;
                }
                Message::Ping(_) | Message::Pong(_) => {}
                Message::Close(_) => return false,
            }
        }
    }

    /// A read error: an oversized frame is reported before closing; anything
    /// else means the connection is gone.
    fn read_failed(&self, e: axum::Error) -> bool {
        let inner = e.into_inner();
        let too_big = inner
            .downcast_ref::<tungstenite::Error>()
            .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)));
        if too_big {
            self.outbox.close_with(
                close_code::SIZE,
                "frame too large",
                error_msg(
                    None,
                    "frame_too_large",
                    format!("frames and messages are limited to {MAX_FRAME} bytes ({inner})"),
                ),
            );
            return true;
        }
        tracing::debug!(error = %inner, "WebSocket read failed");
        false
    }

    async fn on_text(&mut self, text: &str) {
        match self.handle(text) {
            Ok((ack, opened)) => {
                self.outbox.control(ack).await;
                if let Some(sub) = opened {
                    self.outbox.release(&sub);
                }
            }
            Err((sub, e)) => self.outbox.control(api_error_msg(sub.as_deref(), &e)).await,
        }
    }

    /// Handles one client message; returns the acknowledgement and the
    /// subscription it opened, or the error and the subscription id it concerns.
    fn handle(&mut self, text: &str) -> Result<(Json, Option<String>), (Option<String>, ApiError)> {
        let msg: Json = serde_json::from_str(text).map_err(|e| {
            (
                None,
                ApiError::bad_json(format!("a frame must be one JSON object: {e}")),
            )
        })?;
        let sub = msg.get("sub").and_then(Json::as_str).map(str::to_owned);
        let fail = |e: ApiError| (sub.clone(), e);
        let Some(kind) = msg.get("type").and_then(Json::as_str) else {
            return Err(fail(ApiError::bad_request(
                "a frame needs \"type\": \"subscribe\" or \"unsubscribe\"",
            )));
        };
        if kind != "subscribe" && kind != "unsubscribe" {
            return Err(fail(ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_type",
                format!("unknown message type {kind:?}: use \"subscribe\" or \"unsubscribe\""),
            )));
        }
        let Some(id) = sub.clone() else {
            return Err(fail(ApiError::bad_request(
                "a frame needs \"sub\": a string naming the subscription",
            )));
        };
        if id.is_empty() || id.len() > MAX_SUB_ID {
            return Err(fail(ApiError::bad_request(format!(
                "\"sub\" must be 1 to {MAX_SUB_ID} bytes long"
            ))));
        }
        if kind == "unsubscribe" {
            if self.subs.remove(&id).is_none() {
                return Err(fail(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "unknown_subscription",
                    format!("no subscription {id:?} is open on this connection"),
                )));
            }
            self.outbox.remove(&id);
            return Ok((json!({ "type": "unsubscribed", "sub": id }), None));
        }
        let target = target(&msg).map_err(fail)?;
        self.subscribe(&id, target).map_err(fail)?;
        Ok((json!({ "type": "subscribed", "sub": id }), Some(id)))
    }

    /// Opens subscription `id`, held until [`Outbox::release`]: the watch is
    /// made now (so errors answer the frame), its task forwards into the outbox.
    fn subscribe(&mut self, id: &str, target: Target) -> Result<(), ApiError> {
        if self.subs.contains_key(id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_subscription",
                format!(
                    "subscription {id:?} is already open on this connection; unsubscribe first or pick another id"
                ),
            ));
        }
        if self.subs.len() >= MAX_SUBSCRIPTIONS {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_subscriptions",
                format!(
                    "a connection holds at most {MAX_SUBSCRIPTIONS} subscriptions; unsubscribe from one first"
                ),
            ));
        }
        self.serial += 1;
        let serial = self.serial;
        let sub = id.to_owned();
        // The slot opens before the task can fill it.
        self.outbox.open(id, serial);
        let task = self
            .spawn(target, sub, serial)
            .inspect_err(|_| self.outbox.remove(id))?;
        self.subs.insert(id.to_owned(), Sub(task));
        Ok(())
    }

    /// Makes the watch of `target` and spawns the task forwarding it into
    /// subscription `sub` numbered `serial`.
    fn spawn(
        &self,
        target: Target,
        sub: String,
        serial: u64,
    ) -> Result<tokio::task::JoinHandle<()>, ApiError> {
        let outbox = self.outbox.clone();
        let node = self.state.node();
        Ok(match target {
            Target::Doc { collection, id } => {
                let mut watch = node.watch_doc(&collection, &id)?;
                tokio::spawn(async move {
                    while let Some(s) = watch.next().await {
                        outbox.snapshot(&sub, serial, Snap::Doc(s));
                    }
                })
            }
            Target::Query { collection, query } => {
                let query = query_from_json(&query)?;
                let mut watch = node.watch_query(&collection, query)?;
                tokio::spawn(async move {
                    while let Some(s) = watch.next().await {
                        outbox.snapshot(&sub, serial, Snap::Query(s));
                    }
                })
            }
            Target::Sync => {
                let mut events = node.sync_events();
                tokio::spawn(async move {
                    while let Some(e) = events.next().await {
                        outbox.event(&sub, serial, e);
                    }
                })
            }
        })
    }
}

fn text_field(v: &Json, key: &str, what: &str) -> Result<String, ApiError> {
    v.get(key)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request(format!("{what} needs a non-empty \"{key}\" string")))
}

/// The target of a subscribe frame: exactly one of `doc`, `query`, `sync`.
fn target(msg: &Json) -> Result<Target, ApiError> {
    let doc = msg.get("doc");
    let query = msg.get("query");
    let sync = msg.get("sync");
    let named = [doc, query, sync].iter().filter(|t| t.is_some()).count();
    if named != 1 {
        return Err(ApiError::bad_request(
            "a subscribe names exactly one of \"doc\", \"query\" or \"sync\"",
        ));
    }
    if let Some(d) = doc {
        return Ok(Target::Doc {
            collection: text_field(d, "collection", "\"doc\"")?,
            id: text_field(d, "id", "\"doc\"")?,
        });
    }
    if let Some(q) = query {
        return Ok(Target::Query {
            collection: text_field(q, "collection", "\"query\"")?,
            query: q.get("query").cloned().unwrap_or_else(|| json!({})),
        });
    }
    if sync.and_then(Json::as_bool) != Some(true) {
        return Err(ApiError::bad_request("\"sync\" must be true"));
    }
    Ok(Target::Sync)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ecomesh_sync::PeerId;

    #[test]
    fn a_primary_conflict_is_forwarded_with_its_document_and_version() {
        let ev = SyncEvent::PrimaryConflict {
            collection: "c".into(),
            id: "k".into(),
            version: ecomesh_sync::ContentId(vec![1, 2, 3]),
        };
        let j = event_json(&ev);
        assert_eq!(j["kind"], "primary_conflict");
        assert_eq!(
            (j["collection"].as_str(), j["id"].as_str()),
            (Some("c"), Some("k"))
        );
        assert_eq!(
            j["version"],
            cid_json(&ecomesh_sync::ContentId(vec![1, 2, 3]))
        );
    }

    fn state_event(b: u8) -> SyncEvent {
        SyncEvent::PeerState {
            peer: PeerId::from_digest([b; 32]),
            from: SyncState::Offline,
            to: SyncState::Connecting,
        }
    }

    #[test]
    fn events_beyond_the_queue_are_counted_and_reported_first() {
        let o = Outbox::default();
        o.open("s", 1);
        o.release("s");
        for i in 0..EVENT_QUEUE + 10 {
            o.event("s", 1, state_event(i as u8));
        }
        o.event("s", 1, SyncEvent::Lagged(5));
        assert!(matches!(o.pop(), Some(Out::Dropped(s, 15)) if s == "s"));
        let mut n = 0;
        while let Some(out) = o.pop() {
            assert!(matches!(out, Out::Event(..)));
            n += 1;
        }
        assert_eq!(n, EVENT_QUEUE);
    }

    #[test]
    fn snapshots_coalesce_and_control_goes_first() {
        let o = Outbox::default();
        o.open("a", 1);
        o.release("a");
        for i in 0..100 {
            o.snapshot("a", 1, Snap::Test(i));
        }
        o.lock()
            .control
            .push_back(json!({"type": "subscribed", "sub": "b"}));
        assert!(matches!(o.pop(), Some(Out::Json(_))));
        assert!(
            matches!(o.pop(), Some(Out::Snapshot(s, Snap::Test(99))) if s == "a"),
            "only the latest snapshot is sent"
        );
        assert!(o.pop().is_none(), "older snapshots were replaced");
        // A stale task (old serial) or a removed subscription queues nothing.
        o.snapshot("a", 0, Snap::Test(1));
        o.remove("a");
        o.snapshot("a", 1, Snap::Test(1));
        assert!(o.pop().is_none());
    }

    #[test]
    fn a_new_subscription_is_held_until_released() {
        let o = Outbox::default();
        o.open("a", 1);
        o.snapshot("a", 1, Snap::Test(7));
        assert!(
            o.pop().is_none(),
            "held until its acknowledgement is queued"
        );
        o.release("a");
        assert!(matches!(o.pop(), Some(Out::Snapshot(_, Snap::Test(7)))));
    }

    #[test]
    fn a_close_waits_for_queued_errors() {
        let o = Outbox::default();
        o.close_with(
            close_code::SIZE,
            "big",
            error_msg(None, "frame_too_large", "x"),
        );
        assert!(matches!(o.pop(), Some(Out::Json(v)) if v["error"]["kind"] == "frame_too_large"));
        assert!(matches!(o.pop(), Some(Out::Close(c, _)) if c == close_code::SIZE));
    }
}
