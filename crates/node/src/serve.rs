//! The control socket's requests, answered by calling the embedded
//! [`Node`]'s API and turning its results into [`control`](crate::control) rows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ecomesh_sync::{
    BlobId, BlobInfo, EventKind, Node, OwnClock, SendOutcome, SetOptions, Source, SyncError, Value,
};
use ecomesh_transport_internet::InternetTransport;
use ecomesh_transport_lora::LoraTransport;
use ecomesh_transport_lora::airtime::DutyBudget;
use ecomesh_transport_wired::WiredTransport;
use ecomesh_types::PeerId;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::UnixStream;

use crate::control::{
    BlobRow, ChangeRow, ClockRow, DocRow, InboxRow, MAX_REQUEST, MAX_TEXT, OutboxRow, PeerRow,
    Request, Response, Status,
};

/// Largest file `ecomesh blob put` stores: the node reads it whole, and the
/// shards of larger blobs exceed the default reassembly limit of peers.
pub(crate) const MAX_BLOB_FILE: u64 = 256 << 20;

/// What the control socket answers from: the node, and the concrete
/// transports whose listen addresses `status` shows.
pub(crate) struct Served {
    pub(crate) node: Node,
    pub(crate) wired: Option<WiredTransport>,
    pub(crate) internet: Option<InternetTransport>,
    /// The LoRa transport and the duty-cycle budget it was configured with.
    pub(crate) lora: Option<(LoraTransport, DutyBudget)>,
    /// The Bluetooth adapter the BLE transport runs on, when it runs.
    pub(crate) ble_adapter: Option<String>,
    /// The gate devices authenticate at to use this node as their primary
    /// (issue 19), admitting the devices the node's access policy admits.
    pub(crate) gate: Option<crate::api::primary::SharedGate>,
    /// The primary this node syncs with (`--primary`), if any.
    pub(crate) primary: Option<crate::hybrid::Attached>,
}

pub(crate) use crate::api::json::cid_text;

pub(crate) fn doc_row(d: ecomesh_types::Document) -> Result<DocRow> {
    let json = ecomesh_wire::to_dag_json(&Value::Map(d.fields))?;
    Ok(DocRow {
        collection: d.collection,
        id: d.id,
        fields: serde_json::from_str(&json)?,
    })
}

pub(crate) fn blob_row(b: BlobInfo) -> BlobRow {
    BlobRow {
        id: b.id.to_text(),
        collection: b.collection,
        len: b.len,
        encoding: b.encoding,
        held: b.held,
        pieces: b.pieces,
    }
}

impl Served {
    async fn handle(&self, req: Request) -> Response {
        let node = &self.node;
        if let Some(r) = crate::relation::serve(node, &req) {
            return r.unwrap_or_else(|e| Response::Error {
                message: e.to_string(),
            });
        }
        let r = match req {
            Request::Status => self.status().map(Response::Status),
            Request::Peers => Ok(Response::Peers {
                peers: self.peers(),
            }),
            Request::Send { peer, text } => self.send(&peer, text).await,
            Request::Inbox => self.inbox().map(|messages| Response::Inbox { messages }),
            Request::Outbox => self.outbox().map(|messages| Response::Outbox { messages }),
            Request::DocPut {
                collection,
                id,
                json,
                merge,
            } => self.doc_put(&collection, &id, &json, merge).await,
            Request::DocGet { collection, id } => node
                .collection(collection)
                .doc(id)
                .get()
                .await
                .map_err(Into::into)
                .and_then(|d| d.into_iter().map(doc_row).collect())
                .map(|documents| Response::Documents { documents }),
            Request::DocDelete { collection, id } => {
                match node.collection(collection).doc(id).delete().await {
                    Ok(w) => self.written(&w),
                    Err(e) => Err(e.into()),
                }
            }
            Request::Changes { since, limit } => Ok(self.changes(since, limit)),
            req @ (Request::Export { .. } | Request::Import { .. }) => {
                Ok(crate::sneakernet::answer(node.clone(), req, None).await)
            }
            Request::BlobPut {
                path, collection, ..
            } => self.blob_put(&path, &collection),
            Request::BlobGet { id, path, .. } => self.blob_get(&id, &path).await,
            Request::DocQuery { collection, query } => self.doc_query(&collection, &query).await,
            Request::DocHistory { collection, id } => self.doc_history(&collection, &id),
            Request::DocRestore {
                collection,
                id,
                version,
            } => self.doc_restore(&collection, &id, &version).await,
            Request::DocWatch { .. } => Err(anyhow!(
                "a watch streams snapshots; it is served on the control socket only"
            )),
            Request::LinkAccept { code, timeout_ms } => {
                crate::link::serve_accept(node, self.wired.as_ref(), &code, timeout_ms).await
            }
            Request::LinkList => Ok(crate::link::serve_list(node)),
            Request::LinkNew { .. } => Err(anyhow!(
                "link new streams its answer; the CLI reads it with call_stream"
            )),
            Request::BlobList => node
                .blobs()
                .map(|b| Response::Blobs {
                    blobs: b.into_iter().map(blob_row).collect(),
                })
                .map_err(Into::into),
            Request::BlobGc => node
                .gc_blobs()
                .map(|g| Response::BlobGc {
                    deleted: g.deleted,
                    freed_bytes: g.freed_bytes,
                    kept: g.kept,
                })
                .map_err(Into::into),
            Request::RelationSet { .. }
            | Request::RelationRemove { .. }
            | Request::RelationList
            | Request::CapRestrict { .. }
            | Request::CapGrant { .. }
            | Request::CapInstall { .. }
            | Request::CapRevoke { .. }
            | Request::CapList => Err(anyhow!("answered by relation::serve")),
            Request::DocList { collection } => node
                .collection(collection)
                .list()
                .map_err(Into::into)
                .and_then(|docs| docs.into_iter().map(doc_row).collect())
                .map(|documents| Response::Documents { documents }),
        };
        r.unwrap_or_else(|e| Response::Error {
            message: format!("{e:#}"),
        })
    }

    async fn doc_put(
        &self,
        collection: &str,
        id: &str,
        json: &str,
        merge: bool,
    ) -> Result<Response> {
        if collection.is_empty() || id.is_empty() {
            bail!("collection and id must not be empty");
        }
        let fields = match ecomesh_wire::from_dag_json(json).map_err(|e| {
            anyhow!("the fields are not valid JSON ({e}); pass an object like '{{\"name\":\"x\"}}'")
        })? {
            Value::Map(m) => m,
            _ => bail!("the fields must be a JSON object, like '{{\"name\":\"x\"}}'"),
        };
        let options = if merge {
            SetOptions::MERGE
        } else {
            SetOptions::REPLACE
        };
        let w = self
            .node
            .collection(collection)
            .doc(id)
            .set(fields, options)
            .await?;
        self.written(&w)
    }

    pub(crate) fn written(&self, w: &ecomesh_types::WriteResult) -> Result<Response> {
        Ok(Response::Written {
            version: w.version.as_ref().map(cid_text).unwrap_or_default(),
            root_cid: cid_text(&self.node.root_cid()?),
        })
    }

    pub(crate) fn status(&self) -> Result<Status> {
        let s = self.node.status()?;
        Ok(Status {
            peer_id: s.peer_id.to_string(),
            data_dir: self.node.data_dir().display().to_string(),
            listen: self
                .wired
                .as_ref()
                .and_then(WiredTransport::local_addr)
                .map(|a| a.to_string()),
            internet_listen: self
                .internet
                .as_ref()
                .map(|t| {
                    let me = t.libp2p_peer_id();
                    t.listen_addrs()
                        .into_iter()
                        .map(|a| format!("{a}/p2p/{me}"))
                        .collect()
                })
                .unwrap_or_default(),
            transports: s.transports.iter().map(ToString::to_string).collect(),
            peers: s.peers,
            buffered: s.buffered,
            waiting: s.waiting,
            sync_pending: s.sync_pending,
            inbox: s.inbox,
            delivered: s.delivered,
            undelivered: s.undelivered,
            root_cid: cid_text(&s.root_cid),
            replicated_root: cid_text(&s.replicated_root),
            uptime_secs: s.uptime.as_secs(),
            stream_head: s.stream_head,
            clocks: s
                .clocks
                .peers
                .iter()
                .map(|c| ClockRow {
                    peer_id: c.peer.to_string(),
                    skew_ms: c.skew_ms,
                    skewed: c.skewed,
                })
                .collect(),
            own_clock: match s.clocks.own {
                OwnClock::Ahead { .. } => "ahead",
                OwnClock::Behind { .. } => "behind",
                OwnClock::Agrees => "ok",
                _ => "unknown",
            }
            .to_owned(),
            own_clock_off_ms: match s.clocks.own {
                OwnClock::Ahead { by_ms } | OwnClock::Behind { by_ms } => by_ms,
                _ => 0,
            },
            primary: self
                .primary
                .as_ref()
                .and_then(|p| p.status(s.peers))
                .map(Box::new),
            storage: Box::new(s.storage.into()),
        })
    }

    fn blob_put(&self, path: &str, collection: &str) -> Result<Response> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {path}"))?;
        if meta.len() > MAX_BLOB_FILE {
            bail!(
                "{path} is {} bytes; `ecomesh blob put` takes files of at most {MAX_BLOB_FILE} bytes",
                meta.len()
            );
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Ok(Response::Blob(blob_row(
            self.node.put_blob(collection, &bytes)?,
        )))
    }

    async fn blob_get(&self, id: &str, path: &str) -> Result<Response> {
        let blob = BlobId::parse(id).map_err(|e| {
            anyhow!("{id} is not a blob id ({e}); copy one from `ecomesh blob list`")
        })?;
        self.node
            .get_blob_to_file(blob, Path::new(path))
            .await
            .with_context(|| format!("fetching blob {id} into {path}"))?;
        self.node
            .blob(&blob)?
            .map(|b| Response::Blob(blob_row(b)))
            .ok_or_else(|| anyhow!("blob fetched but its manifest is unreadable"))
    }

    fn changes(&self, since: u64, limit: usize) -> Response {
        let page = self.node.changes(since, limit);
        let entries = page
            .entries
            .into_iter()
            .map(|e| ChangeRow {
                position: e.position,
                kind: match e.kind {
                    EventKind::Local => "local",
                    EventKind::New => "new",
                    EventKind::Backfill => "backfill",
                    EventKind::Outlier => "outlier",
                }
                .into(),
                source: match e.source {
                    Source::Local => "local".into(),
                    Source::Remote(p) => p.to_string(),
                },
                version: cid_text(&e.version),
                collection: e.collection,
                id: e.id,
                time_ms: e.time_ms,
            })
            .collect();
        Response::Changes {
            entries,
            next: page.next,
            more: page.more,
        }
    }

    fn peers(&self) -> Vec<PeerRow> {
        self.node
            .peers()
            .into_iter()
            .map(|p| PeerRow {
                peer_id: p.peer_id.to_string(),
                transports: p.transports.iter().map(ToString::to_string).collect(),
                address: match p.metadata.get("address") {
                    Some(Value::Text(a)) => Some(a.clone()),
                    _ => None,
                },
                reputation: p.reputation,
            })
            .collect()
    }

    fn inbox(&self) -> Result<Vec<InboxRow>> {
        Ok(self
            .node
            .inbox()?
            .into_iter()
            .map(|m| InboxRow {
                id: m.id,
                from: m.from,
                text: m.text,
                sent_ms: m.sent_ms,
                received_ms: m.received_ms,
            })
            .collect())
    }

    fn outbox(&self) -> Result<Vec<OutboxRow>> {
        Ok(self
            .node
            .outbox()?
            .into_iter()
            .map(|m| OutboxRow {
                id: m.id,
                to: m.to,
                text: m.text,
                sent_ms: m.sent_ms,
                status: m.status.as_str().to_owned(),
            })
            .collect())
    }

    async fn send(&self, peer: &str, text: String) -> Result<Response> {
        let to: PeerId = peer.trim().parse().map_err(|_| {
            anyhow!("{peer:?} is not a peer id; copy one from `ecomesh peers` (Base58, about 44 characters)")
        })?;
        if to == self.node.peer_id() {
            bail!("{to} is this node's own id; send to another node (see `ecomesh peers`)");
        }
        if text.len() > MAX_TEXT {
            bail!(
                "the text is {} bytes; at most {MAX_TEXT} bytes fit in one message",
                text.len()
            );
        }
        let sent = match self.node.send_text(to, text).await {
            Ok(s) => s,
            Err(SyncError::UnknownKey(p)) => bail!(
                "no key known for {p}, and no reachable node gave it: a node can seal messages \
                 only to peers it has met or that a reachable node knows; wait until it appears \
                 in `ecomesh peers` once (then it may go offline)"
            ),
            Err(SyncError::OutboxFull { held, max }) => bail!(
                "refused, nothing queued: the outbox holds {held} undelivered texts, its limit \
                 (--outbox-max {max}); wait until some are delivered or expire (`ecomesh outbox`), \
                 or raise the limit"
            ),
            Err(e @ SyncError::Mesh(_)) => {
                return Err(anyhow!(e).context("refused, nothing queued"));
            }
            Err(e) => return Err(e.into()),
        };
        let (outcome, transport) = match sent.outcome {
            SendOutcome::Sent(t) => ("sent", Some(t.to_string())),
            SendOutcome::Queued => ("queued", None),
        };
        Ok(Response::Sent {
            id: sent.id.to_string(),
            outcome: outcome.into(),
            transport,
        })
    }
}

/// Answers one control connection: one JSON request line, then one response
/// line, or for a streaming request (a watch, a blob transfer with progress,
/// an export or import)
/// stream items first (see [`control::call_stream`](crate::control::call_stream)).
pub(crate) async fn serve_connection(served: Arc<Served>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = BufReader::new(rd.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    let resp = match tokio::time::timeout(
        Duration::from_secs(10),
        reader.read_until(b'\n', &mut line),
    )
    .await
    {
        Err(_) => Some(Response::Error {
            message: "no request within 10 s".into(),
        }),
        Ok(Err(e)) => Some(Response::Error {
            message: format!("reading the request: {e}"),
        }),
        Ok(Ok(_)) if line.len() > MAX_REQUEST => Some(Response::Error {
            message: format!("request longer than {MAX_REQUEST} bytes"),
        }),
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(req) => streamed(&served, req, reader, &mut wr).await,
            Err(e) => Some(Response::Error {
                message: format!(
                    "not a request this node understands ({e}); is the CLI the same version as the node?"
                ),
            }),
        },
    };
    if let Some(resp) = resp
        && let Err(e) = crate::serve_stream::send_line(&mut wr, &resp).await
    {
        tracing::debug!(error = format!("{e:#}"), "control client went away");
    }
}

/// Answers `req`, streaming items to `wr` first when it is a streaming
/// request; `None` when the client left during the stream.
async fn streamed<R, W>(served: &Served, req: Request, reader: R, wr: &mut W) -> Option<Response>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let r = match req {
        Request::DocWatch {
            collection,
            id,
            query,
        } => {
            served
                .doc_watch(&collection, id.as_deref(), query.as_ref(), reader, wr)
                .await
        }
        Request::BlobPut {
            path,
            collection,
            progress: true,
        } => served
            .blob_put_progress(&path, &collection, wr)
            .await
            .map(Some),
        Request::BlobGet {
            id,
            path,
            progress: true,
        } => served.blob_get_progress(&id, &path, wr).await.map(Some),
        req @ (Request::Export { .. } | Request::Import { .. }) => {
            return Some(crate::sneakernet::serve_streamed(served.node.clone(), req, wr).await);
        }
        Request::LinkNew {
            ttl_ms,
            wait_ms,
            address,
        } => {
            crate::link::serve_new(
                &served.node,
                served.wired.as_ref(),
                ttl_ms,
                wait_ms,
                address.as_deref(),
                wr,
            )
            .await
        }
        other => return Some(served.handle(other).await),
    };
    r.unwrap_or_else(|e| {
        Some(Response::Error {
            message: format!("{e:#}"),
        })
    })
}
