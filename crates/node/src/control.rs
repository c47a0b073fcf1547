//! The local control protocol between the `ecomesh` CLI and a running node.
//!
//! One request per connection over the node's Unix socket (mode 0600 in the
//! data directory): the client writes one JSON [`Request`] and a newline, the
//! node answers with one JSON [`Response`] and a newline, then closes. A
//! streaming request ([`Request::DocWatch`], blob transfers with `progress`)
//! gets stream items ([`Response::is_stream_item`]) before its answer; read
//! them with [`call_stream`]. Requests
//! longer than [`MAX_REQUEST`] bytes are refused without being buffered whole.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Longest request line the node reads.
pub const MAX_REQUEST: usize = 256 * 1024;
/// Longest response line the CLI reads.
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;
/// Longest text `send` accepts, in bytes.
pub const MAX_TEXT: usize = 64 * 1024;

/// What the CLI asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// The node's state.
    Status,
    /// The peers reachable now.
    Peers,
    /// Seal `text` to `peer` and send it over the mesh.
    Send {
        /// The recipient's peer id (Base58).
        peer: String,
        /// The message.
        text: String,
    },
    /// Messages received.
    Inbox,
    /// Messages sent, with their delivery state.
    Outbox,
    /// Writes a document from a JSON object (DAG-JSON): replaces it, or merges the fields in.
    DocPut {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The fields, as a JSON object.
        json: String,
        /// Merge into the existing document instead of replacing it.
        merge: bool,
    },
    /// Reads a document.
    DocGet {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Deletes a document (a tombstone version).
    DocDelete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Lists a collection's live documents.
    DocList {
        /// The collection.
        collection: String,
    },
    /// Stores the file at `path` as a content-addressed blob of `collection`
    /// and replicates it (shards for large blobs).
    BlobPut {
        /// Absolute path of the file to read.
        path: String,
        /// The collection whose replication factor, pins and reach apply.
        collection: String,
        /// Stream [`Response::Progress`] lines before the answer (read with [`call_stream`]).
        #[serde(default)]
        progress: bool,
    },
    /// Fetches a blob (locally, else from peers) and writes it to `path`.
    BlobGet {
        /// The blob id (`bafkr4i...`).
        id: String,
        /// Absolute path of the file to write.
        path: String,
        /// Stream [`Response::Progress`] lines before the answer (read with [`call_stream`]).
        #[serde(default)]
        progress: bool,
    },
    /// The blobs this node knows.
    BlobList,
    /// Runs blob garbage collection now (seed 5.2 rule).
    BlobGc,
    /// Makes a one-time device-link code: streams [`Response::LinkCode`],
    /// then answers [`Response::Linked`] when another device used it within
    /// `wait_ms` (read with [`call_stream`]).
    LinkNew {
        /// How long the code is accepted, ms.
        ttl_ms: u64,
        /// Longest wait for the other device, ms.
        wait_ms: u64,
        /// The address to put in the code (`HOST:PORT`); default: the wired listen address.
        #[serde(default)]
        address: Option<String>,
    },
    /// Links this node with the device that made `code` ([`Response::Linked`]).
    LinkAccept {
        /// The code, as printed.
        code: String,
        /// Longest wait for the other device, ms.
        timeout_ms: u64,
    },
    /// This node's own devices ([`Response::OwnDevices`]).
    LinkList,
    /// Writes the node's versions after stream position `since` (and with
    /// `blobs` its blobs) as a CARv1 file at `path`; answered with
    /// [`Response::Progress`] lines, then [`Response::Exported`].
    Export {
        /// Absolute path of the file to write (replaced atomically).
        path: String,
        /// Stream position to start after (0: everything).
        since: u64,
        /// Also write the blobs.
        blobs: bool,
    },
    /// Verifies and merges the CARv1 file at `path`; answered with
    /// [`Response::Progress`] lines, then [`Response::Imported`].
    Import {
        /// Absolute path of the file to read.
        path: String,
    },
    /// One page of the node's stream: the versions it took in after position `since`.
    Changes {
        /// Entries after this position (0: from the start).
        since: u64,
        /// Most entries returned.
        limit: usize,
    },
    /// One page of a query (the JSON form of [`crate::api::query`]) over a collection.
    DocQuery {
        /// The collection.
        collection: String,
        /// The query: `{"where", "order_by", "limit", "start_after"}`.
        query: serde_json::Value,
    },
    /// Watches a document (`id`) or a query (`query`, or every document when
    /// both are absent): the node streams a [`Response::Snapshot`] line now
    /// and after every change until the client closes the connection.
    DocWatch {
        /// The collection.
        collection: String,
        /// The document id, to watch one document.
        id: Option<String>,
        /// The query, to watch its results.
        query: Option<serde_json::Value>,
    },
    /// Every version of a document, oldest first.
    DocHistory {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
    /// Sets the relationship with a peer ([`Response::Relation`]).
    RelationSet {
        /// The peer id.
        peer: String,
        /// `family`, `neighbour`, `municipal`, `bioregional` or `stranger`.
        level: String,
    },
    /// Removes the relationship set with a peer ([`Response::Relation`]).
    RelationRemove {
        /// The peer id.
        peer: String,
    },
    /// The node's relationships ([`Response::Relations`]).
    RelationList,
    /// Makes a collection non-public ([`Response::Capabilities`]).
    CapRestrict {
        /// The collection.
        collection: String,
    },
    /// Grants a peer read and/or write on a collection ([`Response::Capability`]).
    CapGrant {
        /// The collection.
        collection: String,
        /// The peer id the token admits.
        peer: String,
        /// Grant read.
        read: bool,
        /// Grant write.
        write: bool,
        /// The token's lifetime, seconds.
        expires_secs: u64,
    },
    /// Installs a token granted elsewhere ([`Response::Capability`]).
    CapInstall {
        /// The token, Base58.
        token: String,
    },
    /// Revokes a token by id ([`Response::Capabilities`]).
    CapRevoke {
        /// 32 hex digits.
        token_id: String,
    },
    /// Restricted collections, tokens and refusals ([`Response::Capabilities`]).
    CapList,
    /// Writes, as a new version, a document's content at an earlier version.
    DocRestore {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
        /// The version's CID (from `doc history`).
        version: String,
    },
}

/// What the node answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    /// The code of [`Request::LinkNew`] (a stream item).
    LinkCode {
        /// The code to type on the other device.
        code: String,
        /// Its lifetime, ms.
        expires_in_ms: u64,
    },
    /// A device was linked as an own device.
    Linked {
        /// The other device's peer id.
        peer_id: String,
        /// The user label both share.
        user: String,
    },
    /// Answer to [`Request::LinkList`].
    OwnDevices {
        /// The user label, once linked.
        user: Option<String>,
        /// The own devices.
        devices: Vec<crate::link::OwnDeviceRow>,
    },
    /// Answer to [`Request::Status`].
    Status(Status),
    /// Answer to [`Request::Peers`].
    Peers {
        /// One row per peer.
        peers: Vec<PeerRow>,
    },
    /// Answer to [`Request::Send`].
    Sent {
        /// The message id.
        id: String,
        /// `"sent"` (handed to a transport) or `"queued"` (store-and-forward).
        outcome: String,
        /// The transport it left on, when sent.
        transport: Option<String>,
    },
    /// Answer to [`Request::Inbox`].
    Inbox {
        /// Oldest first.
        messages: Vec<InboxRow>,
    },
    /// Answer to [`Request::Outbox`].
    Outbox {
        /// Oldest first.
        messages: Vec<OutboxRow>,
    },
    /// Answer to [`Request::DocPut`] and [`Request::DocDelete`].
    Written {
        /// The CID of the new version.
        version: String,
        /// The store's root CID after the write.
        root_cid: String,
    },
    /// Answer to [`Request::DocGet`] and [`Request::DocList`].
    Documents {
        /// The documents found, by id order.
        documents: Vec<DocRow>,
    },
    /// Answer to [`Request::BlobPut`] and [`Request::BlobGet`].
    Blob(BlobRow),
    /// Answer to [`Request::BlobList`].
    Blobs {
        /// One row per blob.
        blobs: Vec<BlobRow>,
    },
    /// Answer to [`Request::BlobGc`].
    BlobGc {
        /// Pieces deleted.
        deleted: usize,
        /// Bytes freed.
        freed_bytes: u64,
        /// Pieces kept.
        kept: usize,
    },
    /// Answer to [`Request::Changes`].
    Changes {
        /// The entries, in position order.
        entries: Vec<ChangeRow>,
        /// The position to ask from next time.
        next: u64,
        /// True when more entries follow `next`.
        more: bool,
    },
    /// Answer to [`Request::DocQuery`]: one page.
    Page {
        /// The matching documents, in query order.
        documents: Vec<DocRow>,
        /// The cursor of the next page (`start_after`), when this page is full.
        next_cursor: Option<String>,
    },
    /// A stream item of [`Request::DocWatch`]: the document (zero or one
    /// row) or the query's results now.
    Snapshot {
        /// The documents.
        documents: Vec<DocRow>,
        /// True while a local write of one of them is not acknowledged by a peer.
        pending_writes: bool,
        /// When the node took the snapshot (Unix ms).
        time_ms: u64,
    },
    /// Answer to [`Request::DocHistory`].
    History {
        /// Oldest first.
        versions: Vec<VersionRow>,
    },
    /// A stream item of a long request: how far it got.
    Progress {
        /// What is being done: `read`, `store`, `fetch`, `write` (blob transfers,
        /// in bytes), `blocks` (an export, in blocks) or `bytes` (an import, bytes
        /// of the file).
        stage: String,
        /// Bytes (or items) done.
        done: u64,
        /// Bytes (or items) in all, when known.
        total: Option<u64>,
    },
    /// Answer to [`Request::RelationList`].
    Relations {
        /// By peer id.
        relations: Vec<crate::relation::RelationRow>,
    },
    /// Answer to [`Request::RelationSet`] and [`Request::RelationRemove`].
    Relation {
        /// The peer's relationship now.
        relation: crate::relation::RelationRow,
        /// For a removal: whether a relationship was set.
        removed: Option<bool>,
    },
    /// Answer to [`Request::CapGrant`] and [`Request::CapInstall`].
    Capability(crate::relation::CapRow),
    /// Answer to [`Request::CapList`], [`Request::CapRestrict`] and [`Request::CapRevoke`].
    Capabilities(crate::relation::CapList),
    /// Answer to [`Request::Export`].
    Exported(crate::sneakernet::ExportRow),
    /// Answer to [`Request::Import`].
    Imported(crate::sneakernet::ImportRow),
    /// The request failed; `message` names the problem and the fix.
    Error {
        /// What went wrong.
        message: String,
    },
}

/// The node's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// This node's peer id.
    pub peer_id: String,
    /// The data directory.
    pub data_dir: String,
    /// Where the wired transport listens.
    pub listen: Option<String>,
    /// Where the internet transport listens, as multiaddrs ending in `/p2p/<id>`
    /// (usable as another node's `--bootstrap`).
    pub internet_listen: Vec<String>,
    /// Transports running.
    pub transports: Vec<String>,
    /// Peers reachable now.
    pub peers: usize,
    /// Messages in the store-and-forward buffer (queued, or sent and not yet acknowledged).
    pub buffered: usize,
    /// Texts accepted into the outbox that wait there for room in the
    /// store-and-forward buffer (or for their recipient to reappear).
    #[serde(default)]
    pub waiting: usize,
    /// Local writes not yet acknowledged by as many partners as their replication factor.
    pub sync_pending: usize,
    /// Messages received.
    pub inbox: usize,
    /// Messages sent and acknowledged by their recipient.
    pub delivered: usize,
    /// Messages sent and not yet acknowledged.
    pub undelivered: usize,
    /// The store's root CID (every collection, local ones included).
    pub root_cid: String,
    /// The root CID over the replicated collections: equal on nodes that converged.
    pub replicated_root: String,
    /// Versions positioned in the node's stream so far.
    pub stream_head: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Each peer's clock offset from this node's, as estimated from its messages.
    #[serde(default)]
    pub clocks: Vec<ClockRow>,
    /// This node's own clock against its peers': `unknown` (fewer than two
    /// peers to compare with), `ok`, or `ahead`/`behind` when more than half of
    /// them (at least two) disagree with it the same way.
    #[serde(default)]
    pub own_clock: String,
    /// How far off this node's clock looks, in ms (0 unless `own_clock` is
    /// `ahead` or `behind`).
    #[serde(default)]
    pub own_clock_off_ms: u64,
    /// The primary this node syncs with (`ecomesh node --primary`): its
    /// address, health, the mode, last sync and queued writes; `None` (JSON
    /// `null`) without one.
    #[serde(default)]
    pub primary: Option<Box<crate::hybrid::PrimaryStatus>>,
    /// The storage: `healthy`, or the databases found damaged at start, where
    /// their files were moved, and what peers have not given back yet.
    #[serde(default)]
    pub storage: Box<crate::storage::StorageStatus>,
}

/// A peer's clock as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockRow {
    /// The peer.
    pub peer_id: String,
    /// Its clock minus this node's, in ms (positive: the peer's clock is ahead).
    pub skew_ms: i64,
    /// Whether the offset is beyond the tolerance (60 s): the peer's writes win
    /// (ahead) or lose (behind) last-writer-wins conflicts with concurrent writes.
    pub skewed: bool,
}

/// A blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRow {
    /// Its id (`bafkr4i...`, blake3).
    pub id: String,
    /// Its collection.
    pub collection: String,
    /// Its length in bytes.
    pub len: u64,
    /// `none`, `chunked` or `rs-4-7`.
    pub encoding: String,
    /// Pieces held on this node, of `pieces`.
    pub held: usize,
    /// Pieces in all.
    pub pieces: usize,
}

/// One entry of the node's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRow {
    /// Its position (1, 2, 3...).
    pub position: u64,
    /// `"local"`, `"new"` or `"backfill"` (seed 001 event kinds).
    pub kind: String,
    /// `"local"`, or the peer id it came from.
    pub source: String,
    /// The version's CID.
    pub version: String,
    /// The document's collection (empty if the version is no longer stored).
    pub collection: String,
    /// The document's id.
    pub id: String,
    /// When its author wrote it (Unix ms; 0 when the version is no longer stored).
    #[serde(default)]
    pub time_ms: u64,
}

/// A reachable peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerRow {
    /// Its peer id.
    pub peer_id: String,
    /// Transports it is reachable on.
    pub transports: Vec<String>,
    /// Its address on the wired transport, if any.
    pub address: Option<String>,
    /// Local reputation, 0.0..=1.0.
    pub reputation: f64,
}

/// A received message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxRow {
    /// The message id.
    pub id: String,
    /// The sender's peer id (verified).
    pub from: String,
    /// The text.
    pub text: String,
    /// When the sender sent it (its clock, Unix ms).
    pub sent_ms: u64,
    /// When this node received it (Unix ms).
    pub received_ms: u64,
}

/// A document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocRow {
    /// The collection.
    pub collection: String,
    /// The document id.
    pub id: String,
    /// The fields, as DAG-JSON.
    pub fields: serde_json::Value,
}

/// One version of a document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRow {
    /// The version's CID.
    pub version: String,
    /// The CIDs of the versions it follows.
    pub parents: Vec<String>,
    /// The peer id of its author.
    pub author: String,
    /// When it was written (its author's hybrid clock, Unix ms).
    pub time_ms: u64,
}

/// A sent message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRow {
    /// The message id.
    pub id: String,
    /// The recipient's peer id.
    pub to: String,
    /// The text.
    pub text: String,
    /// When it was sent (Unix ms).
    pub sent_ms: u64,
    /// `"pending"`, `"delivered"` or `"expired"`.
    pub status: String,
}

/// Sends `request` to the node listening on `socket` and returns its answer;
/// an [`Response::Error`] becomes an `Err`, and so does silence for 60 s.
pub fn call(socket: &Path, request: &Request) -> Result<Response> {
    exchange(socket, request, Some(Duration::from_secs(60)), |item| {
        bail!("the node sent a stream item ({item:?}) where one answer was expected")
    })
}

impl Response {
    /// True for the lines a streaming request sends before its answer
    /// ([`Response::Progress`], [`Response::Snapshot`]).
    pub fn is_stream_item(&self) -> bool {
        matches!(
            self,
            Response::Progress { .. } | Response::Snapshot { .. } | Response::LinkCode { .. }
        )
    }
}

/// Sends `req` to the node listening on `socket` and reads its answer as a
/// stream: every line but the last (the stream items, see
/// [`Response::is_stream_item`]) goes to `on_item` as it arrives, the last is
/// returned; an error from `on_item` ends the call, and a
/// [`Response::Error`] line becomes an `Err`. Waits without a time limit (a
/// watch lasts until the client stops); lines longer than [`MAX_RESPONSE`]
/// are refused.
pub fn call_stream(
    socket: &Path,
    req: &Request,
    on_item: impl FnMut(Response) -> Result<()>,
) -> Result<Response> {
    exchange(socket, req, None, on_item)
}

/// One request, then stream items to `on_item` until the answer; `timeout`
/// bounds the wait for each line.
fn exchange(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
    mut on_item: impl FnMut(Response) -> Result<()>,
) -> Result<Response> {
    let mut s = connect(socket)?;
    s.set_read_timeout(timeout)?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)
        .context("writing to the node's control socket")?;
    let mut reader = BufReader::new(s);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        (&mut reader)
            .take(MAX_RESPONSE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .context("reading the node's answer")?;
        if buf.len() > MAX_RESPONSE {
            bail!("the node's answer is longer than {MAX_RESPONSE} bytes");
        }
        if buf.is_empty() {
            bail!("the node closed the control connection without answering");
        }
        match serde_json::from_slice(&buf).context("the node's answer is not valid")? {
            Response::Error { message } => bail!("{message}"),
            r if r.is_stream_item() => on_item(r)?,
            r => return Ok(r),
        }
    }
}

fn connect(socket: &Path) -> Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "no node is running for this data directory (cannot connect to {}); \
             start one with `ecomesh node` (same --data)",
            socket.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_responses_roundtrip_as_one_json_line() {
        let r = Request::Send {
            peer: "abc".into(),
            text: "line\nbreak".into(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert!(!j.contains('\n'), "newlines are escaped: {j}");
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        let resp = Response::Sent {
            id: "i".into(),
            outcome: "queued".into(),
            transport: None,
        };
        let j = serde_json::to_string(&resp).unwrap();
        assert_eq!(serde_json::from_str::<Response>(&j).unwrap(), resp);
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"format_disk"}"#).is_err());
    }

    /// A fake node answering one connection with `lines`.
    fn serve_lines(lines: Vec<String>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = String::new();
            BufReader::new(&s).read_line(&mut req).unwrap();
            for l in lines {
                // The client may have stopped reading (on_item failed).
                let _ = s.write_all(format!("{l}\n").as_bytes());
            }
        });
        (dir, path)
    }

    #[test]
    fn call_stream_hands_items_over_and_returns_the_last_line() {
        let progress = |done| {
            serde_json::to_string(&Response::Progress {
                stage: "read".into(),
                done,
                total: Some(2),
            })
            .unwrap()
        };
        let last = serde_json::to_string(&Response::BlobGc {
            deleted: 1,
            freed_bytes: 2,
            kept: 3,
        })
        .unwrap();
        let (_dir, path) = serve_lines(vec![progress(1), progress(2), last]);
        let mut seen = Vec::new();
        let r = call_stream(&path, &Request::BlobGc, |item| {
            seen.push(item);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 2);
        assert!(seen.iter().all(Response::is_stream_item));
        assert!(matches!(r, Response::BlobGc { deleted: 1, .. }));

        let error = r#"{"reply":"error","message":"the node stopped"}"#.to_owned();
        let (_dir, path) = serve_lines(vec![progress(1), error]);
        let e = call_stream(&path, &Request::BlobGc, |_| Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "the node stopped");

        let (_dir, path) = serve_lines(vec![progress(1)]);
        let e = call_stream(&path, &Request::BlobGc, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("without answering"), "{e}");

        let (_dir, path) = serve_lines(vec![progress(1), progress(2)]);
        let e = call_stream(&path, &Request::BlobGc, |_| bail!("stop here")).unwrap_err();
        assert_eq!(e.to_string(), "stop here", "on_item's error ends the call");
    }
}
