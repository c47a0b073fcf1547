//! Circuit relay v2 and DCUtR in network namespaces the test creates.
//!
//! Three namespaces: `a` (10.71.1.2/24), `r` (10.71.1.1/24 and 10.71.2.1/24, forwarding
//! off) and `b` (10.71.2.2/24), joined by two veth pairs, so `a` and `b` have no route to
//! each other and `r` reaches both. A relay node runs in `r`; the node in `b` reserves a
//! circuit on it; the node in `a` dials `b` through the relay, and messages flow both
//! ways over the relayed connection. DCUtR then attempts a hole punch, which must fail
//! here (no route): the test asserts that the attempt was reported.
//!
//! The nodes are this test binary re-executed under `ip netns exec` with
//! `ECOMESH_RELAY_ROLE` set (see `relay_child_role`). Namespace names carry a random
//! suffix, are printed, and are deleted when the test ends. Skipped with a message when
//! not root or `ip netns` is unavailable.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_internet::{
    InternetConfig, InternetEvent, InternetTransport, Multiaddr, peer_id::keypair_from_seed,
};
use ecomesh_types::{MessageId, NetworkMessage, Signature, TransportAdapter, TransportEvent};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const ROLE: &str = "ECOMESH_RELAY_ROLE";
const RELAY_A: &str = "10.71.1.1";
const NODE_A: &str = "10.71.1.2";
const RELAY_B: &str = "10.71.2.1";
const NODE_B: &str = "10.71.2.2";
const PORT: u16 = 4001;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> [u8; 32] {
    let mut out = [0_u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn lp_of(seed: &[u8; 32]) -> libp2p::PeerId {
    keypair_from_seed(seed).unwrap().public().to_peer_id()
}

fn message(from: &InternetTransport, payload: &[u8]) -> NetworkMessage {
    let mut id = [0_u8; 16];
    id[..payload.len().min(16)].copy_from_slice(&payload[..payload.len().min(16)]);
    NetworkMessage {
        id: MessageId::new_v4(id),
        message_type: "relay-test".into(),
        payload: payload.to_vec(),
        sender: from.peer_id(),
        recipient: None,
        timestamp_ms: 1,
        ttl_secs: 60,
        hop_count: 0,
        max_hops: 3,
        signature: Signature::UNSIGNED,
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The three namespaces; deleted on drop.
struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
        eprintln!("relay test: deleted namespaces {:?}", self.names);
    }
}

fn setup_netns() -> Result<Netns, String> {
    let suffix = hex(&Identity::generate().unwrap().peer_id().as_bytes()[..3]);
    let (a, r, b) = (
        format!("ecm-a-{suffix}"),
        format!("ecm-r-{suffix}"),
        format!("ecm-b-{suffix}"),
    );
    let mut ns = Netns { names: Vec::new() };
    for n in [&a, &r, &b] {
        ip(&["netns", "add", n])?;
        ns.names.push(n.clone());
        ip(&["-n", n, "link", "set", "lo", "up"])?;
    }
    eprintln!("relay test: namespaces {:?}", ns.names);
    let (va, vra) = (format!("ea{suffix}"), format!("ra{suffix}"));
    let (vb, vrb) = (format!("eb{suffix}"), format!("rb{suffix}"));
    for (x, ns_x, y, addr_x, addr_y) in [
        (&va, &a, &vra, NODE_A, RELAY_A),
        (&vb, &b, &vrb, NODE_B, RELAY_B),
    ] {
        ip(&["link", "add", x, "type", "veth", "peer", "name", y])?;
        ip(&["link", "set", x, "netns", ns_x])?;
        ip(&["link", "set", y, "netns", &r])?;
        ip(&["-n", ns_x, "addr", "add", &format!("{addr_x}/24"), "dev", x])?;
        ip(&["-n", &r, "addr", "add", &format!("{addr_y}/24"), "dev", y])?;
        ip(&["-n", ns_x, "link", "set", x, "up"])?;
        ip(&["-n", &r, "link", "set", y, "up"])?;
    }
    Ok(ns)
}

fn child(ns: &str, role: &str, seeds: &[[u8; 32]; 3]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "relay_child_role",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env(
            "ECOMESH_RELAY_SEEDS",
            seeds.iter().map(|s| hex(s)).collect::<Vec<_>>().join(","),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = BufReader::new(c.stdout.take().unwrap()).lines();
    (c, lines)
}

/// Waits for a line containing `prefix` from a child; returns what follows it.
async fn expect_line(lines: &mut Lines<BufReader<ChildStdout>>, who: &str, prefix: &str) -> String {
    tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{who} exited before printing {prefix}"));
            eprintln!("{who}: {line}");
            // libtest may print "test relay_child_role ... " before the first line.
            if let Some(at) = line.find(prefix) {
                return line[at + prefix.len()..].trim().to_owned();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{who} did not print {prefix} within 90 s"))
}

fn am_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_a_route_connect_through_a_relay_and_attempt_a_hole_punch() {
    common::trace();
    // CI sets ECOMESH_REQUIRE_NETNS=1: there a skip is a failure.
    let required = std::env::var("ECOMESH_REQUIRE_NETNS").is_ok_and(|v| v == "1");
    if !am_root() {
        assert!(
            !required,
            "relay test needs root to create network namespaces (ECOMESH_REQUIRE_NETNS=1)"
        );
        eprintln!("SKIPPED relay test: needs root to create network namespaces");
        return;
    }
    let ns = match setup_netns() {
        Ok(ns) => ns,
        Err(e) => {
            assert!(
                !required,
                "relay test cannot create network namespaces: {e} (ECOMESH_REQUIRE_NETNS=1)"
            );
            eprintln!("SKIPPED relay test: cannot create network namespaces: {e}");
            return;
        }
    };
    let seeds: [[u8; 32]; 3] =
        std::array::from_fn(|_| common::seed_of(&Identity::generate().unwrap()));
    let (_relay, mut relay_out) = child(&ns.names[1], "relay", &seeds);
    expect_line(&mut relay_out, "relay", "READY").await;
    let (_b, mut b_out) = child(&ns.names[2], "listener", &seeds);
    expect_line(&mut b_out, "listener", "RESERVED").await;
    let (_a, mut a_out) = child(&ns.names[0], "dialer", &seeds);
    let via = expect_line(&mut a_out, "dialer", "CONNECTED").await;
    assert_eq!(via, "relayed");
    let got = expect_line(&mut b_out, "listener", "GOT").await;
    assert_eq!(got, "hello through the relay");
    let reply = expect_line(&mut a_out, "dialer", "GOT").await;
    assert_eq!(reply, "hello back");
    // DCUtR: an attempt is reported on either side; with no route it fails.
    let punch = tokio::select! {
        p = expect_line(&mut a_out, "dialer", "HOLEPUNCH") => p,
        p = expect_line(&mut b_out, "listener", "HOLEPUNCH") => p,
    };
    eprintln!("relay test: hole punch attempt reported: {punch}");
    assert!(
        punch.starts_with("failed"),
        "no route, so the punch fails: {punch}"
    );
}

/// Entry point of the node processes of the relay test, which runs it with
/// `--ignored` and `ECOMESH_RELAY_ROLE` set; ignored otherwise, so it never
/// counts as a passing test of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the relay test's child processes run it (ECOMESH_RELAY_ROLE)"]
async fn relay_child_role() {
    let role = std::env::var(ROLE).expect("run by the relay test, which sets ECOMESH_RELAY_ROLE");
    common::trace();
    let seeds: Vec<[u8; 32]> = std::env::var("ECOMESH_RELAY_SEEDS")
        .unwrap()
        .split(',')
        .map(unhex)
        .collect();
    let relay_id = lp_of(&seeds[0]);
    let b_id = lp_of(&seeds[2]);
    let relay_via_b: Multiaddr = format!("/ip4/{RELAY_B}/tcp/{PORT}/p2p/{relay_id}")
        .parse()
        .unwrap();
    let relay_via_a: Multiaddr = format!("/ip4/{RELAY_A}/tcp/{PORT}/p2p/{relay_id}")
        .parse()
        .unwrap();
    let listen = |port: u16| -> Vec<Multiaddr> {
        vec![
            format!("/ip4/0.0.0.0/tcp/{port}").parse().unwrap(),
            format!("/ip4/0.0.0.0/udp/{port}/quic-v1").parse().unwrap(),
        ]
    };
    let base = InternetConfig {
        dht: false,
        ..InternetConfig::default()
    };
    let (seed, config) = match role.as_str() {
        "relay" => (
            seeds[0],
            InternetConfig {
                listen: listen(PORT),
                relay_server: true,
                ..base
            },
        ),
        "listener" => (
            seeds[2],
            InternetConfig {
                listen: listen(PORT + 1),
                relays: vec![relay_via_b],
                ..base
            },
        ),
        _ => (
            seeds[1],
            InternetConfig {
                listen: listen(PORT + 2),
                ..base
            },
        ),
    };
    let t = InternetTransport::new(&seed, AccessPolicy::Open, config).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let tx2 = tx.clone();
    let _net = t.subscribe_internet(Arc::new(move |e: &InternetEvent| {
        let line = match e {
            InternetEvent::RelayReservation { .. } => "RESERVED".to_owned(),
            InternetEvent::HolePunch { error: None, .. } => "HOLEPUNCH succeeded".to_owned(),
            InternetEvent::HolePunch { error: Some(e), .. } => format!("HOLEPUNCH failed: {e}"),
            other => format!("EVENT {other:?}"),
        };
        let _ = tx2.send(line);
    }));
    let t2 = t.clone();
    let _msgs = t.subscribe(Arc::new(move |e: &TransportEvent| {
        if let TransportEvent::Message { message, .. } = e {
            let _ = tx.send(format!("GOT {}", String::from_utf8_lossy(&message.payload)));
        }
    }));
    t.start().await.unwrap();
    println!("READY {:?}", t.listen_addrs());
    let me_is_dialer = role == "dialer";
    if me_is_dialer {
        t.dial(relay_via_a.clone()).await.unwrap();
        let circuit = relay_via_a
            .with(libp2p::multiaddr::Protocol::P2pCircuit)
            .with(libp2p::multiaddr::Protocol::P2p(b_id));
        let b = t.dial(circuit).await.unwrap();
        let relayed = t.peers().iter().any(|p| {
            p.peer_id == b && p.metadata.get("relayed") == Some(&ecomesh_types::Value::Bool(true))
        });
        println!("CONNECTED {}", if relayed { "relayed" } else { "missing" });
        t.send(b, message(&t, b"hello through the relay"))
            .await
            .unwrap();
    }
    // Print events until the parent ends us (kill on drop) or 120 s pass.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(line)) = tokio::time::timeout_at(deadline, rx.recv()).await {
        println!("{line}");
        if role == "listener" && line == "GOT hello through the relay" {
            let a =
                ecomesh_transport_internet::peer_id::ecomesh_peer_id(&lp_of(&seeds[1])).unwrap();
            t2.send(a, message(&t2, b"hello back")).await.unwrap();
        }
    }
}
