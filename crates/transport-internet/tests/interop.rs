//! Interoperability with another libp2p implementation: a js-libp2p peer
//! (`interop/peer.mjs`, pinned versions in `interop/package-lock.json`) dials our node
//! over TCP with Noise and Yamux, both sides run identify, and GossipSub messages flow
//! both ways on a collection topic.
//!
//! Needs `npm ci --prefix crates/transport-internet/interop` beforehand (tests never
//! download). Without `node_modules` the test is skipped with a message, unless
//! `ECOMESH_REQUIRE_INTEROP=1`, when it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ecomesh_transport_internet::{collection_topic, peer_id::ecomesh_peer_id};
use ecomesh_types::{PeerInfo, TransportAdapter, TransportEvent, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_libp2p_identifies_and_exchanges_gossipsub_messages() {
    common::trace();
    if !common::interop_installed() {
        return;
    }
    let dir = common::interop_dir();
    let node = common::node(common::loopback_config(true)).await;
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = node.subscribe(Arc::new(move |e: &TransportEvent| {
        let _ = ev_tx.send(e.clone());
    }));
    let topic = collection_topic("interop");
    let mut messages = node.subscribe_topic(&topic).await.unwrap();
    let addr = common::tcp_addr(&node);

    let mut child = Command::new("node")
        .arg("peer.mjs")
        .arg(addr.to_string())
        .arg(&topic)
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node (v20+) is installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let result = tokio::time::timeout(Duration::from_secs(90), async {
        let mut js_peer: Option<libp2p::PeerId> = None;
        let mut js_identified_us = false;
        let mut we_got_js_message = false;
        let mut js_got_our_message = false;
        let mut we_identified_js = false;
        let mut publish = tokio::time::interval(Duration::from_millis(300));
        while !(js_identified_us && we_got_js_message && js_got_our_message && we_identified_js) {
            tokio::select! {
                line = lines.next_line() => {
                    let line = line.unwrap().expect("js peer exited early");
                    eprintln!("js: {line}");
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    match v["event"].as_str() {
                        Some("started") => {
                            js_peer = Some(v["peer"].as_str().unwrap().parse().unwrap());
                        }
                        Some("identified") => {
                            assert_eq!(v["peer"].as_str(), Some(node.libp2p_peer_id().to_base58().as_str()));
                            let protocols: Vec<&str> = v["protocols"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
                            for p in ["/ipfs/id/1.0.0", "/ipfs/ping/1.0.0", "/meshsub/1.1.0", "/ipfs/kad/1.0.0"] {
                                assert!(protocols.contains(&p), "we announce {p}: {protocols:?}");
                            }
                            assert!(v["agent"].as_str().unwrap().starts_with("ecomesh/"));
                            js_identified_us = true;
                        }
                        Some("message") if v["data"].as_str() == Some("rust-hello") => {
                            assert_eq!(v["from"].as_str(), Some(node.libp2p_peer_id().to_base58().as_str()));
                            js_got_our_message = true;
                        }
                        _ => {}
                    }
                }
                Some(m) = messages.recv() => {
                    if m.data == b"js-hello" {
                        let js = js_peer.expect("started line first");
                        assert_eq!(m.source, Some(ecomesh_peer_id(&js).unwrap()));
                        we_got_js_message = true;
                    }
                }
                Some(e) = ev_rx.recv() => {
                    if let TransportEvent::PeerDiscovered(info) = e {
                        let js = js_peer.expect("started line first");
                        assert_eq!(info.peer_id, ecomesh_peer_id(&js).unwrap());
                        let key = ecomesh_transport_internet::peer_id::ed25519_key_of(&js).unwrap();
                        assert_eq!(info.metadata.get(PeerInfo::PUBLIC_KEY), Some(&Value::Bytes(key.to_vec())));
                        we_identified_js = true;
                    }
                }
                _ = publish.tick() => {
                    let _ = node.publish(&topic, b"rust-hello".to_vec()).await;
                }
            }
        }
    })
    .await;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    result.expect("identify and GossipSub both ways within 90 s");
    node.stop().await.unwrap();
}
