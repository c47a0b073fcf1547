//! DHT interoperability with another libp2p implementation: a js-libp2p peer running
//! `@libp2p/kad-dht` (the IPFS DHT, `interop/dht-peer.mjs`, pinned in
//! `interop/package-lock.json`) finds our node as provider of a blob's CID (raw,
//! blake3, as `ecomesh blob put` names it), and we find the js peer as provider of
//! content it announced, looking it up under another CID of the same multihash:
//! provider records are keyed by multihash, as IPFS keys them.
//!
//! Needs `npm ci --prefix crates/transport-internet/interop` beforehand (tests never
//! download). Without `node_modules` the test is skipped with a message, unless
//! `ECOMESH_REQUIRE_INTEROP=1`, when it fails.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use ecomesh_transport_internet::peer_id::ecomesh_peer_id;
use ecomesh_types::TransportAdapter;
use ecomesh_wire::cid::{DAG_CBOR, RAW};
use ecomesh_wire::{HashAlg, cid_for_bytes, cid_to_text, to_content_id};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_kad_dht_and_ecomesh_find_each_others_provider_records() {
    common::trace();
    if !common::interop_installed() {
        return;
    }
    let node = common::node(common::loopback_config(true)).await;
    let addr = common::tcp_addr(&node);
    let me = node.libp2p_peer_id().to_base58();

    // Ours: a blob as `ecomesh blob put` names it.
    let blob = cid_for_bytes(RAW, HashAlg::Blake3, b"an ecomesh blob for the IPFS DHT");
    node.provide(&to_content_id(&blob)).await.unwrap();
    // Theirs: the js peer announces a raw CID; we ask under the dag-cbor CID of the same
    // multihash, which only a multihash-keyed lookup finds.
    let theirs = cid_for_bytes(RAW, HashAlg::Sha2_256, b"content the js peer holds");
    let lookup = cid_for_bytes(DAG_CBOR, HashAlg::Sha2_256, b"content the js peer holds");
    assert_eq!(theirs.hash(), lookup.hash());
    assert_ne!(theirs, lookup);
    eprintln!(
        "ecomesh {me} at {addr}; blob {}; js provides {}; we look up {}",
        cid_to_text(&blob),
        cid_to_text(&theirs),
        cid_to_text(&lookup)
    );

    let mut child = Command::new("node")
        .arg("dht-peer.mjs")
        .arg(addr.to_string())
        .arg(cid_to_text(&blob))
        .arg(cid_to_text(&theirs))
        .current_dir(common::interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("node (v20+) is installed");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let result = tokio::time::timeout(Duration::from_secs(90), async {
        let mut js_peer: Option<libp2p::PeerId> = None;
        let mut js_found_us = false;
        let mut we_found_js = false;
        let mut lookups = tokio::time::interval(Duration::from_millis(500));
        while !(js_found_us && we_found_js) {
            tokio::select! {
                line = lines.next_line() => {
                    let line = line.unwrap().expect("js peer exited early");
                    eprintln!("js: {line}");
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    match v["event"].as_str() {
                        Some("started") => {
                            js_peer = Some(v["peer"].as_str().unwrap().parse().unwrap());
                        }
                        Some("providers") => {
                            assert_eq!(v["cid"].as_str(), Some(cid_to_text(&blob).as_str()));
                            let peers: Vec<&str> = v["peers"].as_array().unwrap().iter().filter_map(|p| p.as_str()).collect();
                            if peers.contains(&me.as_str()) {
                                js_found_us = true;
                            }
                        }
                        _ => {}
                    }
                }
                _ = lookups.tick(), if js_peer.is_some() && !we_found_js => {
                    let js = js_peer.unwrap();
                    let want = ecomesh_peer_id(&js).unwrap();
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        node.find_providers(&to_content_id(&lookup)),
                    ).await {
                        Ok(Ok(found)) => {
                            eprintln!("ecomesh: providers of {}: {found:?}", cid_to_text(&lookup));
                            we_found_js |= found.contains(&want);
                        }
                        Ok(Err(e)) => eprintln!("ecomesh: lookup failed: {e}"),
                        Err(_) => eprintln!("ecomesh: lookup took over 5 s"),
                    }
                }
            }
        }
    })
    .await;
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    result.expect("each side finds the other's provider record within 90 s");
    node.stop().await.unwrap();
}
