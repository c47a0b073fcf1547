//! Damaged storage on real `ecomesh` processes (issue 21, item 7): a node
//! writes 50 documents and is killed; 4 KiB of one of its databases (the
//! store with its blobs, the stream, the sync queue) are overwritten with
//! random bytes at the start, the middle, the end or a random offset; on
//! restart the node must not panic, must report the damage in `status`
//! (where the damaged files went, what was lost), and with a peer holding
//! the data must converge back to all 50 documents through anti-entropy;
//! without a peer it must name exactly the documents it lost. Offsets and the
//! seed are printed; `ECOMESH_DAMAGE_SEED` replays the random offsets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::Value;

mod common;
use common::{Node, ok_json, wait_for};

const DOCS: usize = 50;

fn write_docs(n: &Node) {
    for i in 0..DOCS {
        let fields = format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(300));
        ok_json(
            &n.data,
            &["doc", "put", "notes", &format!("d{i:02}"), &fields],
        );
    }
}

fn ids(n: &Node) -> BTreeSet<String> {
    let list = ok_json(&n.data, &["doc", "list", "notes"]);
    list["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

fn seed() -> u64 {
    let seed = std::env::var("ECOMESH_DAMAGE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("ECOMESH_DAMAGE_SEED={seed}");
    seed
}

/// Overwrites 4 KiB of `file` at `fraction` of its length (`None`: at an
/// offset drawn from `seed`) with bytes drawn from `seed`; returns the offset.
fn damage(file: &Path, fraction: Option<f64>, seed: u64) -> u64 {
    let len = std::fs::metadata(file).unwrap().len();
    let room = len.saturating_sub(4096);
    let offset = match fraction {
        Some(f) => ((len as f64 * f) as u64).min(room),
        None => (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % room.max(1),
    };
    let mut f = std::fs::OpenOptions::new().write(true).open(file).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut x = seed | 1;
    let junk: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    f.write_all(&junk).unwrap();
    eprintln!("{}: 4 KiB of {len} overwritten at {offset}", file.display());
    offset
}

fn storage(n: &Node) -> Value {
    n.status()["storage"].clone()
}

#[test]
fn damaged_databases_are_reported_and_healed_from_a_peer() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    let addr_b = b.start(&["--listen", "127.0.0.1:0"]);
    a.start(&["--listen", "127.0.0.1:0", "--peer", &addr_b]);
    eprintln!("a = {ida}, b = {idb} on {addr_b}");
    write_docs(&a);
    wait_for("b to hold the 50 documents", || {
        (ids(&b).len() == DOCS).then_some(())
    });
    assert_eq!(storage(&a)["state"], "healthy");

    // The first rebuild leaves a db file of a preallocated 512 KiB segment,
    // mostly free space: damage there loses nothing, which is checked too.
    let cases: [(&str, Option<f64>); 7] = [
        ("store/db", Some(0.0)),
        ("store/db", Some(0.5)),
        ("store/db", Some(0.25)),
        ("store/db", Some(1.0)),
        ("store/db", None),
        ("stream/db", Some(0.0)),
        ("queue/db", Some(0.0)),
    ];
    for (round, (file, fraction)) in cases.into_iter().enumerate() {
        a.kill9();
        let path = a.data.join(file);
        damage(&path, fraction, seed.wrapping_add(round as u64));
        a.start(&["--listen", "127.0.0.1:0", "--peer", &addr_b]);
        let log = a.last_run_log();
        assert!(!log.contains("panicked"), "round {round}: a panicked");
        let s = storage(&a);
        eprintln!("round {round} ({file} at {fraction:?}): {s}");
        let here = ids(&a);
        if file == "store/db" && here.len() < DOCS {
            // Something acknowledged was lost: it is reported, and the
            // damaged files are kept.
            let damaged = s["damaged"].as_array().unwrap();
            let store = damaged
                .iter()
                .find(|d| d["database"] == "store")
                .unwrap_or_else(|| panic!("round {round}: store damage not reported: {s}"));
            let moved = store["moved_to"].as_str().unwrap();
            assert!(Path::new(moved).join("db").exists(), "{moved} kept");
            assert!(
                store["lost_documents"].as_u64().unwrap() >= (DOCS - here.len()) as u64,
                "round {round}: {s}"
            );
            assert!(log.contains("store rebuilt after damage"), "logged loudly");
        }
        if file != "store/db" {
            let name = file.split('/').next().unwrap();
            assert!(
                s["damaged"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["database"] == name),
                "round {round}: {name} damage not reported: {s}"
            );
        }
        // The peer gives everything back through anti-entropy.
        wait_for("a to hold the 50 documents again", || {
            (ids(&a).len() == DOCS).then_some(())
        });
        wait_for("a's storage to be healthy or recovered", || {
            let s = storage(&a);
            (s["state"] == "healthy" || s["state"] == "recovered").then_some(())
        });
        for i in [0, DOCS / 2, DOCS - 1] {
            let f = a.local_fields("notes", &format!("d{i:02}")).unwrap();
            assert_eq!(f["n"], i, "round {round}: d{i:02}");
        }
    }
    // A write after the repairs still reaches the peer.
    ok_json(&a.data, &["doc", "put", "notes", "after", r#"{"n":99}"#]);
    wait_for("b to get the write made after the repairs", || {
        b.local_fields("notes", "after")
    });
}

#[test]
fn without_a_peer_the_node_names_exactly_what_it_lost() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let (mut c, idc) = Node::init(dir.path(), "c");
    c.start(&["--listen", "127.0.0.1:0"]);
    eprintln!("c = {idc}");
    write_docs(&c);
    c.kill9();
    damage(&c.data.join("store/db"), Some(0.5), seed);
    c.start(&["--listen", "127.0.0.1:0"]);
    assert!(!c.last_run_log().contains("panicked"));
    let here = ids(&c);
    let lost: BTreeSet<String> = (0..DOCS)
        .map(|i| format!("d{i:02}"))
        .filter(|id| !here.contains(id))
        .collect();
    let s = storage(&c);
    eprintln!("{} of {DOCS} documents left: {s}", here.len());
    assert!(!lost.is_empty(), "the middle of the log held documents");
    assert_eq!(s["state"], "refetching");
    assert_eq!(s["missing_documents"], lost.len() as u64);
    assert_eq!(s["missing_versions"], lost.len() as u64);
    let named: BTreeSet<String> = s["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["collection"], "notes");
            m["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(named, lost, "exactly the lost documents are named");
    let human = common::ecomesh(&c.data, &["status"]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("DAMAGED, refetching"), "{text}");
}
