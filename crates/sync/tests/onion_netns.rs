//! Onion routing end to end on real processes in network namespaces (issue 20).
//!
//! Six namespaces the test creates: a switch (`ecm-sw-*`, one bridge) and five
//! nodes on 10.73.0.0/24 joined to it by veth pairs: the client `a`, three
//! relays `r1`..`r3` and the destination `b`. Each node is this test binary
//! re-executed under `ip netns exec` with `ECOMESH_ONION_ROLE` set (see
//! `onion_child_role`): a `MultiTransportManager` over the wired transport
//! (TCP + Noise), driven every 10 ms. The mesh links are the pairs the nodes
//! dial: `a` dials the three relays, the relays dial each other and `b`; `a`
//! and `b` never link. `a` sends one message to `b` with `send_private`
//! (three relays per circuit), which must go over a circuit through all three
//! relays; `b` must receive it from `a`, and `a` must see its ACK.
//!
//! Then each relay reports every (previous hop, next hop) pair it relayed
//! cells between (`onion_relayed_pairs`), and the test asserts that no relay
//! saw both `a` and `b`.
//!
//! Namespace names carry a random suffix, are printed, and are deleted when
//! the test ends. Skipped with a message when not root or `ip netns` is
//! unavailable, unless `ECOMESH_REQUIRE_NETNS=1` (set by `cargo xtask ci`),
//! which turns the skip into a failure.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ecomesh_identity::message::KeyDirectory;
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_mesh::onion::OnionConfig;
use ecomesh_mesh::{MeshConfig, MeshEvent, MultiTransportManager};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::{PeerId, Priority, TransportAdapter};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const ROLE: &str = "ECOMESH_ONION_ROLE";
const REQUIRE: &str = "ECOMESH_REQUIRE_NETNS";
const ROLES: [&str; 5] = ["a", "r1", "r2", "r3", "b"];
const PORT: u16 = 4173;
const TEXT: &str = "onion across namespaces";

fn identity(i: usize) -> Identity {
    Identity::from_secret_bytes(&[0x40 + i as u8; 32])
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 73, 0, 1 + i as u8], PORT))
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

/// The namespaces; deleted on drop.
struct Netns {
    names: Vec<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = ip(&["netns", "del", n]);
        }
        eprintln!("onion netns test: deleted namespaces {:?}", self.names);
    }
}

fn setup_netns() -> Result<Netns, String> {
    let mut r = [0_u8; 3];
    getrandom_suffix(&mut r);
    let suffix: String = r.iter().map(|b| format!("{b:02x}")).collect();
    let sw = format!("ecm-sw-{suffix}");
    let mut ns = Netns { names: Vec::new() };
    ip(&["netns", "add", &sw])?;
    ns.names.push(sw.clone());
    ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &sw, "link", "set", "br0", "up"])?;
    for (i, role) in ROLES.iter().enumerate() {
        let n = format!("ecm-{role}-{suffix}");
        ip(&["netns", "add", &n])?;
        ns.names.push(n.clone());
        ip(&["-n", &n, "link", "set", "lo", "up"])?;
        let (v, s) = (format!("o{i}{suffix}"), format!("s{i}{suffix}"));
        ip(&["link", "add", &v, "type", "veth", "peer", "name", &s])?;
        ip(&["link", "set", &v, "netns", &n])?;
        ip(&["link", "set", &s, "netns", &sw])?;
        ip(&["-n", &sw, "link", "set", &s, "master", "br0"])?;
        ip(&["-n", &sw, "link", "set", &s, "up"])?;
        let a = format!("{}/24", addr(i).ip());
        ip(&["-n", &n, "addr", "add", &a, "dev", &v])?;
        ip(&["-n", &n, "link", "set", &v, "up"])?;
    }
    eprintln!("onion netns test: namespaces {:?}", ns.names);
    Ok(ns)
}

/// A few random bytes for names (the identity generator's randomness).
fn getrandom_suffix(out: &mut [u8]) {
    let id = Identity::generate().unwrap();
    out.copy_from_slice(&id.peer_id().as_bytes()[..out.len()]);
}

struct ChildNode {
    _child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    name: &'static str,
}

fn spawn(ns: &str, role: &'static str) -> ChildNode {
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(exe)
        .args([
            "onion_child_role",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdin = c.stdin.take().unwrap();
    let out = BufReader::new(c.stdout.take().unwrap()).lines();
    ChildNode {
        _child: c,
        stdin,
        out,
        name: role,
    }
}

impl ChildNode {
    /// Waits for a line containing `prefix`; returns what follows it.
    async fn expect(&mut self, prefix: &str) -> String {
        let who = self.name;
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let line = self
                    .out
                    .next_line()
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{who} exited before printing {prefix}"));
                eprintln!("{who}: {line}");
                if let Some(at) = line.find(prefix) {
                    return line[at + prefix.len()..].trim().to_owned();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{who} did not print {prefix} within 60 s"))
    }

    async fn tell(&mut self, command: &str) {
        self.stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }
}

fn am_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn skip(why: &str) {
    assert!(
        std::env::var(REQUIRE).is_err(),
        "{REQUIRE} is set but the onion netns test cannot run: {why}"
    );
    eprintln!("SKIPPED onion netns test: {why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_relay_learns_both_ends_of_a_private_message_between_real_processes() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    if !am_root() {
        skip("needs root to create network namespaces");
        return;
    }
    let ns = match setup_netns() {
        Ok(ns) => ns,
        Err(e) => {
            skip(&format!("cannot create network namespaces: {e}"));
            return;
        }
    };
    // Started destination first, so that each node dials only nodes already listening.
    let mut nodes: BTreeMap<&'static str, ChildNode> = BTreeMap::new();
    for i in (0..ROLES.len()).rev() {
        let mut c = spawn(&ns.names[i + 1], ROLES[i]);
        c.expect("LISTENING").await;
        nodes.insert(ROLES[i], c);
    }
    for role in ROLES {
        nodes.get_mut(role).unwrap().expect("LINKED").await;
    }
    let a = nodes.get_mut("a").unwrap();
    a.tell("SEND").await;
    let outcome = a.expect("OUTCOME").await;
    assert!(
        outcome.starts_with("Onion"),
        "sent over a circuit: {outcome}"
    );
    let path = a.expect("PATH").await;
    a.expect("ACKED").await;
    let got = nodes.get_mut("b").unwrap().expect("GOT").await;
    let pid = |i: usize| identity(i).peer_id().to_string();
    assert_eq!(got, format!("{TEXT} FROM {}", pid(0)));
    // What each relay saw.
    for (i, role) in ROLES.iter().enumerate().take(4).skip(1) {
        let r = nodes.get_mut(role).unwrap();
        r.tell("REPORT").await;
        let pairs = r.expect("PAIRS").await;
        eprintln!("onion netns test: relay {role} ({}) saw {pairs}", pid(i));
        assert!(
            !pairs.is_empty(),
            "relay {role} is on the path {path} and relayed cells"
        );
        let (sees_a, sees_b) = (pairs.contains(&pid(0)), pairs.contains(&pid(4)));
        assert!(
            !(sees_a && sees_b),
            "relay {role} learned both ends: {pairs}"
        );
        // Exactly its neighbours on the path, nobody else.
        let mut hops: Vec<String> = vec![pid(0)];
        hops.extend(path.split('>').map(str::to_owned));
        hops.push(pid(4));
        let at = hops.iter().position(|h| *h == pid(i)).unwrap();
        let (prev, next) = (&hops[at - 1], &hops[at + 1]);
        for pair in pairs.split(',') {
            let (p, rest) = pair.split_once('>').unwrap();
            let q = rest.split(':').next().unwrap();
            assert!(
                (p == prev && q == next) || (p == next && q == prev),
                "relay {role} relayed {pair}, not between its path neighbours {prev} and {next}"
            );
        }
    }
    for role in ROLES {
        nodes.get_mut(role).unwrap().tell("QUIT").await;
    }
    drop(nodes);
    drop(ns);
}

#[derive(Default)]
struct Directory(Mutex<BTreeMap<PeerId, PublicKey>>);

impl KeyDirectory for Directory {
    fn public_key(&self, peer: &PeerId) -> Option<PublicKey> {
        self.0.lock().unwrap().get(peer).copied()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Entry point of the node processes (returns at once unless `ECOMESH_ONION_ROLE` is set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_child_role() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let me = ROLES.iter().position(|r| *r == role).unwrap();
    let id = identity(me);
    let dir = Arc::new(Directory::default());
    for i in 0..ROLES.len() {
        let k = identity(i);
        dir.0.lock().unwrap().insert(k.peer_id(), *k.public_key());
    }
    let transport = Arc::new(WiredTransport::new(
        id.clone(),
        AccessPolicy::Open,
        WiredConfig {
            listen: addr(me),
            ..WiredConfig::default()
        },
    ));
    let config = MeshConfig {
        onion: OnionConfig {
            relays: 3,
            ..OnionConfig::default()
        },
        ..MeshConfig::default()
    };
    let mgr = MultiTransportManager::new(id.clone(), dir, config);
    let events = Arc::new(Mutex::new(Vec::new()));
    let e = events.clone();
    let _sub = mgr.subscribe(Arc::new(move |ev: &MeshEvent| {
        e.lock().unwrap().push(ev.clone())
    }));
    mgr.add_transport(transport.clone());
    transport.start().await.unwrap();
    println!("LISTENING {}", addr(me));
    // a dials the relays; each relay dials the relays after it and b.
    let dial: Vec<usize> = match me {
        0 => vec![1, 2, 3],
        4 => vec![],
        r => (r + 1..ROLES.len()).collect(),
    };
    for d in dial {
        transport.dial(addr(d)).await.unwrap();
    }
    let want = match me {
        0 => 3,
        4 => 3,
        _ => 4,
    };
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut linked = false;
    let mut sent = None;
    let mut seen = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                mgr.process(now_ms()).await;
                if !linked && mgr.peers().len() >= want {
                    linked = true;
                    println!("LINKED {}", mgr.peers().len());
                }
                let evs: Vec<MeshEvent> = events.lock().unwrap()[seen..].to_vec();
                seen += evs.len();
                for ev in evs {
                    match ev {
                        MeshEvent::Message { from, message, .. } => {
                            println!(
                                "GOT {} FROM {from}",
                                String::from_utf8_lossy(&message.payload)
                            );
                        }
                        MeshEvent::Acked { id, .. } if Some(id) == sent => println!("ACKED {id}"),
                        _ => {}
                    }
                }
            }
            line = stdin.next_line() => {
                let Ok(Some(line)) = line else { return };
                match line.trim() {
                    "SEND" => {
                        let b = identity(4).peer_id();
                        let now = now_ms();
                        let m = mgr
                            .new_message("chat", TEXT.as_bytes().to_vec(), Some(b), now, [7; 16])
                            .unwrap();
                        sent = Some(m.id);
                        let out = mgr.send_private(b, m, Priority::Normal, now).await.unwrap();
                        println!("OUTCOME {out:?}");
                        let path: Vec<String> = mgr
                            .onion_path(&b)
                            .unwrap_or_default()
                            .iter()
                            .map(ToString::to_string)
                            .collect();
                        println!("PATH {}", path.join(">"));
                    }
                    "REPORT" => {
                        let pairs: Vec<String> = mgr
                            .onion_relayed_pairs()
                            .iter()
                            .map(|((p, n), count)| format!("{p}>{n}:{count}"))
                            .collect();
                        println!("PAIRS {}", pairs.join(","));
                    }
                    "QUIT" => {
                        let _ = transport.stop().await;
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}
