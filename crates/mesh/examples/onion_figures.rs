//! Figures for the onion note (issue 20): bytes and latency overhead per hop.
//!
//! Real `MultiTransportManager`s in transport-tests' in-memory network
//! (immediate links, so latency is the CPU the nodes spend): a client per
//! circuit length (1, 2, 3, 4 and 8 relays) linked to eight relays, the relays
//! linked to each other and to the destination, plus a client linked to the
//! destination directly (the baseline). For each route, one message is sent
//! and every node is driven until its ACK is back; bytes are summed over every
//! link it crossed (encoded messages, cells included), time is this thread's
//! CPU time (/proc/thread-self/schedstat, read after a yield). Routes alternate round by round
//! so load drifts hit all alike; ratios are against direct in the same run.
//!
//!     cargo run --release -p ecomesh-mesh --example onion_figures [rounds] [per_round]
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::expect_used,
    clippy::needless_range_loop
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ecomesh_identity::message::KeyDirectory;
use ecomesh_identity::{Identity, PublicKey};
use ecomesh_mesh::onion::{CELL_LEN, OnionConfig, OnionRouter};
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager, PrivateOutcome};
use ecomesh_transport_tests::MemNetwork;
use ecomesh_transport_tests::memnet::block_on;
use ecomesh_types::{MessageId, PeerId, Priority, Subscription, TransportAdapter, TransportType};
use ecomesh_wire::encoded_message_len;

#[derive(Default)]
struct Directory(Mutex<BTreeMap<PeerId, PublicKey>>);

impl KeyDirectory for Directory {
    fn public_key(&self, peer: &PeerId) -> Option<PublicKey> {
        self.0.lock().unwrap().get(peer).copied()
    }
}

struct Node {
    id: Identity,
    mgr: MultiTransportManager,
    acked: Arc<Mutex<Vec<MessageId>>>,
    _sub: Subscription,
}

fn node(net: &MemNetwork, seed: u8, dir: &Arc<Directory>, relays: usize) -> Node {
    let id = Identity::from_secret_bytes(&[seed; 32]);
    dir.0.lock().unwrap().insert(id.peer_id(), *id.public_key());
    let config = MeshConfig {
        onion: OnionConfig {
            relays,
            ..OnionConfig::default()
        },
        ..MeshConfig::default()
    };
    let mgr = MultiTransportManager::new(id.clone(), dir.clone(), config);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let a = acked.clone();
    let sub = mgr.subscribe(Arc::new(move |ev: &MeshEvent| {
        if let MeshEvent::Acked { id, .. } = ev {
            a.lock().unwrap().push(*id);
        }
    }));
    let t = net.join(id.peer_id(), TransportType::Wired);
    mgr.add_transport(t.clone());
    block_on(t.start()).unwrap();
    Node {
        id,
        mgr,
        acked,
        _sub: sub,
    }
}

fn pump(nodes: &[Node], now: u64) {
    for _ in 0..10_000 {
        let handled: usize = nodes.iter().map(|n| block_on(n.mgr.process(now))).sum();
        if handled == 0 {
            return;
        }
    }
    panic!("events still flowing");
}

/// This thread's CPU time in nanoseconds (after a yield, so the kernel has
/// brought the running thread's figure up to date).
fn cpu_ns() -> u64 {
    std::thread::yield_now();
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let per_round: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(40);
    let payload_len = 100;
    let routes: [usize; 6] = [0, 1, 2, 3, 4, 8];

    let net = MemNetwork::immediate();
    let dir = Arc::new(Directory::default());
    // 0: destination, 1..=8: relays, then one client per route.
    let mut nodes: Vec<Node> = vec![node(&net, 1, &dir, 3)];
    for i in 0..8 {
        nodes.push(node(&net, 10 + i, &dir, 3));
    }
    let first_client = nodes.len();
    for (k, r) in routes.iter().enumerate() {
        nodes.push(node(&net, 100 + k as u8, &dir, (*r).max(1)));
    }
    let pid = |n: &Node| n.id.peer_id();
    let dest = pid(&nodes[0]);
    for i in 1..=8 {
        net.link(pid(&nodes[i]), dest, TransportType::Wired);
        for j in i + 1..=8 {
            net.link(pid(&nodes[i]), pid(&nodes[j]), TransportType::Wired);
        }
    }
    for (k, r) in routes.iter().enumerate() {
        let c = pid(&nodes[first_client + k]);
        if *r == 0 {
            net.link(c, dest, TransportType::Wired);
        } else {
            for i in 1..=8 {
                net.link(c, pid(&nodes[i]), TransportType::Wired);
            }
        }
    }
    net.record_traffic(1 << 20);
    let mut now = 1_u64;
    pump(&nodes, now);

    // Build every circuit once (its cost reported apart) and warm up.
    let mut build_bytes = BTreeMap::new();
    let mut seq = 0_u32;
    let send = |nodes: &[Node], k: usize, now: u64, seq: &mut u32| -> (usize, u64) {
        let c = &nodes[first_client + k];
        *seq += 1;
        let mut random = [0_u8; 16];
        random[..4].copy_from_slice(&seq.to_le_bytes());
        let m = c
            .mgr
            .new_message("chat", vec![7; payload_len], Some(dest), now, random)
            .unwrap();
        let before = net.traffic().len();
        let t0 = cpu_ns();
        let out = block_on(c.mgr.send_private(dest, m.clone(), Priority::Normal, now)).unwrap();
        pump(nodes, now);
        let spent = cpu_ns() - t0;
        assert!(
            c.acked.lock().unwrap().contains(&m.id),
            "route {k}: no ACK ({out:?})"
        );
        let expect_direct = routes[k] == 0;
        assert_eq!(matches!(out, PrivateOutcome::Direct(_)), expect_direct);
        let bytes: usize = net.traffic()[before..]
            .iter()
            .map(|t| encoded_message_len(&t.message))
            .sum();
        (bytes, spent)
    };
    for k in 0..routes.len() {
        let (b, _) = send(&nodes, k, now, &mut seq);
        build_bytes.insert(routes[k], b);
    }
    now += 1;

    let mut bytes = BTreeMap::new();
    let mut cpu: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            (0..routes.len()).collect()
        } else {
            (0..routes.len()).rev().collect()
        };
        for k in order {
            let mut total = 0;
            for _ in 0..per_round {
                let (b, ns) = send(&nodes, k, now, &mut seq);
                bytes.insert(routes[k], b);
                total += ns;
            }
            cpu.entry(routes[k])
                .or_default()
                .push(total / per_round as u64);
        }
        now += 1;
    }
    let uptime = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "onion figures: {payload_len}-byte payload, {rounds} rounds x {per_round} messages per route, load {}",
        uptime.trim()
    );
    println!(
        "cell: {CELL_LEN} bytes; content per forward cell = {} - 16 x relays",
        OnionRouter::forward_capacity(0) + 16
    );
    let direct_bytes = bytes[&0] as f64;
    let median = |v: &Vec<u64>| {
        let mut v = v.clone();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let direct_cpu = median(&cpu[&0]) as f64;
    println!(
        "| relays | content/cell | bytes on all links (msg + ACK) | x direct | first message incl. build | CPU per message (median of rounds) | x direct |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in routes {
        let cap = if r == 0 {
            0
        } else {
            OnionRouter::forward_capacity(r)
        };
        let b = bytes[&r];
        let c = median(&cpu[&r]);
        println!(
            "| {} | {} | {} | {:.2} | {} | {:.0} us | {:.2} |",
            if r == 0 {
                "direct".to_owned()
            } else {
                r.to_string()
            },
            if r == 0 {
                "-".to_owned()
            } else {
                cap.to_string()
            },
            b,
            b as f64 / direct_bytes,
            build_bytes[&r],
            c as f64 / 1000.0,
            c as f64 / direct_cpu,
        );
    }
}
