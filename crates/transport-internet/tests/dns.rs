//! Named hosts in multiaddrs: bootstrap addresses written `/dns4/…`, `/dns6/…` and
//! `/dnsaddr/…` are resolved through the DNS servers of `InternetConfig::dns_servers`
//! and the node reaches its bootstrap peer. The resolver is a tiny DNS responder this
//! test runs on loopback (A, AAAA and `_dnsaddr` TXT answers); no real resolver is
//! ever asked.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecomesh_transport_internet::{InternetConfig, InternetTransport, Multiaddr};
use ecomesh_types::TransportAdapter;
use tokio::net::UdpSocket;

/// One answer the responder gives: an address or TXT strings.
#[derive(Clone, Debug)]
enum Answer {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Txt(String),
}

impl Answer {
    fn qtype(&self) -> u16 {
        match self {
            Answer::A(_) => 1,
            Answer::Aaaa(_) => 28,
            Answer::Txt(_) => 16,
        }
    }

    fn rdata(&self) -> Vec<u8> {
        match self {
            Answer::A(ip) => ip.octets().to_vec(),
            Answer::Aaaa(ip) => ip.octets().to_vec(),
            Answer::Txt(s) => {
                let mut v = Vec::new();
                for chunk in s.as_bytes().chunks(255) {
                    v.push(u8::try_from(chunk.len()).unwrap());
                    v.extend_from_slice(chunk);
                }
                v
            }
        }
    }
}

/// A DNS responder on a loopback UDP port: answers the records of `zone` (lower-case
/// names without the final dot) and counts the questions it was asked, by name.
struct Responder {
    addr: SocketAddr,
    asked: Arc<Mutex<HashMap<(String, u16), usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Responder {
    async fn start(zone: Vec<(String, Answer)>) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(HashMap::new()));
        let counts = asked.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0_u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if let Some((name, qtype, reply)) = answer(&buf[..n], &zone) {
                    *counts.lock().unwrap().entry((name, qtype)).or_insert(0) += 1;
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        Responder { addr, asked, task }
    }

    fn asked(&self, name: &str, qtype: u16) -> usize {
        let key = (name.to_owned(), qtype);
        self.asked.lock().unwrap().get(&key).copied().unwrap_or(0)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query (its first question only): the question's name and type,
/// and the response bytes (NOERROR with the matching records, possibly none).
fn answer(query: &[u8], zone: &[(String, Answer)]) -> Option<(String, u16, Vec<u8>)> {
    if query.len() < 12 || u16::from_be_bytes([query[4], query[5]]) == 0 {
        return None;
    }
    // The question: labels, then type and class.
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*query.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*query.get(at)?, *query.get(at + 1)?]);
    let question_end = at + 4;
    let question = query.get(12..question_end)?;
    let name = labels.join(".");
    let records: Vec<&Answer> = zone
        .iter()
        .filter(|(n, a)| *n == name && a.qtype() == qtype)
        .map(|(_, a)| a)
        .collect();
    let mut out = Vec::new();
    out.extend_from_slice(&query[0..2]); // id
    let rd = query[2] & 0x01;
    out.push(0x84 | rd); // QR, authoritative, RD copied
    out.push(0x80); // RA, NOERROR
    out.extend_from_slice(&1_u16.to_be_bytes());
    out.extend_from_slice(&u16::try_from(records.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for r in records {
        out.extend_from_slice(&[0xC0, 0x0C]); // the question's name
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1_u16.to_be_bytes()); // IN
        out.extend_from_slice(&60_u32.to_be_bytes());
        let rdata = r.rdata();
        out.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&rdata);
    }
    Some((name, qtype, out))
}

fn tcp_port(a: &Multiaddr) -> u16 {
    a.iter()
        .find_map(|p| match p {
            common::libp2p_protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap()
}

/// Starts a node bootstrapping from `bootstrap` with `resolver` as its DNS server, and
/// waits (bounded) until it lists `target` among its peers.
async fn reaches(bootstrap: Multiaddr, resolver: SocketAddr, target: &InternetTransport) {
    let config = InternetConfig {
        bootstrap: vec![bootstrap.clone()],
        dns_servers: vec![resolver],
        ..common::loopback_config(true)
    };
    let node = common::node(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if node.peers().iter().any(|p| p.peer_id == target.peer_id()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bootstrap {bootstrap} (resolver {resolver}) not reached in 30 s; peers {:?}",
            node.peers()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    node.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_addresses_naming_hosts_resolve_through_the_configured_server() {
    common::trace();
    let v6 = "/ip6/::1/tcp/0".parse::<Multiaddr>().unwrap();
    let mut boot_config = common::loopback_config(true);
    boot_config.listen.push(v6);
    let boot = common::node(boot_config).await;
    let id = boot.libp2p_peer_id();
    let v4_port = tcp_port(&common::tcp_addr(&boot));
    let v6_port = boot
        .listen_addrs()
        .iter()
        .find(|a| {
            a.iter()
                .any(|p| matches!(p, common::libp2p_protocol::Ip6(_)))
        })
        .map(tcp_port)
        .expect("listening on [::1]");
    let dnsaddr = format!("dnsaddr=/ip4/127.0.0.1/tcp/{v4_port}/p2p/{id}");
    let dns = Responder::start(vec![
        (
            "boot.ecomesh.test".to_owned(),
            Answer::A(Ipv4Addr::LOCALHOST),
        ),
        (
            "boot6.ecomesh.test".to_owned(),
            Answer::Aaaa(Ipv6Addr::LOCALHOST),
        ),
        (
            "_dnsaddr.peers.ecomesh.test".to_owned(),
            Answer::Txt(dnsaddr),
        ),
    ])
    .await;
    eprintln!(
        "resolver {}, boot {id} tcp {v4_port} / [::1]:{v6_port}",
        dns.addr
    );

    let named: Multiaddr = format!("/dns4/boot.ecomesh.test/tcp/{v4_port}/p2p/{id}")
        .parse()
        .unwrap();
    reaches(named, dns.addr, &boot).await;
    assert!(
        dns.asked("boot.ecomesh.test", 1) > 0,
        "the A record was asked for"
    );

    let named6: Multiaddr = format!("/dns6/boot6.ecomesh.test/tcp/{v6_port}/p2p/{id}")
        .parse()
        .unwrap();
    reaches(named6, dns.addr, &boot).await;
    assert!(
        dns.asked("boot6.ecomesh.test", 28) > 0,
        "the AAAA record was asked for"
    );

    let dnsaddr: Multiaddr = format!("/dnsaddr/peers.ecomesh.test/p2p/{id}")
        .parse()
        .unwrap();
    reaches(dnsaddr, dns.addr, &boot).await;
    assert!(
        dns.asked("_dnsaddr.peers.ecomesh.test", 16) > 0,
        "the _dnsaddr TXT record was asked for"
    );
    boot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_the_server_does_not_know_is_not_reached() {
    common::trace();
    let boot = common::node(common::loopback_config(true)).await;
    let dns = Responder::start(Vec::new()).await;
    let id = boot.libp2p_peer_id();
    let port = tcp_port(&common::tcp_addr(&boot));
    let config = InternetConfig {
        bootstrap: vec![
            format!("/dns4/nowhere.ecomesh.test/tcp/{port}/p2p/{id}")
                .parse()
                .unwrap(),
        ],
        dns_servers: vec![dns.addr],
        ..common::loopback_config(true)
    };
    let node = common::node(config).await;
    // Wait (bounded) until the resolver was asked, then check no connection came of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dns.asked("nowhere.ecomesh.test", 1) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "resolver {} never asked",
            dns.addr
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = node
        .dial(
            format!("/dns4/nowhere.ecomesh.test/tcp/{port}/p2p/{id}")
                .parse()
                .unwrap(),
        )
        .await;
    assert!(err.is_err(), "dialling an unknown name fails: {err:?}");
    assert!(node.peers().iter().all(|p| p.peer_id != boot.peer_id()));
    node.stop().await.unwrap();
    boot.stop().await.unwrap();
}
