//! Crash durability of the sync queue: a child process enqueues and
//! acknowledges in a loop and is killed with SIGKILL at a random point; after
//! every kill the queue must reopen with every item whose enqueue returned Ok
//! and that was not completed, with its per-peer acknowledgements, and without
//! the items whose final acknowledgement returned Done. Sequence numbers must
//! keep growing across restarts. The child also feeds a `DurableStream` in the
//! same database: every stream position it was given must survive, and every
//! outlier must still be held (or placed).
//!
//! The child is this test binary re-executed on the ignored `queue_crash_child`
//! entry point. Restarts: `ECOMESH_CRASH_RESTARTS` (default 10). The seed is
//! printed and can be replayed with `ECOMESH_CRASH_SEED`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ecomesh_replication::queue::{AckOutcome, SyncItem, SyncQueue};
use ecomesh_replication::stream::{DurableStream, Source};
use ecomesh_types::{ContentId, PeerId};

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

fn version(n: u64) -> ContentId {
    ContentId(n.to_be_bytes().to_vec())
}

fn hex(id: &ContentId) -> String {
    id.0.iter().map(|b| format!("{b:02x}")).collect()
}

fn peer(n: u8) -> PeerId {
    PeerId::from_digest([n; 32])
}

/// The item the child enqueues for counter `n`: its content names `n`, so the
/// supervisor can check it came back unchanged.
fn item(n: u64) -> SyncItem {
    let factor = 1 + (n % 3) as u32;
    match n % 3 {
        0 => SyncItem::Replicate {
            collection: "c".into(),
            id: format!("d{n}"),
            version: ContentId(n.to_be_bytes().to_vec()),
            factor,
        },
        1 => SyncItem::Tombstone {
            collection: "c".into(),
            id: format!("t{n}"),
            version: ContentId(n.to_be_bytes().to_vec()),
            factor,
        },
        _ => SyncItem::PushBlob {
            blob: ContentId([n.to_be_bytes(), [7; 8]].concat()),
            collection: "files".into(),
            id: n.is_multiple_of(2).then(|| format!("f{n}")),
            factor,
        },
    }
}

/// The child: enqueues items and acknowledges earlier ones, printing a line
/// after each call returned Ok:
/// `enq <seq> <n>`, `ack <seq> <peer> done|partial`.
#[test]
#[ignore = "entry point of the queue crash test's child process"]
fn queue_crash_child() {
    let dir = std::env::var("ECOMESH_CRASH_DIR").expect("run by the crash supervisor");
    let mut rng = Rng(std::env::var("ECOMESH_CRASH_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap());
    let mut n: u64 = std::env::var("ECOMESH_CRASH_BASE")
        .unwrap()
        .parse()
        .unwrap();
    // The queue and the stream share one database, as a node keeps them.
    let db = sled::open(Path::new(&dir)).unwrap();
    let q = SyncQueue::open_in(&db).unwrap();
    let mut stream = DurableStream::open_in(&db).unwrap();
    let mut previous: Option<ContentId> = None;
    let mut mine: Vec<u64> = Vec::new();
    let mut out = std::io::stdout().lock();
    // libtest prints "test queue_crash_child ... " without a newline first.
    writeln!(out, "ready").unwrap();
    loop {
        if mine.is_empty() || rng.below(3) != 0 {
            n += 1;
            let seq = q.enqueue(item(n)).unwrap();
            mine.push(seq);
            writeln!(out, "enq {seq} {n}").unwrap();
            // A local version on the previous one; every fourth time also a
            // remote version whose parent is the next local one (an outlier
            // until then).
            let id = version(n);
            let mut events = stream
                .ingest(
                    id.clone(),
                    previous.iter().cloned().collect(),
                    Source::Local,
                )
                .unwrap();
            previous = Some(id);
            if n.is_multiple_of(4) {
                let remote = ContentId([&[0xEE_u8][..], &n.to_be_bytes()].concat());
                events.extend(
                    stream
                        .ingest(remote, vec![version(n + 1)], Source::Remote(peer(9)))
                        .unwrap(),
                );
            }
            for e in events {
                let pos = e.position.map_or("-".to_owned(), |p| p.to_string());
                writeln!(out, "str {pos} {}", hex(&e.id)).unwrap();
            }
        } else {
            let i = rng.below(mine.len() as u64) as usize;
            let seq = mine[i];
            let p = rng.below(4) as u8 + 1;
            // Announced first: if the kill lands after the ack took effect but
            // before its result is printed, the supervisor knows the item may
            // be gone.
            writeln!(out, "try {seq} {p}").unwrap();
            out.flush().unwrap();
            match q.ack(seq, peer(p)).unwrap() {
                AckOutcome::Done => {
                    mine.swap_remove(i);
                    writeln!(out, "ack {seq} {p} done").unwrap();
                }
                AckOutcome::Partial { .. } => writeln!(out, "ack {seq} {p} partial").unwrap(),
                AckOutcome::Unknown => panic!("own item {seq} vanished"),
            }
        }
        out.flush().unwrap();
    }
}

fn run_child(
    dir: &Path,
    base: u64,
    child_seed: u64,
    lines_wanted: usize,
    jitter_us: u64,
) -> Vec<String> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "queue_crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ECOMESH_CRASH_DIR", dir)
        .env("ECOMESH_CRASH_BASE", base.to_string())
        .env("ECOMESH_CRASH_CHILD_SEED", child_seed.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let ours = ["enq ", "ack ", "str ", "try "]
                .iter()
                .any(|p| line.starts_with(p));
            if ours && tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while lines.len() < lines_wanted {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "child gave {} of {lines_wanted} lines before the deadline",
                    lines.len()
                );
            }
        }
    }
    // Kill at a random point inside a later call.
    std::thread::sleep(Duration::from_micros(jitter_us));
    child.kill().unwrap();
    child.wait().unwrap();
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

#[test]
fn queue_survives_sigkill() {
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
        "queue crash test: {restarts} restarts, seed {seed} (replay with ECOMESH_CRASH_SEED={seed})"
    );
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    // seq -> (n, peers acknowledged) for items enqueued and not done.
    let mut live: BTreeMap<u64, (u64, BTreeSet<PeerId>)> = BTreeMap::new();
    let mut done: BTreeSet<u64> = BTreeSet::new();
    // Stream entries printed by the child: id (hex) -> position; outliers.
    let mut placed: BTreeMap<String, u64> = BTreeMap::new();
    let mut outliers: BTreeSet<String> = BTreeSet::new();
    let mut max_seq = 0;
    for restart in 0..restarts {
        let wanted = 1 + rng.below(60) as usize;
        let jitter = rng.below(3000);
        let lines = run_child(
            dir.path(),
            restart * 1_000_000,
            rng.next() | 1,
            wanted,
            jitter,
        );
        let mut first_seq_this_run = None;
        // An acknowledgement announced but without a printed result.
        let mut in_flight: Option<u64> = None;
        for line in &lines {
            let parts: Vec<&str> = line.split(' ').collect();
            if parts[0] == "str" {
                match parts[1] {
                    "-" => {
                        outliers.insert(parts[2].to_owned());
                    }
                    pos => {
                        outliers.remove(parts[2]);
                        placed.insert(parts[2].to_owned(), pos.parse().unwrap());
                    }
                }
                continue;
            }
            let seq: u64 = parts[1].parse().unwrap();
            if parts[0] == "try" {
                in_flight = Some(seq);
                continue;
            }
            if parts[0] == "ack" {
                in_flight = None;
            }
            match parts[0] {
                "enq" => {
                    first_seq_this_run.get_or_insert(seq);
                    live.insert(seq, (parts[2].parse().unwrap(), BTreeSet::new()));
                }
                _ => {
                    let p = peer(parts[2].parse().unwrap());
                    if parts[3] == "done" {
                        live.remove(&seq);
                        done.insert(seq);
                    } else {
                        live.get_mut(&seq)
                            .unwrap_or_else(|| panic!("{line}: {lines:?}"))
                            .1
                            .insert(p);
                    }
                }
            }
        }
        if let Some(first) = first_seq_this_run {
            assert!(
                first > max_seq,
                "restart {restart} (seed {seed}): sequence went back from {max_seq} to {first}"
            );
        }
        max_seq = max_seq.max(
            lines
                .iter()
                .filter(|l| !l.starts_with("str "))
                .map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
                .max()
                .unwrap_or(0),
        );
        let db = sled::open(dir.path()).unwrap();
        let stream = DurableStream::open_in(&db)
            .unwrap_or_else(|e| panic!("restart {restart} (seed {seed}): stream: {e}"));
        let index = stream.index();
        for (id, pos) in &placed {
            let found = index.changes_since(pos - 1, 1).entries;
            assert!(
                found
                    .first()
                    .is_some_and(|e| hex(&e.id) == *id && e.position == *pos),
                "restart {restart} (seed {seed}): stream entry {pos} ({id}) lost"
            );
        }
        let held: BTreeSet<String> = index.outliers().map(hex).collect();
        for id in &outliers {
            // Either still an outlier or placed by a call whose line was cut off.
            let placed_later = index
                .changes_since(0, usize::MAX)
                .entries
                .iter()
                .any(|e| hex(&e.id) == *id);
            assert!(
                held.contains(id) || placed_later,
                "restart {restart} (seed {seed}): outlier {id} lost"
            );
        }
        drop(stream);
        let q = SyncQueue::open_in(&db).unwrap();
        let mut from = 0;
        let mut present = BTreeMap::new();
        loop {
            let page = q
                .pending(from, 100)
                .unwrap_or_else(|e| panic!("restart {restart} (seed {seed}): {e}"));
            for p in page.items {
                present.insert(p.seq, p);
            }
            match page.next {
                Some(n) => from = n,
                None => break,
            }
        }
        if let Some(seq) = in_flight {
            // It may have completed the item: present or not, both are right.
            if !present.contains_key(&seq) {
                live.remove(&seq);
                done.insert(seq);
            }
        }
        for (seq, (n, acked)) in &live {
            let p = present.get(seq).unwrap_or_else(|| {
                let history: Vec<&String> = lines
                    .iter()
                    .filter(|l| !l.starts_with("str ") && l.split(' ').nth(1) == Some(&seq.to_string()))
                    .collect();
                panic!("restart {restart} (seed {seed}): enqueued item {seq} lost (its lines: {history:?})")
            });
            assert_eq!(
                p.item,
                item(*n),
                "restart {restart} (seed {seed}): item {seq} changed"
            );
            assert!(
                p.acked_by.is_superset(acked),
                "restart {restart} (seed {seed}): acknowledgements of {seq} lost: {:?} vs {acked:?}",
                p.acked_by
            );
        }
        for seq in &done {
            assert!(
                !present.contains_key(seq),
                "restart {restart} (seed {seed}): done item {seq} came back"
            );
        }
        drop(q);
    }
    assert!(max_seq > 0);
}
