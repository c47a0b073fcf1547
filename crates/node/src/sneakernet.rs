//! `ecomesh export` and `ecomesh import`: the node's versions (and blobs)
//! carried between nodes as CARv1 files ([`ecomesh_sync::Node::export`],
//! [`ecomesh_sync::Node::import`]).
//!
//! The running node does the file I/O (paths are absolute) and streams
//! [`Response::Progress`] lines over the control socket before the final
//! answer; the CLI shows them with [`crate::progress`].

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ecomesh_sync::{ExportOptions, ImportReport, Node, Progress};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::control::{self, Request, Response};
use crate::paths::DataDir;

/// Least time between two progress lines the node sends.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRow {
    /// The file written.
    pub path: String,
    /// The stream position the export started after.
    pub since: u64,
    /// The position it reached: `--since` for the next export.
    pub next: u64,
    /// Versions written.
    pub versions: u64,
    /// Blobs written (manifests).
    pub blobs: u64,
    /// Blob pieces written.
    pub pieces: u64,
    /// Roots in the header (the heads, then the blobs).
    pub roots: usize,
    /// Size of the file.
    pub bytes: u64,
    /// How long it took, in ms.
    pub elapsed_ms: u64,
}

/// One block an import refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedRow {
    /// The block's CID as the file gives it.
    pub cid: String,
    /// `cid_mismatch`, `invalid_version`, `missing_parents`, `invalid_blob` or `unknown_block`.
    pub kind: String,
    /// Why, for people.
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRow {
    /// The file read.
    pub path: String,
    /// Roots the header names.
    pub roots: usize,
    /// Blocks read.
    pub blocks: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Versions merged now.
    pub versions_new: u64,
    /// Versions already held.
    pub versions_known: u64,
    /// Blobs (manifests) stored now.
    pub blobs_new: u64,
    /// Blobs already known.
    pub blobs_known: u64,
    /// Blob pieces stored now.
    pub pieces_new: u64,
    /// Blob pieces already held.
    pub pieces_known: u64,
    /// Blocks refused in all.
    pub refused_total: u64,
    /// The refused blocks (at most the first 1000).
    pub refused: Vec<RefusedRow>,
    /// How long it took, in ms.
    pub elapsed_ms: u64,
}

fn import_row(path: &str, r: ImportReport, elapsed: Duration) -> ImportRow {
    ImportRow {
        path: path.to_owned(),
        roots: r.roots,
        blocks: r.blocks,
        bytes: r.bytes,
        versions_new: r.versions_new,
        versions_known: r.versions_known,
        blobs_new: r.blobs_new,
        blobs_known: r.blobs_known,
        pieces_new: r.pieces_new,
        pieces_known: r.pieces_known,
        refused_total: r.refused_total,
        refused: r
            .refused
            .into_iter()
            .map(|x| RefusedRow {
                cid: ecomesh_wire::from_content_id(&x.cid)
                    .map_or_else(|_| "(not a CID)".into(), |c| c.to_string()),
                kind: x.reason.kind().to_owned(),
                reason: x.reason.to_string(),
            })
            .collect(),
        elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    }
}

/// The progress stage of an export: blocks written of all.
const STAGE_BLOCKS: &str = "blocks";
/// The progress stage of an import: bytes of the file read.
const STAGE_BYTES: &str = "bytes";

/// Sends a progress line at most every [`PROGRESS_EVERY`] (and never blocks the work).
fn throttled(tx: Option<mpsc::UnboundedSender<Response>>) -> impl FnMut(Progress) {
    let mut last: Option<Instant> = None;
    move |p: Progress| {
        let Some(tx) = &tx else { return };
        if last.is_some_and(|l| l.elapsed() < PROGRESS_EVERY) {
            return;
        }
        last = Some(Instant::now());
        // An export counts blocks (it knows how many); an import counts bytes of the file.
        let line = match p.total_blocks {
            Some(total) => Response::Progress {
                stage: STAGE_BLOCKS.into(),
                done: p.blocks,
                total: Some(total),
            },
            None => Response::Progress {
                stage: STAGE_BYTES.into(),
                done: p.bytes,
                total: p.total_bytes,
            },
        };
        let _ = tx.send(line);
    }
}

fn absolute(path: &str) -> Result<&Path> {
    let p = Path::new(path);
    if !p.is_absolute() {
        bail!("{path} is not an absolute path (the node resolves no relative paths)");
    }
    Ok(p)
}

fn export_file(
    node: &Node,
    path: &str,
    since: u64,
    blobs: bool,
    progress: impl FnMut(Progress),
) -> Result<Response> {
    let start = Instant::now();
    let target = absolute(path)?;
    let dir = target
        .parent()
        .ok_or_else(|| anyhow!("{path} names no file"))?;
    let name = target
        .file_name()
        .ok_or_else(|| anyhow!("{path} names no file"))?;
    let tmp = dir.join(format!(".{}.partial", name.to_string_lossy()));
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let written = node.export_with_progress(
        since,
        ExportOptions { blobs },
        BufWriter::new(&file),
        progress,
    );
    let summary = match written.and_then(|s| {
        file.sync_all()
            .map_err(|e| ecomesh_sync::SyncError::Io {
                what: "syncing",
                path: tmp.clone(),
                source: e,
            })
            .map(|()| s)
    }) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow!(e).context(format!("exporting to {path}")));
        }
    };
    std::fs::rename(&tmp, target).with_context(|| format!("renaming to {path}"))?;
    Ok(Response::Exported(ExportRow {
        path: path.to_owned(),
        since: summary.since,
        next: summary.next,
        versions: summary.versions,
        blobs: summary.blobs,
        pieces: summary.pieces,
        roots: summary.roots,
        bytes: summary.bytes,
        elapsed_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    }))
}

fn import_file(node: &Node, path: &str, progress: impl FnMut(Progress)) -> Result<Response> {
    let start = Instant::now();
    let file = File::open(absolute(path)?).with_context(|| format!("opening {path}"))?;
    let size = file.metadata().ok().map(|m| m.len());
    let report = node
        .import_with_progress(BufReader::with_capacity(1 << 16, file), size, progress)
        .with_context(|| format!("importing {path}"))?;
    Ok(Response::Imported(import_row(
        path,
        report,
        start.elapsed(),
    )))
}

/// Answers [`Request::Export`] or [`Request::Import`] on a blocking thread,
/// sending progress to `tx` when given.
pub(crate) async fn answer(
    node: Node,
    req: Request,
    tx: Option<mpsc::UnboundedSender<Response>>,
) -> Response {
    let work = tokio::task::spawn_blocking(move || match req {
        Request::Export { path, since, blobs } => {
            export_file(&node, &path, since, blobs, throttled(tx))
        }
        Request::Import { path } => import_file(&node, &path, throttled(tx)),
        other => Err(anyhow!("not an export or import: {other:?}")),
    });
    match work.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::Error {
            message: format!("{e:#}"),
        },
        Err(e) => Response::Error {
            message: format!("the export or import failed: {e}"),
        },
    }
}

/// Answers [`Request::Export`] or [`Request::Import`] on a control
/// connection: progress lines while it runs, then the answer.
pub(crate) async fn serve_streamed(
    node: Node,
    req: Request,
    out: &mut (impl AsyncWriteExt + Unpin),
) -> Response {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(answer(node, req, Some(tx)));
    while let Some(p) = rx.recv().await {
        let mut line = serde_json::to_vec(&p).unwrap_or_default();
        line.push(b'\n');
        if out.write_all(&line).await.is_err() {
            // The client went away; the work finishes anyway.
            break;
        }
    }
    task.await.unwrap_or_else(|e| Response::Error {
        message: format!("the export or import failed: {e}"),
    })
}

/// `ecomesh export` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportArgs {
    /// Export only the versions after this position of the node's stream
    /// (`stream_head` in `ecomesh status`; the last export prints the next one).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub since: u64,
    /// Also export the blobs (manifests and the pieces this node holds).
    #[arg(long)]
    pub blobs: bool,
    /// The CAR file to write.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// `ecomesh import` arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct ImportArgs {
    /// The CAR file to read.
    pub file: PathBuf,
}

fn absolute_arg(p: PathBuf) -> Result<String> {
    let p = if p.is_absolute() {
        p
    } else {
        std::env::current_dir()?.join(p)
    };
    p.into_os_string()
        .into_string()
        .map_err(|p| anyhow!("{} is not valid UTF-8", p.to_string_lossy()))
}

/// Streams `req` to the node and shows its progress with `label`.
fn ask_with_progress(data: &DataDir, req: &Request, label: &str) -> Result<Response> {
    let mut bar: Option<crate::progress::Progress> = None;
    let r = control::call_stream(&data.checked_socket()?, req, |item| {
        if let Response::Progress { stage, done, total } = item {
            bar.get_or_insert_with(|| {
                if stage == STAGE_BLOCKS {
                    crate::progress::Progress::items(label, total)
                } else {
                    crate::progress::Progress::bytes(label, total)
                }
            })
            .set(done);
        }
        Ok(())
    });
    if let Some(b) = &bar {
        b.finish("");
    }
    r
}

/// `ecomesh export`: prints what was written (text, or JSON with `json_out`).
pub fn export_command(data: &DataDir, args: ExportArgs, json_out: bool) -> Result<()> {
    let req = Request::Export {
        path: absolute_arg(args.output)?,
        since: args.since,
        blobs: args.blobs,
    };
    match ask_with_progress(data, &req, "export")? {
        Response::Exported(r) if json_out => print_json(&r),
        Response::Exported(r) => {
            let mut what = format!("{} versions", r.versions);
            if r.blobs > 0 {
                what.push_str(&format!(", {} blobs ({} pieces)", r.blobs, r.pieces));
            }
            say(&format!(
                "exported {what} to {} ({}, {} roots) in {:.1} s",
                r.path,
                indicatif::HumanBytes(r.bytes),
                r.roots,
                r.elapsed_ms as f64 / 1000.0
            ));
            say(&format!(
                "next time: ecomesh export --since {} (stream position)",
                r.next
            ));
            Ok(())
        }
        other => bail!("the node answered something unexpected: {other:?}"),
    }
}

/// `ecomesh import`: prints what merged and what was refused, and why.
pub fn import_command(data: &DataDir, args: ImportArgs, json_out: bool) -> Result<()> {
    let req = Request::Import {
        path: absolute_arg(args.file)?,
    };
    match ask_with_progress(data, &req, "import")? {
        Response::Imported(r) if json_out => print_json(&r),
        Response::Imported(r) => {
            say(&format!(
                "imported {}: {} new versions, {} already known; {} new blobs, {} known; \
                 {} new pieces, {} known ({} blocks, {}, {:.1} s)",
                r.path,
                r.versions_new,
                r.versions_known,
                r.blobs_new,
                r.blobs_known,
                r.pieces_new,
                r.pieces_known,
                r.blocks,
                indicatif::HumanBytes(r.bytes),
                r.elapsed_ms as f64 / 1000.0
            ));
            if r.refused_total > 0 {
                say(&format!("refused {} blocks:", r.refused_total));
                for x in &r.refused {
                    say(&format!("  {}  {}: {}", x.cid, x.kind, x.reason));
                }
                if r.refused_total > r.refused.len() as u64 {
                    say(&format!(
                        "  ... and {} more",
                        r.refused_total - r.refused.len() as u64
                    ));
                }
            }
            Ok(())
        }
        other => bail!("the node answered something unexpected: {other:?}"),
    }
}

fn say(line: &str) {
    crate::output::line(line);
}

fn print_json(v: &impl Serialize) -> Result<()> {
    say(&serde_json::to_string_pretty(v)?);
    Ok(())
}
