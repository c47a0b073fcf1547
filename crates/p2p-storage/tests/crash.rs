//! Crash recovery: a child process writes continuously and is killed with
//! SIGKILL at a random point; after every kill the store must reopen with all
//! its invariants intact and every write it acknowledged present.
//!
//! The child is this test binary re-executed on the ignored `crash_child`
//! entry point. Restarts per scenario: `ECOMESH_CRASH_RESTARTS` (default 10;
//! `cargo xtask crash --restarts 100` runs the full count). The seed is printed
//! and can be replayed with `ECOMESH_CRASH_SEED`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ecomesh_p2p_storage::{SledStore, StoreConfig};
use ecomesh_types::{BatchOperation, ContentId, SetOptions, Value};

const BATCH_DOCS: usize = 8;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn hex(cid: &ContentId) -> String {
    cid.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> ContentId {
    ContentId(
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect(),
    )
}

fn open(dir: &Path) -> SledStore {
    SledStore::open(dir, common::identity(1), StoreConfig::default()).unwrap()
}

/// The writer process. Prints `ack <seq> <doc> <cid>...` after each write returns Ok.
#[test]
#[ignore = "entry point of the crash test's child process"]
fn crash_child() {
    let dir = std::env::var("ECOMESH_CRASH_DIR").expect("run by the crash supervisor");
    let scenario = std::env::var("ECOMESH_CRASH_SCENARIO").unwrap();
    let mut seq: u64 = std::env::var("ECOMESH_CRASH_BASE")
        .unwrap()
        .parse()
        .unwrap();
    // "bounded" persists the deferred Merkle writes every few writes, so the
    // kill lands before, during and after such persists.
    let store = if scenario == "bounded" {
        SledStore::open(
            Path::new(&dir),
            common::identity(1),
            StoreConfig::default().with_deferred_merkle_writes(5),
        )
        .unwrap()
    } else {
        open(Path::new(&dir))
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    loop {
        seq += 1;
        let padding = Value::Bytes(vec![(seq % 251) as u8; 64 + (seq % 200) as usize]);
        match scenario.as_str() {
            "single" | "bounded" => {
                let doc = format!("d{}", seq % 40);
                let w = store
                    .set(
                        "c",
                        &doc,
                        common::fields(&[("seq", (seq as i64).into()), ("pad", padding)]),
                        SetOptions::REPLACE,
                    )
                    .unwrap();
                writeln!(out, "ack {seq} {doc} {}", hex(&w.version.unwrap())).unwrap();
            }
            "batch" => {
                let ops = (0..BATCH_DOCS)
                    .map(|j| BatchOperation::Set {
                        collection: "b".into(),
                        id: format!("b{j}"),
                        fields: common::fields(&[
                            ("batch", (seq as i64).into()),
                            ("pad", padding.clone()),
                        ]),
                        merge: j % 2 == 0,
                    })
                    .collect();
                let r = store.batch(ops).unwrap();
                let cids: Vec<String> = r
                    .results
                    .iter()
                    .map(|w| hex(w.version.as_ref().unwrap()))
                    .collect();
                writeln!(out, "ack {seq} batch {}", cids.join(" ")).unwrap();
            }
            "delete" => {
                let doc = format!("x{}", seq % 16);
                let w = if seq.is_multiple_of(3) {
                    store.delete("c", &doc).unwrap()
                } else {
                    store
                        .set(
                            "c",
                            &doc,
                            common::fields(&[("seq", (seq as i64).into())]),
                            SetOptions::MERGE,
                        )
                        .unwrap()
                };
                writeln!(out, "ack {seq} {doc} {}", hex(&w.version.unwrap())).unwrap();
            }
            other => panic!("unknown scenario {other}"),
        }
        out.flush().unwrap();
    }
}

/// Starts the child, waits for `acks` acknowledgements (bounded), kills it,
/// and returns every ack line it printed.
fn run_child(dir: &Path, scenario: &str, base: u64, acks: usize, jitter_us: u64) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ECOMESH_CRASH_DIR", dir)
        .env("ECOMESH_CRASH_SCENARIO", scenario)
        .env("ECOMESH_CRASH_BASE", base.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ack ") && tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while lines.len() < acks {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "child {scenario} gave {} of {acks} acks before the deadline",
                    lines.len()
                );
            }
        }
    }
    // Kill at a random point inside the next write.
    std::thread::sleep(Duration::from_micros(jitter_us));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

fn scenario(name: &str) {
    let restarts: u64 = std::env::var("ECOMESH_CRASH_RESTARTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("ECOMESH_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!(
        "crash test {name}: {restarts} restarts, seed {seed} (replay with ECOMESH_CRASH_SEED={seed})"
    );
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<ContentId> = Vec::new();
    let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
    for restart in 0..restarts {
        let acks = 1 + rng.below(40) as usize;
        let jitter = rng.below(3000);
        let lines = run_child(dir.path(), name, restart * 1_000_000, acks, jitter);
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            let seq: i64 = parts[1].parse().unwrap();
            last_seq.insert(parts[2].to_owned(), seq);
            acked.extend(parts[3..].iter().map(|h| unhex(h)));
        }
        let store = open(dir.path());
        let report = store
            .verify_integrity()
            .unwrap_or_else(|e| panic!("restart {restart} (seed {seed}): invariant broken: {e}"));
        for cid in &acked {
            assert!(
                store.version_bytes(cid).unwrap().is_some(),
                "restart {restart} (seed {seed}): acked version lost"
            );
        }
        match name {
            "single" | "bounded" => {
                for (doc, seq) in &last_seq {
                    let got = store.get("c", doc).unwrap().unwrap();
                    let stored = got.fields.get("seq").and_then(Value::as_i64).unwrap();
                    assert!(
                        stored >= *seq,
                        "restart {restart} (seed {seed}): {doc} went back from {seq} to {stored}"
                    );
                }
            }
            "batch" => {
                let batches: Vec<Option<i64>> = (0..BATCH_DOCS)
                    .map(|j| {
                        store
                            .get("b", &format!("b{j}"))
                            .unwrap()
                            .and_then(|d| d.fields.get("batch").and_then(Value::as_i64))
                    })
                    .collect();
                assert!(
                    batches.windows(2).all(|w| w[0] == w[1]),
                    "restart {restart} (seed {seed}): a batch was applied in part: {batches:?}"
                );
                let newest = last_seq.get("batch").copied();
                assert!(
                    batches[0] >= newest,
                    "restart {restart} (seed {seed}): acked batch lost"
                );
            }
            _ => {}
        }
        assert!(
            report.versions > 0,
            "restart {restart} (seed {seed}): no version survived"
        );
        drop(store);
    }
}

#[test]
fn crash_recovery_single_writes() {
    scenario("single");
}

#[test]
fn crash_recovery_batches() {
    scenario("batch");
}

/// Kills while the Merkle index writes are persisted every few writes (the
/// other scenarios keep them all in memory, so every reopen rebuilds).
#[test]
fn crash_recovery_with_merkle_persists() {
    scenario("bounded");
}

#[test]
fn crash_recovery_deletes() {
    scenario("delete");
}
