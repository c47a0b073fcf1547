//! The CLI people expect (issue 17, item 4): `ecomesh node` initialises a new
//! data directory, `doc query/watch/history/restore`, `ecomesh.toml` with
//! flags winning, human times and sizes in text output (JSON unchanged), and
//! progress lines on blob transfers. Real `ecomesh` processes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};

mod common;
use common::{DEADLINE, Node, ecomesh, ok_json, try_json, wait_for};

fn text(data: &Path, args: &[&str]) -> String {
    let o = ecomesh(data, args);
    assert!(
        o.status.success(),
        "ecomesh {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn failure(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn node_initialises_a_new_data_directory_on_first_run_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "fresh");
    assert!(!n.data.exists());
    n.start(&["--listen", "127.0.0.1:0"]);
    let id = n.status()["peer_id"].as_str().unwrap().to_owned();
    let log = n.last_run_log();
    assert!(
        log.contains("initialised a new data directory") && log.contains(&id),
        "{log}"
    );
    assert!(log.contains("no config file"), "{log}");
    n.terminate();
    n.start(&["--listen", "127.0.0.1:0"]);
    assert_eq!(n.status()["peer_id"], id.as_str(), "the same identity");
    assert!(!n.last_run_log().contains("initialised"));
    n.terminate();
    let e = failure(&ecomesh(&n.data, &["init"]));
    assert!(e.contains("already initialised") && e.contains(&id), "{e}");
}

#[test]
fn doc_query_filters_orders_pages_and_refuses_bad_clauses() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "q");
    n.start(&["--listen", "127.0.0.1:0"]);
    for (id, amount, tags) in [
        ("e1", 3, json!(["food"])),
        ("e2", 8, json!(["food", "bus"])),
        ("e3", 12, json!(["food"])),
        ("e4", 20, json!(["rent"])),
        ("e5", 6, json!(["food"])),
    ] {
        let f = json!({"amount": amount, "tags": tags}).to_string();
        ok_json(&n.data, &["doc", "put", "expenses", id, &f]);
    }
    let q = [
        "doc",
        "query",
        "expenses",
        "--where",
        "amount>5",
        "--where",
        "tags array-contains food",
        "--order-by",
        "amount:desc",
        "--limit",
        "2",
    ];
    let ids = |page: &Value| -> Vec<String> {
        page["documents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let page = ok_json(&n.data, &q);
    assert_eq!(ids(&page), ["e3", "e2"]);
    assert_eq!(page["documents"][0]["fields"]["amount"], 12);
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let mut next = q.to_vec();
    next.extend(["--start-after", &cursor]);
    let page2 = ok_json(&n.data, &next);
    assert_eq!(ids(&page2), ["e5"]);
    assert!(page2["next_cursor"].is_null(), "the last page is not full");
    let out = text(&n.data, &q);
    assert!(
        out.contains("expenses/e3") && out.contains("more: --start-after"),
        "{out}"
    );
    // Values parse as JSON when they can: "8" is text, matching nothing.
    let none = ok_json(
        &n.data,
        &["doc", "query", "expenses", "--where", "amount==\"8\""],
    );
    assert_eq!(ids(&none), Vec::<String>::new());
    let eight = ok_json(
        &n.data,
        &["doc", "query", "expenses", "--where", "amount == 8"],
    );
    assert_eq!(ids(&eight), ["e2"]);
    let in_list = ok_json(
        &n.data,
        &[
            "doc",
            "query",
            "expenses",
            "--where",
            "amount in [3, 20]",
            "--order-by",
            "amount",
        ],
    );
    assert_eq!(ids(&in_list), ["e1", "e4"]);

    for (args, want) in [
        (vec!["--where", "amount"], "no operator"),
        (vec!["--where", ">5"], "no field"),
        (vec!["--where", "amount>"], "no value"),
        (vec!["--order-by", "amount:up"], "order direction"),
        (vec!["--limit", "5000"], "page_too_large"),
        (vec!["--start-after", "not-a-cursor!"], "bad_cursor"),
        (vec!["--where", "amount in 3"], "invalid_query"),
    ] {
        let mut a = vec!["doc", "query", "expenses"];
        a.extend(args.iter().copied());
        let e = failure(&ecomesh(&n.data, &a));
        assert!(e.contains(want), "{args:?}: {e}");
    }
    assert!(n.status()["peer_id"].is_string(), "the node keeps serving");
    n.terminate();
}

/// `ecomesh doc watch ...` with stdout piped; its lines arrive on the channel.
fn watch(data: &Path, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ecomesh"))
        .arg("--data")
        .arg(data)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|e| panic!("no {what} within {DEADLINE:?}: {e}"))
}

/// Waits for a snapshot (JSON line) satisfying `f`, skipping others.
fn snapshot_where(rx: &mpsc::Receiver<String>, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    loop {
        let line = next_line(rx, what);
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["reply"], "snapshot", "{line}");
        if f(&v) {
            return v;
        }
    }
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(!status.success(), "Ctrl-C ends the watch");
}

#[test]
fn doc_watch_prints_a_snapshot_after_each_change_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "w");
    n.start(&["--listen", "127.0.0.1:0"]);
    let (doc_watch, docs) = watch(&n.data, &["--json", "doc", "watch", "notes", "n1"]);
    let (query_watch, query) = watch(
        &n.data,
        &[
            "--json",
            "doc",
            "watch",
            "notes",
            "--where",
            "stars>=4",
            "--order-by",
            "stars:desc",
        ],
    );
    let (text_watch, texts) = watch(&n.data, &["doc", "watch", "notes", "n1"]);
    let first = snapshot_where(&docs, "the first document snapshot", |_| true);
    assert_eq!(first["documents"], json!([]), "absent at first");
    snapshot_where(&query, "the first query snapshot", |v| {
        v["documents"] == json!([])
    });
    let absent = next_line(&texts, "the first text snapshot");
    assert!(
        absent.contains("notes/n1  (absent)") && absent.contains("UTC"),
        "{absent}"
    );

    ok_json(&n.data, &["doc", "put", "notes", "n1", r#"{"stars":5}"#]);
    let s = snapshot_where(&docs, "n1 written", |v| {
        v["documents"][0]["fields"]["stars"] == 5
    });
    assert_eq!(s["documents"][0]["id"], "n1");
    assert!(s["time_ms"].as_u64().unwrap() > 1_700_000_000_000);
    snapshot_where(&query, "n1 in the query", |v| {
        v["documents"].as_array().unwrap().len() == 1
    });
    let line = next_line(&texts, "n1 in text");
    assert!(
        line.contains("notes/n1") && line.contains(r#""stars":5"#),
        "{line}"
    );

    ok_json(&n.data, &["doc", "put", "notes", "n2", r#"{"stars":4}"#]);
    ok_json(&n.data, &["doc", "put", "notes", "n3", r#"{"stars":1}"#]);
    let s = snapshot_where(&query, "n2 in the query", |v| {
        v["documents"].as_array().unwrap().len() == 2
    });
    let ids: Vec<&str> = s["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["n1", "n2"], "ordered, n3 filtered out");

    ok_json(&n.data, &["doc", "delete", "notes", "n1"]);
    snapshot_where(&docs, "n1 deleted", |v| v["documents"] == json!([]));
    for w in [doc_watch, query_watch, text_watch] {
        stop(w);
    }
    // The node keeps serving after its watchers went away.
    ok_json(&n.data, &["doc", "put", "notes", "n4", "{}"]);
    let e = failure(&ecomesh(
        &n.data,
        &["doc", "watch", "notes", "--where", "stars"],
    ));
    assert!(e.contains("no operator"), "{e}");
    n.terminate();
}

#[test]
fn doc_history_lists_versions_with_authors_and_times_and_restore_brings_one_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "h");
    n.start(&["--listen", "127.0.0.1:0"]);
    let me = n.status()["peer_id"].as_str().unwrap().to_owned();
    let v1 = ok_json(&n.data, &["doc", "put", "todo", "t", r#"{"title":"milk"}"#]);
    ok_json(
        &n.data,
        &["doc", "put", "todo", "t", r#"{"title":"oat milk"}"#],
    );
    let h = ok_json(&n.data, &["doc", "history", "todo", "t"]);
    let versions = h["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], v1["version"]);
    assert_eq!(versions[1]["parents"], json!([v1["version"]]));
    assert!(versions.iter().all(|v| v["author"] == me.as_str()));
    let out = text(&n.data, &["doc", "history", "todo", "t"]);
    assert!(
        out.contains(&format!("by {me}")) && out.contains(" UTC (just now)"),
        "{out}"
    );
    let first = v1["version"].as_str().unwrap();
    ok_json(&n.data, &["doc", "restore", "todo", "t", first]);
    assert_eq!(n.doc_fields("todo", "t").unwrap(), json!({"title": "milk"}));
    let h = ok_json(&n.data, &["doc", "history", "todo", "t"]);
    assert_eq!(h["versions"].as_array().unwrap().len(), 3);
    let e = failure(&ecomesh(
        &n.data,
        &["doc", "restore", "todo", "t", "nonsense"],
    ));
    assert!(e.contains("not a version CID"), "{e}");
    let e = failure(&ecomesh(&n.data, &["doc", "history", "todo", "absent"]));
    assert!(e.contains("no such document"), "{e}");
    n.terminate();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn ecomesh_toml_sets_node_flags_and_flags_given_win() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "c");
    std::fs::create_dir_all(&n.data).unwrap();
    let config = n.data.join("ecomesh.toml");
    let port = free_port();
    // The harness passes --api, --keepalive and --no-mdns: those keys lose.
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nkeepalive = 7\napi = \"127.0.0.1:1\"\n\
             outbox-max = 50\nno-mdns = true\n"
        ),
    )
    .unwrap();
    let listen = n.start(&[]);
    assert_eq!(listen, format!("127.0.0.1:{port}"), "listen from the file");
    assert_ne!(n.api_addr(), "127.0.0.1:1", "--api given: the flag wins");
    let log = n.last_run_log();
    assert!(
        log.contains("loaded the config file") && log.contains(&config.display().to_string()),
        "{log}"
    );
    assert!(
        log.contains("\"outbox-max\"") && log.contains("\"listen\""),
        "{log}"
    );
    assert!(
        log.contains("overridden_by_flags") && log.contains("\"keepalive\""),
        "{log}"
    );
    n.terminate();
    let listen = n.start(&["--listen", "127.0.0.1:0"]);
    assert_ne!(
        listen,
        format!("127.0.0.1:{port}"),
        "--listen given: the flag wins"
    );
    n.terminate();

    for (file, want) in [
        ("keepalve = 3\n", "unknown key \"keepalve\""),
        ("keepalive = \"soon\"\n", "--keepalive"),
        (
            "transports = [\"wired\", \"carrier-pigeon\"]\n",
            "carrier-pigeon",
        ),
        ("no-mdns = 1\n", "true or false"),
        ("listen = \n", "not valid TOML"),
    ] {
        std::fs::write(&config, file).unwrap();
        let e = failure(&ecomesh(&n.data, &["node", "--api", "127.0.0.1:0"]));
        assert!(
            e.contains(want) && e.contains(&config.display().to_string()),
            "{file}: {e}"
        );
    }
}

#[test]
fn text_output_shows_human_times_and_sizes_json_stays_and_blob_transfers_report_progress() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::fresh(dir.path(), "a");
    let mut b = Node::fresh(dir.path(), "b");
    let addr = a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0", "--peer", &addr]);
    let idb = b.status()["peer_id"].as_str().unwrap().to_owned();
    wait_for("a to see b", || a.peers().contains(&idb).then_some(()));

    let status = text(&a.data, &["status"]);
    let uptime = status.lines().find(|l| l.starts_with("uptime")).unwrap();
    assert!(
        uptime.contains(" s") && uptime.contains("(since ") && uptime.contains("UTC"),
        "{uptime}"
    );
    assert!(a.status()["uptime_secs"].is_u64(), "--json keeps seconds");

    ok_json(&a.data, &["send", &idb, "hello"]);
    let outbox = text(&a.data, &["outbox"]);
    assert!(
        outbox.contains(" UTC (") && outbox.contains("hello"),
        "{outbox}"
    );
    wait_for("b's inbox", || (b.inbox_texts().len() == 1).then_some(()));
    let inbox = text(&b.data, &["inbox"]);
    assert!(
        inbox.contains(" UTC (") && inbox.contains("from "),
        "{inbox}"
    );
    assert!(ok_json(&b.data, &["inbox"])[0]["received_ms"].is_u64());

    ok_json(&a.data, &["doc", "put", "c", "d", "{}"]);
    let changes = text(&a.data, &["changes"]);
    assert!(
        changes.contains("c/d") && changes.contains(" UTC ("),
        "{changes}"
    );
    assert!(ok_json(&a.data, &["changes"])["entries"][0]["time_ms"].is_u64());

    // A 1.5 MiB blob: sizes in text, bytes in JSON, progress lines on stderr
    // (stdout is not a terminal here).
    let input = dir.path().join("in.bin");
    let bytes: Vec<u8> = (0..1_572_864u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&input, &bytes).unwrap();
    let o = ecomesh(&a.data, &["--json", "blob", "put", input.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let put: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(put["len"], 1_572_864, "--json unchanged");
    let progress = String::from_utf8_lossy(&o.stderr);
    assert!(
        progress.contains("blob put: read: done") && progress.contains("blob put: store: done"),
        "{progress}"
    );
    let id = put["id"].as_str().unwrap().to_owned();
    let list = text(&a.data, &["blob", "list"]);
    assert!(list.contains(&id) && list.contains("1.5 MiB"), "{list}");
    let out = dir.path().join("out.bin");
    let o = ecomesh(&b.data, &["blob", "get", &id, "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1.5 MiB"));
    // One `fetch` stage: the node fetches into its store and streams the
    // verified blob into the file itself, so there is no separate write.
    let progress = String::from_utf8_lossy(&o.stderr);
    assert!(progress.contains("blob get: fetch: done"), "{progress}");
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    assert!(try_json(&b.data, &["blob", "list"]).is_some());
    a.terminate();
    b.terminate();
}

/// The example `ecomesh.toml` in docs/cli.md is a file a node starts with.
#[test]
fn the_documented_config_example_starts_a_node() {
    let doc = include_str!("../../../docs/cli.md");
    let example = doc
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/cli.md has a toml example");
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "doc");
    std::fs::create_dir_all(&n.data).unwrap();
    std::fs::write(n.data.join("ecomesh.toml"), example).unwrap();
    // Loopback only in tests: the example's listen address and LAN peer lose to flags.
    n.start(&["--listen", "127.0.0.1:0", "--peer", "127.0.0.1:9"]);
    let log = n.last_run_log();
    assert!(log.contains("loaded the config file"), "{log}");
    for key in [
        "\"transports\"",
        "\"redial-max\"",
        "\"outbox-max\"",
        "\"no-mdns\"",
    ] {
        assert!(log.contains(key), "{key} used or overridden: {log}");
    }
    n.terminate();
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = Node::fresh(dir.path(), "pipe");
    n.start(&["--listen", "127.0.0.1:0"]);
    // More than a pipe buffer holds, so the CLI is still writing when `head` exits.
    let big = json!({ "text": "x".repeat(100_000) }).to_string();
    text(&n.data, &["doc", "put", "c", "big", &big]);
    let o = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; \"$BIN\" --data \"$DATA\" doc get c big | head -c 10 >/dev/null")
        .env("BIN", env!("CARGO_BIN_EXE_ecomesh"))
        .env("DATA", &n.data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{} {stderr}", o.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
