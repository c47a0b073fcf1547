//! Long-lived message streams (`/ecomesh/msg/1.0.0`, wire form in [`crate::protocol`]):
//! messages to a peer that lists the protocol go through a bounded queue to one writer
//! task per peer, which keeps one outbound stream open and writes the queued messages as
//! frames, several at a time; every inbound stream gets a reader task that decodes its
//! frames (bounded, typed errors) and hands the messages to the listeners. Neither runs
//! in the swarm task: a stream is opened and accepted through a `libp2p_stream::Control`.

use std::sync::Arc;
use std::time::Duration;

use ecomesh_types::{NetworkMessage, PeerId, TransportEvent};
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{Stream, Swarm};
use libp2p_stream::{Control, IncomingStreams, OpenStreamError};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::behaviour::Behaviour;
use crate::error::InternetError;
use crate::peer_id::ecomesh_peer_id;
use crate::protocol::{self, MESSAGE_PROTOCOL, Request, Response};

use super::command::{self, Command};
use super::state::{Inner, State, lock};

/// Inbound message streams one peer may hold open at once; more are dropped (reset).
/// One is the norm; a few cover a writer's reopen while the old stream is still closing.
const MAX_INBOUND_PER_PEER: usize = 4;
/// Encoded bytes of queued messages a writer takes for one write.
const BATCH_BYTES: usize = 1 << 20;
/// Messages whose encoding is smaller than this are copied into the write buffer beside
/// their frame heads (one write for many); larger ones are written from their encoding.
const COPY_MAX: usize = 16 << 10;
/// Attempts to open a stream before a batch is given up.
const OPEN_ATTEMPTS: u32 = 3;
/// First pause between those attempts; doubles.
const OPEN_BACKOFF: Duration = Duration::from_millis(50);

/// The stream control of a freshly built swarm, and the inbound message streams when
/// `message_streams` is on (registering the protocol makes identify list it).
pub(super) fn control_of(
    inner: &Inner,
    swarm: &Swarm<Behaviour>,
) -> Result<(Option<Control>, Option<IncomingStreams>), InternetError> {
    if !inner.config.message_streams {
        return Ok((None, None));
    }
    let mut control = swarm.behaviour().streams.new_control();
    let incoming = control
        .accept(MESSAGE_PROTOCOL)
        .map_err(|e| InternetError::Setup(e.to_string()))?;
    Ok((Some(control), Some(incoming)))
}

/// Forgets every writer and the acceptor at `stop`: the writers' queues close, so they
/// drain and end, and no inbound stream is accepted any more.
pub(super) fn stop(st: &mut State) {
    st.streams = None;
    st.writers.clear();
    st.stream_capable.clear();
    if let Some(t) = st.accept_task.take() {
        t.abort();
    }
}

/// The queue of `peer`'s stream writer, started if none runs; `None` when messages to
/// the peer go over request-response (streams off, or the peer does not list the
/// protocol).
pub(super) fn writer_for(
    inner: &Arc<Inner>,
    st: &mut State,
    peer: PeerId,
    lp: libp2p::PeerId,
) -> Option<mpsc::Sender<NetworkMessage>> {
    if !st.stream_capable.contains(&peer) {
        return None;
    }
    let control = st.streams.clone()?;
    if let Some(tx) = st.writers.get(&peer)
        && !tx.is_closed()
    {
        return Some(tx.clone());
    }
    let (tx, rx) = mpsc::channel(inner.config.send_queue.max(1));
    tokio::spawn(run_writer(inner.clone(), control, peer, lp, rx));
    st.writers.insert(peer, tx.clone());
    Some(tx)
}

/// Why no stream could be opened.
enum OpenFailure {
    /// The peer does not speak the protocol (negotiation failed).
    Unsupported,
    /// The peer is no longer listed (lost, disconnected or the transport stopped).
    Gone,
    /// Every attempt failed.
    Failed(String),
}

fn listed(inner: &Inner, peer: &PeerId) -> bool {
    let st = lock(&inner.state);
    st.active && st.peers.contains_key(peer)
}

async fn open(
    inner: &Inner,
    control: &mut Control,
    peer: &PeerId,
    lp: libp2p::PeerId,
) -> Result<Stream, OpenFailure> {
    let mut last = String::new();
    let mut pause = OPEN_BACKOFF;
    for attempt in 0..OPEN_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        // Only listed peers: the control would dial a peer it is not connected to.
        if !listed(inner, peer) {
            return Err(OpenFailure::Gone);
        }
        let opening = control.open_stream(lp, MESSAGE_PROTOCOL);
        match tokio::time::timeout(inner.config.request_timeout, opening).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(OpenStreamError::UnsupportedProtocol(_))) => {
                return Err(OpenFailure::Unsupported);
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".to_owned(),
        }
        tracing::debug!(%peer, attempt, error = %last, "opening a message stream failed");
    }
    Err(OpenFailure::Failed(last))
}

/// Writes `batch` as frames: small messages copied into `buf` beside the heads and
/// written together, a large one written from its own encoding after the pending
/// bytes. A message over the frame limit (`check_size` let it through) is skipped.
async fn write_batch(
    stream: &mut Stream,
    batch: &[NetworkMessage],
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<()> {
    buf.clear();
    for m in batch {
        let encoded = ecomesh_wire::encode_message(m);
        let head = match protocol::message_frame_head(encoded.len(), max) {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(id = ?m.id, error = %e, "message over the frame limit not sent");
                continue;
            }
        };
        buf.extend_from_slice(&head);
        if encoded.len() < COPY_MAX {
            buf.extend_from_slice(&encoded);
        } else {
            stream.write_all(&buf[..]).await?;
            buf.clear();
            stream.write_all(&encoded).await?;
        }
    }
    if !buf.is_empty() {
        stream.write_all(&buf[..]).await?;
    }
    stream.flush().await
}

/// One peer's writer: takes what is queued (up to [`BATCH_BYTES`]), writes it on the
/// stream (opened when needed; after a failure reopened and the batch written once more,
/// duplicates being dropped by the mesh), and closes the stream after `idle_timeout`
/// without messages so the connection can idle out. With a peer that turns out not to
/// speak the protocol it sends what is queued as requests and ends.
async fn run_writer(
    inner: Arc<Inner>,
    mut control: Control,
    peer: PeerId,
    lp: libp2p::PeerId,
    mut rx: mpsc::Receiver<NetworkMessage>,
) {
    let max = inner.config.max_message_size + protocol::BODY_OVERHEAD;
    let mut stream: Option<Stream> = None;
    let mut batch: Vec<NetworkMessage> = Vec::new();
    let mut buf = Vec::new();
    loop {
        let first = match tokio::time::timeout(inner.config.idle_timeout, rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => {
                if let Some(mut s) = stream.take() {
                    let _ = s.close().await;
                }
                continue;
            }
        };
        let mut bytes = ecomesh_wire::encoded_message_len(&first);
        batch.push(first);
        while bytes < BATCH_BYTES {
            let Ok(m) = rx.try_recv() else { break };
            bytes += ecomesh_wire::encoded_message_len(&m);
            batch.push(m);
        }
        let mut written = false;
        for _ in 0..2 {
            if stream.is_none() {
                match open(&inner, &mut control, &peer, lp).await {
                    Ok(s) => stream = Some(s),
                    Err(OpenFailure::Unsupported) => {
                        tracing::info!(%peer, "peer does not take message streams; using requests");
                        lock(&inner.state).stream_capable.remove(&peer);
                        rx.close();
                        send_as_requests(&inner, peer, lp, std::mem::take(&mut batch), rx).await;
                        return;
                    }
                    Err(OpenFailure::Gone) => {
                        rx.close();
                        let mut dropped = batch.len();
                        while rx.try_recv().is_ok() {
                            dropped += 1;
                        }
                        tracing::debug!(%peer, dropped, "peer gone: queued messages dropped");
                        return;
                    }
                    Err(OpenFailure::Failed(e)) => {
                        tracing::debug!(%peer, error = %e, "no message stream");
                        break;
                    }
                }
            }
            let Some(s) = stream.as_mut() else { break };
            let write = write_batch(s, &batch, &mut buf, max);
            match tokio::time::timeout(inner.config.request_timeout, write).await {
                Ok(Ok(())) => {
                    written = true;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "message stream failed"),
                Err(_) => tracing::debug!(%peer, "message stream write timed out"),
            }
            stream = None;
        }
        if !written {
            tracing::warn!(%peer, messages = batch.len(), "message stream failed: messages dropped");
        }
        batch.clear();
    }
    if let Some(mut s) = stream {
        let _ = s.close().await;
    }
}

/// Sends `first` then the rest of the closed queue `rx` as request-response exchanges,
/// in order (the fallback for a peer without message streams).
async fn send_as_requests(
    inner: &Inner,
    peer: PeerId,
    lp: libp2p::PeerId,
    first: Vec<NetworkMessage>,
    mut rx: mpsc::Receiver<NetworkMessage>,
) {
    let mut pending = first.into_iter();
    while let Some(message) = match pending.next() {
        Some(m) => Some(m),
        None => rx.recv().await,
    } {
        let r = command::call(inner, |reply| Command::Request {
            peer: lp,
            request: Request::Message(message),
            reply,
        })
        .await;
        match r {
            Ok(Ok(Response::Ack)) => {}
            other => {
                tracing::debug!(%peer, result = ?other.map(|r| r.map(|_| ())), "message request failed")
            }
        }
    }
    let mut st = lock(&inner.state);
    if st.writers.get(&peer).is_some_and(mpsc::Sender::is_closed) {
        st.writers.remove(&peer);
    }
}

/// Takes the inbound message streams and starts a reader per stream, at most
/// [`MAX_INBOUND_PER_PEER`] per peer.
pub(super) fn spawn_acceptor(inner: Arc<Inner>, mut incoming: IncomingStreams) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some((lp, stream)) = incoming.next().await {
            let admitted = {
                let mut st = lock(&inner.state);
                let n = st.inbound_streams.entry(lp).or_default();
                *n += 1;
                *n <= MAX_INBOUND_PER_PEER
            };
            let guard = InboundGuard {
                inner: inner.clone(),
                lp,
            };
            if !admitted {
                tracing::debug!(peer = %lp, "too many message streams; one dropped");
                continue;
            }
            tokio::spawn(run_reader(inner.clone(), lp, stream, guard));
        }
    })
}

/// Counts one inbound stream of a peer while it lives.
struct InboundGuard {
    inner: Arc<Inner>,
    lp: libp2p::PeerId,
}

impl Drop for InboundGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.inner.state);
        if let Some(n) = st.inbound_streams.get_mut(&self.lp) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.inbound_streams.remove(&self.lp);
            }
        }
    }
}

/// Reads the frames of one inbound message stream until it ends or breaks the protocol
/// (a frame over the limit, a body that is not a message: logged, stream dropped).
async fn run_reader(
    inner: Arc<Inner>,
    lp: libp2p::PeerId,
    mut stream: Stream,
    _guard: InboundGuard,
) {
    let Ok(from) = ecomesh_peer_id(&lp) else {
        return;
    };
    if !inner.policy.allows(&from) {
        return;
    }
    // A stream, like a request, proves the peer accepted the connection.
    if !lock(&inner.state).peers.contains_key(&from) {
        let _ = command::call(&inner, |reply| Command::Register { peer: lp, reply }).await;
    }
    let max = inner.config.max_message_size + protocol::BODY_OVERHEAD;
    loop {
        let body = match protocol::read_frame(&mut stream, max).await {
            Ok(b) => b,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::debug!(peer = %from, error = %e, "message stream ended");
                }
                return;
            }
        };
        match protocol::decode_stream_message(&body, max) {
            Ok(message) => inner
                .listeners
                .emit(&TransportEvent::Message { from, message }),
            Err(e) => {
                tracing::debug!(peer = %from, error = %e, "bad frame on a message stream; dropped");
                return;
            }
        }
    }
}
