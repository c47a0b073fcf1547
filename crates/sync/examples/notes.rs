//! Two embedded nodes in one process, synchronising a note over the wired
//! transport on loopback.
//!
//! ```sh
//! cargo run -p ecomesh-sync --example notes
//! ```
//!
//! Node A and node B each run a [`WiredTransport`] listening on
//! `127.0.0.1` (an OS-chosen port) with mDNS off; A dials B's address
//! explicitly. B watches the query "every note"; A writes one note; the
//! example prints B's watch firing with it and exits 0. If the note has not
//! arrived within 30 s, it prints what it was waiting for and exits 1.
//!
//! This is how an application embeds ecomesh: it links the transport crates
//! it wants, starts them, and hands them to [`Node::builder`].

// Printing what happens is this program's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_sync::{Map, Node, NodeConfig, Query, SetOptions, Value};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::TransportAdapter;
use futures::StreamExt;

/// The longest the whole example may take before it gives up.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let dirs = match (tempfile::tempdir(), tempfile::tempdir()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("notes: could not create the data directories: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (step, result) = {
        let step = Arc::new(std::sync::Mutex::new("starting the nodes"));
        let run = run(dirs.0.path(), dirs.1.path(), step.clone());
        let result = tokio::time::timeout(LIMIT, run).await;
        let step = *step.lock().unwrap_or_else(|p| p.into_inner());
        (step, result)
    };
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("notes: failed while {step}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("notes: gave up after {} s while {step}", LIMIT.as_secs());
            ExitCode::FAILURE
        }
    }
}

type Step = Arc<std::sync::Mutex<&'static str>>;

fn set_step(step: &Step, now: &'static str) {
    *step.lock().unwrap_or_else(|p| p.into_inner()) = now;
}

async fn run(
    dir_a: &std::path::Path,
    dir_b: &std::path::Path,
    step: Step,
) -> Result<(), Box<dyn std::error::Error>> {
    let (a, wired_a, _) = start_node("A", dir_a).await?;
    let (b, _, b_addr) = start_node("B", dir_b).await?;

    set_step(&step, "connecting A to B");
    let peer = wired_a.dial(b_addr).await?;
    println!("A dialled B at {b_addr} (peer {peer})");

    set_step(&step, "waiting for the nodes to list each other as peers");
    while a.peers().is_empty() || b.peers().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    set_step(&step, "watching the notes on B");
    let mut on_b = b.watch_query("notes", Query::new())?;
    let first = on_b.next().await.ok_or("B's watch ended")?;
    println!("B watches `notes`: {} note(s)", first.documents.len());

    set_step(&step, "writing a note on A");
    let mut note = Map::new();
    note.insert("title".into(), Value::Text("groceries".into()));
    note.insert("body".into(), Value::Text("oat milk, lentils".into()));
    a.collection("notes")
        .doc("n1")
        .set(note, SetOptions::REPLACE)
        .await?;
    println!("A wrote notes/n1");

    set_step(&step, "waiting for B's watch to fire with the note");
    loop {
        let snap = on_b.next().await.ok_or("B's watch ended")?;
        if let Some(doc) = snap.documents.iter().find(|d| d.id == "n1") {
            let title = doc.fields.get("title");
            println!(
                "B's watch fired: {} note(s); notes/n1 title = {title:?}",
                snap.documents.len()
            );
            break;
        }
    }

    set_step(&step, "shutting the nodes down");
    a.shutdown().await?;
    b.shutdown().await?;
    println!("ok");
    Ok(())
}

/// A node on `dir` with a wired transport listening on loopback (no mDNS);
/// returns it, its transport, and the address the transport listens on.
async fn start_node(
    name: &str,
    dir: &std::path::Path,
) -> Result<(Node, WiredTransport, SocketAddr), Box<dyn std::error::Error>> {
    let identity = Identity::generate()?;
    let wired = WiredTransport::new(
        identity.clone(),
        AccessPolicy::Open,
        WiredConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..WiredConfig::default()
        },
    );
    wired.start().await?;
    let addr = wired
        .local_addr()
        .ok_or("the wired transport has no listening address")?;
    let node = Node::builder(dir)
        .identity(identity)
        .transport(Arc::new(wired.clone()))
        .config(NodeConfig::default().with_tick(Duration::from_millis(100)))
        .start()
        .await?;
    println!("node {name}: {} listening on {addr}", node.peer_id());
    Ok((node, wired, addr))
}
