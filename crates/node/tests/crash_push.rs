//! A crash between a local write and its push: real `ecomesh` processes on
//! loopback. Node A writes a document while its peer B is not running (so
//! nothing can be pushed), is killed with SIGKILL as soon as the write
//! returns, and restarts; then B starts and dials A. The write must survive
//! the crash on A, still be queued there, and reach B well within the 60 s
//! anti-entropy period, with A's log showing the queued version pushed to B
//! and acknowledged after the restart. Waits poll the control socket under
//! deadlines; ids, addresses and timings are printed, and each node's log
//! when the test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Longest wait for a node's control socket.
const START: Duration = Duration::from_secs(30);
/// Longest the document may take to reach B once B runs: well within the
/// 60 s anti-entropy period.
const ARRIVAL: Duration = Duration::from_secs(15);

fn ecomesh(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecomesh"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

fn try_json(data: &Path, args: &[&str]) -> Option<Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = ecomesh(data, &a);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

fn ok_json(data: &Path, args: &[&str]) -> Value {
    try_json(data, args).unwrap_or_else(|| panic!("ecomesh {args:?} failed"))
}

/// Polls `f` until it returns `Some`, failing with `what` after `limit`;
/// returns the value and how long it took.
fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Node {
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Node {
    fn init(dir: &Path, name: &str) -> (Node, String) {
        let data = dir.join(name);
        let v = ok_json(&data, &["init"]);
        let id = v["peer_id"].as_str().unwrap().to_owned();
        let log = dir.join(format!("{name}.log"));
        let node = Node {
            data,
            log,
            child: None,
            runs: 0,
        };
        (node, id)
    }

    /// Starts `ecomesh node` (replication logged at debug level) and waits
    /// until its control socket answers; returns its wired address.
    fn start(&mut self, extra: &[&str]) -> String {
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(&log, "---- run {} ----", self.runs).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_ecomesh"))
            .arg("--data")
            .arg(&self.data)
            .args(["node", "--no-mdns", "--keepalive", "1", "--redial-max", "1"])
            .args(extra)
            .env("RUST_LOG", "info,ecomesh_p2p_storage=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let data = self.data.clone();
        wait_for(START, "the node's control socket", || {
            try_json(&data, &["status"]).map(|s| s["listen"].as_str().unwrap_or("").to_owned())
        })
        .0
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn status(&self) -> Value {
        ok_json(&self.data, &["status"])
    }

    /// The fields of `collection`/`id` as held locally (`doc list` never
    /// fetches from peers, unlike `doc get`).
    fn local_fields(&self, collection: &str, id: &str) -> Option<Value> {
        let listed = try_json(&self.data, &["doc", "list", collection])?;
        listed["documents"]
            .as_array()?
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["fields"].clone())
    }

    /// The log of the latest run.
    fn last_run_log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let marker = format!("---- run {} ----", self.runs);
        log.rsplit_once(&marker)
            .map(|(_, run)| run.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("===== log of {} =====\n{log}", self.data.display());
        }
    }
}

#[test]
fn a_write_interrupted_by_sigkill_before_its_push_is_pushed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    let addr_a = a.start(&["--listen", "127.0.0.1:0"]);
    eprintln!("a = {ida} on {addr_a}, b = {idb} (not running)");

    // The write returns with no peer to push to; A dies at once.
    let w = ok_json(
        &a.data,
        &["doc", "put", "notes", "crash", r#"{"by":"A","n":1}"#],
    );
    assert!(w["version"].is_string(), "{w}");
    a.kill9();

    // After the restart the write is there, and still waits to be pushed.
    let addr_again = a.start(&["--listen", &addr_a]);
    assert_eq!(addr_again, addr_a);
    let want = json!({"by": "A", "n": 1});
    assert_eq!(a.local_fields("notes", "crash"), Some(want.clone()));
    let pending = a.status()["sync_pending"].clone();
    assert_eq!(pending, 1, "the queued write survived SIGKILL");

    // B comes up and dials A: the document arrives within seconds.
    b.start(&["--listen", "127.0.0.1:0", "--peer", &addr_a]);
    let started = Instant::now();
    let (fields, took) = wait_for(ARRIVAL, "the document on b", || {
        b.local_fields("notes", "crash")
    });
    eprintln!(
        "notes/crash on b {} ms after b's control socket answered",
        took.as_millis()
    );
    assert_eq!(fields, want);
    // A pushed the queued version to B after the restart, and B acknowledged
    // it (the push, not only B's own catch-up, carried it).
    wait_for(ARRIVAL, "a's log of the acknowledged push", || {
        a.last_run_log().contains("push acknowledged").then_some(())
    });
    eprintln!(
        "push acknowledged in a's log {} ms after b's control socket answered",
        started.elapsed().as_millis()
    );
    assert!(
        !b.last_run_log().contains("invalid replication data"),
        "b refused something"
    );
}
