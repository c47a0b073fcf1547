//! The control requests of `doc query`, `doc history`, `doc restore`, and
//! the streaming ones: `doc watch` (a snapshot line after every change until
//! the client goes away) and `blob put`/`blob get` with progress lines.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ecomesh_sync::{BlobId, DocSnapshot, QuerySnapshot};
use ecomesh_types::Document;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::api::query::{next_cursor, query_from_json};
use crate::control::{Response, VersionRow};
use crate::serve::{MAX_BLOB_FILE, Served, blob_row, cid_text, doc_row};

/// Bytes per progress step of file reads and writes.
const CHUNK: usize = 1 << 20;

/// Writes one response line; fails when the client went away.
pub(crate) async fn send_line<W: AsyncWrite + Unpin>(wr: &mut W, resp: &Response) -> Result<()> {
    let mut out = serde_json::to_vec(resp)?;
    out.push(b'\n');
    wr.write_all(&out)
        .await
        .context("the control client went away")?;
    Ok(())
}

fn query_of(json: &serde_json::Value) -> Result<ecomesh_types::Query> {
    query_from_json(json).map_err(|e| anyhow!("{} ({})", e.message, e.kind))
}

fn snapshot_of_doc(s: DocSnapshot) -> Result<Response> {
    Ok(Response::Snapshot {
        documents: s.document.into_iter().map(doc_row).collect::<Result<_>>()?,
        pending_writes: s.has_pending_writes,
        time_ms: crate::human::now_ms(),
    })
}

fn snapshot_of_query(s: QuerySnapshot) -> Result<Response> {
    Ok(Response::Snapshot {
        documents: s
            .documents
            .into_iter()
            .map(doc_row)
            .collect::<Result<_>>()?,
        pending_writes: s.has_pending_writes,
        time_ms: crate::human::now_ms(),
    })
}

impl Served {
    /// One page of `query` over `collection`, with the next page's cursor.
    pub(crate) async fn doc_query(
        &self,
        collection: &str,
        query: &serde_json::Value,
    ) -> Result<Response> {
        let query = query_of(query)?;
        let docs: Vec<Document> = self.node.query(collection, &query).await?;
        let next = next_cursor(&query, &docs);
        Ok(Response::Page {
            documents: docs.into_iter().map(doc_row).collect::<Result<_>>()?,
            next_cursor: next,
        })
    }

    /// Every version of `collection`/`id`, oldest first.
    pub(crate) fn doc_history(&self, collection: &str, id: &str) -> Result<Response> {
        let versions = self
            .node
            .collection(collection)
            .doc(id)
            .history()?
            .into_iter()
            .map(|v| VersionRow {
                version: cid_text(&v.cid),
                parents: v.parents.iter().map(cid_text).collect(),
                author: v.author.to_string(),
                time_ms: v.timestamp.physical_ms,
            })
            .collect();
        Ok(Response::History { versions })
    }

    /// Restores `collection`/`id` to its content at `version`.
    pub(crate) async fn doc_restore(
        &self,
        collection: &str,
        id: &str,
        version: &str,
    ) -> Result<Response> {
        let cid = ecomesh_wire::parse_cid(version.trim()).map_err(|e| {
            anyhow!("{version:?} is not a version CID ({e}); copy one from `ecomesh doc history`")
        })?;
        let w = self
            .node
            .collection(collection)
            .doc(id)
            .restore(&ecomesh_wire::to_content_id(&cid))
            .await?;
        self.written(&w)
    }

    /// Streams snapshots of a document (`id`) or a query until the client
    /// closes `client`; returns the final line, `None` when the client left.
    pub(crate) async fn doc_watch<R, W>(
        &self,
        collection: &str,
        id: Option<&str>,
        query: Option<&serde_json::Value>,
        mut client: R,
        wr: &mut W,
    ) -> Result<Option<Response>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut snapshots = match (id, query) {
            (Some(_), Some(_)) => bail!("watch a document or a query, not both"),
            (Some(id), None) => self
                .node
                .watch_doc(collection, id)?
                .map(snapshot_of_doc)
                .boxed(),
            (None, q) => {
                let q = query_of(q.unwrap_or(&serde_json::json!({})))?;
                self.node
                    .watch_query(collection, q)?
                    .map(snapshot_of_query)
                    .boxed()
            }
        };
        let mut scratch = [0u8; 256];
        loop {
            tokio::select! {
                snap = snapshots.next() => match snap {
                    Some(s) => {
                        if send_line(wr, &s?).await.is_err() {
                            return Ok(None);
                        }
                    }
                    None => bail!("the node stopped the watch (shutting down)"),
                },
                r = client.read(&mut scratch) => {
                    if matches!(r, Ok(0) | Err(_)) {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Stores the file at `path` as a blob, streaming `read` progress lines,
    /// then `store` lines when storing starts (total unknown) and ends.
    pub(crate) async fn blob_put_progress<W: AsyncWrite + Unpin>(
        &self,
        path: &str,
        collection: &str,
        wr: &mut W,
    ) -> Result<Response> {
        let meta = std::fs::metadata(path).with_context(|| format!("reading {path}"))?;
        let total = meta.len();
        if total > MAX_BLOB_FILE {
            bail!(
                "{path} is {total} bytes; `ecomesh blob put` takes files of at most {MAX_BLOB_FILE} bytes"
            );
        }
        let (tx, mut rx) = mpsc::channel(8);
        let file = PathBuf::from(path);
        let read = tokio::task::spawn_blocking(move || read_chunked(&file, total, &tx));
        while let Some(done) = rx.recv().await {
            send_line(wr, &progress("read", done, Some(total))).await?;
        }
        let bytes = read
            .await
            .context("the file reader failed")?
            .with_context(|| format!("reading {path}"))?;
        let len = bytes.len() as u64;
        send_line(wr, &progress("store", 0, None)).await?;
        let info = self.node.put_blob(collection, &bytes)?;
        send_line(wr, &progress("store", len, Some(len))).await?;
        Ok(Response::Blob(blob_row(info)))
    }

    /// Fetches blob `id` into `path`, streaming `fetch` lines when fetching
    /// starts (total unknown) and when the verified blob is in the file.
    /// The blob is never held whole in memory: fetched pieces go to the
    /// store and are streamed from there into the file.
    pub(crate) async fn blob_get_progress<W: AsyncWrite + Unpin>(
        &self,
        id: &str,
        path: &str,
        wr: &mut W,
    ) -> Result<Response> {
        let blob = BlobId::parse(id).map_err(|e| {
            anyhow!("{id} is not a blob id ({e}); copy one from `ecomesh blob list`")
        })?;
        send_line(wr, &progress("fetch", 0, None)).await?;
        let total = self
            .node
            .get_blob_to_file(blob, Path::new(path))
            .await
            .with_context(|| format!("fetching blob {id} into {path}"))?;
        send_line(wr, &progress("fetch", total, Some(total))).await?;
        self.node
            .blob(&blob)?
            .map(|b| Response::Blob(blob_row(b)))
            .ok_or_else(|| anyhow!("blob fetched but its manifest is unreadable"))
    }
}

fn progress(stage: &str, done: u64, total: Option<u64>) -> Response {
    Response::Progress {
        stage: stage.to_owned(),
        done,
        total,
    }
}

/// Reads at most `limit` bytes of `path` in [`CHUNK`]s, sending the count
/// read so far after each; refuses a file that grew beyond `limit`.
fn read_chunked(path: &Path, limit: u64, tx: &mpsc::Sender<u64>) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut reader = file.take(MAX_BLOB_FILE + 1);
    let mut bytes = Vec::with_capacity(usize::try_from(limit).unwrap_or(0));
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = reader.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() as u64 > MAX_BLOB_FILE {
            return Err(std::io::Error::other(format!(
                "the file grew beyond {MAX_BLOB_FILE} bytes while being read"
            )));
        }
        let _ = tx.blocking_send(bytes.len() as u64);
    }
    Ok(bytes)
}
