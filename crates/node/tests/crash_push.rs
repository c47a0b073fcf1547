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

use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{Node, ok_json, wait_within};

/// Replication logged at debug level, so the push shows in the log.
const DEBUG_LOG: &[(&str, &str)] = &[("RUST_LOG", "info,ecomesh_p2p_storage=debug")];

/// Longest the document may take to reach B once B runs: well within the
/// 60 s anti-entropy period.
const ARRIVAL: Duration = Duration::from_secs(15);

#[test]
fn a_write_interrupted_by_sigkill_before_its_push_is_pushed_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    let addr_a = a.start_with_env(&["--listen", "127.0.0.1:0"], DEBUG_LOG);
    eprintln!("a = {ida} on {addr_a}, b = {idb} (not running)");

    // The write returns with no peer to push to; A dies at once.
    let w = ok_json(
        &a.data,
        &["doc", "put", "notes", "crash", r#"{"by":"A","n":1}"#],
    );
    assert!(w["version"].is_string(), "{w}");
    a.kill9();

    // After the restart the write is there, and still waits to be pushed.
    let addr_again = a.start_with_env(&["--listen", &addr_a], DEBUG_LOG);
    assert_eq!(addr_again, addr_a);
    let want = json!({"by": "A", "n": 1});
    assert_eq!(a.local_fields("notes", "crash"), Some(want.clone()));
    let pending = a.status()["sync_pending"].clone();
    assert_eq!(pending, 1, "the queued write survived SIGKILL");

    // B comes up and dials A: the document arrives within seconds.
    b.start_with_env(&["--listen", "127.0.0.1:0", "--peer", &addr_a], DEBUG_LOG);
    let started = Instant::now();
    let (fields, took) = wait_within(ARRIVAL, "the document on b", || {
        b.local_fields("notes", "crash")
    });
    eprintln!(
        "notes/crash on b {} ms after b's control socket answered",
        took.as_millis()
    );
    assert_eq!(fields, want);
    // A pushed the queued version to B after the restart, and B acknowledged
    // it (the push, not only B's own catch-up, carried it).
    wait_within(ARRIVAL, "a's log of the acknowledged push", || {
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
