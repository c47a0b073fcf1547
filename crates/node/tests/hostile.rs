//! Hostile peers on real processes (issue 20, item 7): an attacker speaking
//! the wired transport's real protocol (`attacker/`, this test process) floods
//! a real `ecomesh node` (the victim, A) with invalid signatures, versions
//! whose bytes are not what was signed, garbage and oversized frames, replays
//! and a Sybil announce storm, while an honest node B keeps writing documents
//! that replicate to A.
//!
//! `hostile_peers_on_real_processes` (CI) asserts, for every attack: every
//! honest write reaches A within a bounded deadline, A's memory stays under a
//! generous bound (VmRSS / VmHWM from `/proc`), A does not crash, and the
//! attacker is charged (its reputation on A drops, or A disconnects it).
//! `hostile_figure` (ignored; `cargo xtask hostile` runs it) measures honest
//! writes per second during each attack as a ratio to the same run's rounds
//! without an attack, and prints the table. Nothing here asserts a speed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod attacker;
mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use attacker::{Attack, Running};
use common::{Node, ok_json, wait_for, wait_within};
use serde_json::Value;

/// How long every honest write may take to reach A, under any attack.
const HONEST_DEADLINE: Duration = Duration::from_secs(45);
/// A's resident memory may grow at most this much over its size before the
/// attacks (a maximal message being reassembled is 16 MiB per link).
const MEMORY_GROWTH_BOUND_KIB: u64 = 256 * 1024;

/// A node's API: base URL and bearer token.
struct Api {
    base: String,
    token: String,
}

impl Api {
    fn of(n: &Node) -> Api {
        Api {
            base: format!("http://{}", n.api_addr()),
            token: n.api_token(),
        }
    }

    /// Writes documents `ids` of `collection` with one curl process (one
    /// connection, kept alive); panics unless every answer is 200.
    fn put_many(&self, dir: &Path, collection: &str, ids: std::ops::Range<u32>) {
        let mut config = String::new();
        for i in ids.clone() {
            config.push_str(&format!(
                "url = \"{}/api/v1/collections/{collection}/docs/d{i}\"\nrequest = \"PUT\"\n\
                 header = \"Authorization: Bearer {}\"\ndata = \"{{\\\"fields\\\": {{\\\"n\\\": {i}}}}}\"\n\
                 output = \"/dev/null\"\nwrite-out = \"%{{http_code}}\\n\"\nsilent\n",
                self.base, self.token
            ));
            if i + 1 < ids.end {
                config.push_str("next\n");
            }
        }
        let file = dir.join(format!("put-{collection}.curl"));
        std::fs::write(&file, config).unwrap();
        let o = Command::new("curl")
            .arg("-K")
            .arg(&file)
            .output()
            .expect("curl runs (cargo xtask deps installs it)");
        let codes = String::from_utf8_lossy(&o.stdout);
        let ok = codes.lines().filter(|l| l.trim() == "200").count();
        assert_eq!(
            ok,
            ids.len(),
            "writes on B: {codes} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// How many documents `collection` holds (at most 1000).
    fn count(&self, collection: &str) -> usize {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-H"])
            .arg(format!("Authorization: Bearer {}", self.token))
            .arg(format!(
                "{}/api/v1/collections/{collection}/docs?limit=1000",
                self.base
            ))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&o.stdout)
            .ok()
            .and_then(|v| v["documents"].as_array().map(Vec::len))
            .unwrap_or(0)
    }
}

/// A's memory figures, KiB, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    hwm: u64,
}

fn memory(pid: &str) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    }
}

/// The victim A and the honest node B, connected over wired on loopback.
struct Pair {
    dir: std::path::PathBuf,
    a: Node,
    b: Node,
    addr_a: SocketAddr,
    api_a: Api,
    api_b: Api,
    /// Last: the nodes print their logs from it when a test fails.
    _dir: tempfile::TempDir,
}

fn pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (mut a, _) = Node::init(&path, "victim");
    let (mut b, id_b) = Node::init(&path, "honest");
    let addr_a = a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0", "--peer", &addr_a]);
    wait_for("B connected to A", || {
        a.peers_on("wired").contains(&id_b).then_some(())
    });
    let api_a = Api::of(&a);
    let api_b = Api::of(&b);
    Pair {
        addr_a: addr_a.parse().unwrap(),
        dir: path,
        _dir: dir,
        a,
        b,
        api_a,
        api_b,
    }
}

impl Pair {
    /// Writes `n` documents on B into `collection` and waits until all are on
    /// A; returns how long that took (first write to last arrival). Fails
    /// after [`HONEST_DEADLINE`], naming the attack.
    fn honest_round(&self, collection: &str, n: u32, during: &str) -> Duration {
        let start = Instant::now();
        let (api_a, api_b, dir) = (&self.api_a, &self.api_b, &self.dir);
        std::thread::scope(|s| {
            s.spawn(|| api_b.put_many(dir, collection, 0..n));
            let want = usize::try_from(n).unwrap();
            wait_within(
                HONEST_DEADLINE,
                &format!("{n} honest writes B -> A during {during}"),
                || (api_a.count(collection) >= want).then_some(()),
            );
        });
        start.elapsed()
    }

    /// [`honest_round`](Self::honest_round) that never fails: the writes
    /// that reached A within [`HONEST_DEADLINE`] per second (a measurement).
    fn honest_rate(&self, collection: &str, n: u32) -> (f64, usize) {
        let start = Instant::now();
        let (api_a, api_b, dir) = (&self.api_a, &self.api_b, &self.dir);
        let want = usize::try_from(n).unwrap();
        let got = std::thread::scope(|s| {
            s.spawn(|| api_b.put_many(dir, collection, 0..n));
            loop {
                let got = api_a.count(collection);
                if got >= want || start.elapsed() > HONEST_DEADLINE {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        (got as f64 / start.elapsed().as_secs_f64(), got)
    }

    fn pid_a(&self) -> String {
        self.a.pid().expect("A runs")
    }

    /// The reputation A gives `peer` while it is connected.
    fn reputation_on_a(&self, peer: &str) -> Option<f64> {
        ok_json(&self.a.data, &["peers"])
            .as_array()?
            .iter()
            .find(|p| p["peer_id"] == peer)
            .and_then(|p| p["reputation"].as_f64())
    }
}

/// Starts `attack` at `rate` and waits until it sent `warmup` hostile things.
fn launch(p: &Pair, attack: Attack, rate: u32, warmup: u64) -> Running {
    let run = attacker::start(attack, p.addr_a, rate);
    wait_for(
        &format!("the {} attack to get going", attack.name()),
        || (run.tally.sent() >= warmup).then_some(()),
    );
    run
}

/// The charge A laid on the attacker: its reputation dropped below neutral
/// while it was connected, or A disconnected it for its reputation.
fn assert_charged(p: &Pair, run: &Running) {
    let peer = run.peer.to_base58();
    wait_for(
        &format!("A to charge the {} attacker {peer}", run.attack.name()),
        || {
            let low = p.reputation_on_a(&peer).is_some_and(|r| r < 0.45);
            let cut =
                p.a.last_run_log()
                    .lines()
                    .any(|l| l.contains(&peer) && l.contains("reputation too low"));
            (low || cut).then_some(())
        },
    );
}

#[test]
fn hostile_peers_on_real_processes() {
    let started = Instant::now();
    let mut p = pair();
    p.honest_round("warmup", 10, "no attack");
    let before = memory(&p.pid_a());
    eprintln!("A before the attacks: {before:?}");
    let mut peak = before;
    for attack in Attack::ALL {
        let run = launch(&p, attack, 400, 20);
        let collection = format!("honest{}", attack as u8);
        let took = p.honest_round(&collection, 30, attack.name());
        let during = memory(&p.pid_a());
        match attack {
            Attack::BadSignature | Attack::WrongCid | Attack::Garbage => assert_charged(&p, &run),
            // Replays are valid messages (deduplicated, never credited twice);
            // Sybils are fresh ids with nothing against them.
            Attack::Replay | Attack::Sybil => {}
        }
        let tally = run.stop();
        eprintln!(
            "{}: sent {} in {} sessions ({} refused); 30 honest writes in {took:?}; A {during:?}",
            attack.name(),
            tally.sent(),
            tally.sessions(),
            tally.refused(),
        );
        assert!(p.a.is_running(), "A died during {}", attack.name());
        peak.rss = peak.rss.max(during.rss);
        peak.hwm = peak.hwm.max(during.hwm);
    }
    if attack_sybil_count_ok(&p) {
        eprintln!("Sybil peers left A's peer list");
    }
    let after = memory(&p.pid_a());
    eprintln!("A after the attacks: {after:?}, peak {peak:?}");
    assert!(
        after.hwm <= before.rss + MEMORY_GROWTH_BOUND_KIB,
        "A's peak memory {} KiB grew more than {MEMORY_GROWTH_BOUND_KIB} KiB over {} KiB",
        after.hwm,
        before.rss
    );
    // Honest traffic still flows both ways after the storm.
    p.honest_round("after", 10, "the end of the attacks");
    assert!(p.b.is_running());
    eprintln!("hostile test took {:?}", started.elapsed());
}

/// Sybil identities do not stay listed once they left (A's peer list is
/// bounded by who is connected, not by who ever came).
fn attack_sybil_count_ok(p: &Pair) -> bool {
    wait_for("the Sybil peers to leave A's peer list", || {
        let n = ok_json(&p.a.data, &["peers"])
            .as_array()
            .map_or(0, Vec::len);
        (n <= 2).then_some(true)
    })
}

/// The figure of issue 20: honest writes per second B -> A during each attack
/// as a ratio to the rounds without attack around it (same run). Run with
/// `cargo xtask hostile` (or `cargo nextest run -p ecomesh-node --test hostile
/// --run-ignored only --no-capture`). `ECOMESH_HOSTILE_WRITES` (default 200)
/// and `ECOMESH_HOSTILE_RATE` (hostile sends per second per attacker thread,
/// default 2000) tune it.
#[test]
#[ignore = "a measurement: cargo xtask hostile"]
fn hostile_figure() {
    let env = |k: &str, d: u32| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("ECOMESH_HOSTILE_WRITES", 200);
    let rate = env("ECOMESH_HOSTILE_RATE", 2000);
    let p = pair();
    p.honest_round("warmup", 20, "no attack");
    let mut rows = Vec::new();
    let mut round = 0;
    let mut baseline = |p: &Pair| {
        round += 1;
        p.honest_rate(&format!("base{round}"), n).0
    };
    let mut before = baseline(&p);
    // `ECOMESH_HOSTILE_ATTACKS=sybil,replays` (words of the attacks' names)
    // measures only those.
    let only = std::env::var("ECOMESH_HOSTILE_ATTACKS").unwrap_or_default();
    let chosen = Attack::ALL.into_iter().filter(|a| {
        only.is_empty()
            || only
                .split(',')
                .any(|w| a.name().to_lowercase().contains(&w.to_lowercase()))
    });
    for attack in chosen {
        let run = launch(&p, attack, rate, 50);
        let rss0 = memory(&p.pid_a()).rss;
        let (during, arrived) = p.honest_rate(&format!("attack{}", attack as u8), n);
        let mem = memory(&p.pid_a());
        let tally = run.stop();
        let after = baseline(&p);
        let base = (before + after) / 2.0;
        eprintln!(
            "{}: {during:.1}/s during, {base:.1}/s around, {} sent",
            attack.name(),
            tally.sent()
        );
        rows.push((
            attack,
            during,
            base,
            (tally.sent(), arrived),
            rss0.max(mem.rss),
            mem.hwm,
        ));
        before = after;
    }
    println!(
        "\nhonest writes B -> A per second ({n} writes per round, attacker at {rate}/s per thread)"
    );
    println!(
        "| attack | hostile sends | honest writes arrived | honest/s during | honest/s without (around) | ratio | A VmRSS KiB | A VmHWM KiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (attack, during, base, (sent, arrived), rss, hwm) in rows {
        println!(
            "| {} | {sent} | {arrived}/{n} | {during:.1} | {base:.1} | {:.2} | {rss} | {hwm} |",
            attack.name(),
            during / base
        );
    }
}
