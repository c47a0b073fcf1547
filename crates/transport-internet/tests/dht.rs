//! Eight nodes on loopback form a Kademlia DHT: providers announce CIDs, a node that
//! knows only one bootstrap peer finds them and fetches the content by request-response;
//! small records are stored and read back.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ecomesh_transport_internet::{
    InternetConfig, InternetError, InternetTransport, Request, RequestHandler, Response,
};
use ecomesh_types::{BoxFuture, ContentId, PeerId};

/// Serves shards and version nodes from a map; accepts pushes into it.
#[derive(Default)]
struct Store(Mutex<HashMap<Vec<u8>, Vec<u8>>>);

impl RequestHandler for Store {
    fn handle(&self, _from: PeerId, request: Request) -> BoxFuture<'static, Response> {
        let mut map = self.0.lock().unwrap();
        let res = match request {
            Request::ShardGet { cid } | Request::VersionNode { cid } => map
                .get(&cid.0)
                .cloned()
                .map_or(Response::NotFound, Response::Data),
            Request::ShardHave { cid } => Response::Have(map.contains_key(&cid.0)),
            Request::ShardPush { cid, data } => {
                map.insert(cid.0, data);
                Response::PushAck
            }
            Request::Message(_) | Request::Hello => Response::Refused,
        };
        Box::pin(async move { res })
    }
}

fn cid(n: u8) -> ContentId {
    // A CIDv1 raw + sha2-256 shape: version, codec, multihash code and length, digest.
    let mut c = vec![0x01, 0x55, 0x12, 0x20];
    c.extend_from_slice(&[n; 32]);
    ContentId(c)
}

fn config(bootstrap: Option<&InternetTransport>) -> InternetConfig {
    InternetConfig {
        bootstrap: bootstrap.map(common::tcp_addr).into_iter().collect(),
        ..common::loopback_config(true)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn providers_are_found_from_one_bootstrap_peer_and_content_is_fetched() {
    common::trace();
    let boot = common::node(config(None)).await;
    let mut nodes = Vec::new();
    for _ in 0..6 {
        nodes.push(common::node(config(Some(&boot))).await);
    }
    // Chain some nodes to each other too, so the table is not a star.
    for i in 1..nodes.len() {
        nodes[i]
            .dial(common::tcp_addr(&nodes[i - 1]))
            .await
            .unwrap();
    }
    let stores: Vec<Arc<Store>> = (0..nodes.len())
        .map(|_| Arc::new(Store::default()))
        .collect();
    for (n, s) in nodes.iter().zip(&stores) {
        n.set_request_handler(s.clone());
    }
    let content = cid(7);
    let bytes = b"shard seven".to_vec();
    let providers = [2usize, 5];
    for &p in &providers {
        stores[p]
            .0
            .lock()
            .unwrap()
            .insert(content.0.clone(), bytes.clone());
        nodes[p].provide(&content).await.unwrap();
    }
    let want: BTreeSet<PeerId> = providers.iter().map(|&p| nodes[p].peer_id()).collect();

    // The eighth node knows only the bootstrap peer.
    let seeker = common::node(config(Some(&boot))).await;
    let mut found = BTreeSet::new();
    for attempt in 0..20 {
        let (got, stats) = seeker.find_providers_with_stats(&content).await.unwrap();
        eprintln!("attempt {attempt}: providers {got:?}, {stats:?}");
        found.extend(got);
        if found == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(found, want, "the seeker finds exactly the providers");
    for p in &want {
        let res = seeker
            .request(
                *p,
                Request::ShardGet {
                    cid: content.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(res, Response::Data(bytes.clone()));
        let have = seeker
            .request(
                *p,
                Request::ShardHave {
                    cid: content.clone(),
                },
            )
            .await
            .unwrap();
        assert_eq!(have, Response::Have(true));
    }
    // A push lands in the provider's store; a missing CID is NotFound.
    let p0 = nodes[providers[0]].peer_id();
    let pushed = cid(9);
    assert_eq!(
        seeker
            .request(
                p0,
                Request::ShardPush {
                    cid: pushed.clone(),
                    data: vec![1, 2, 3]
                }
            )
            .await
            .unwrap(),
        Response::PushAck
    );
    assert_eq!(
        stores[providers[0]].0.lock().unwrap().get(&pushed.0),
        Some(&vec![1, 2, 3])
    );
    assert_eq!(
        seeker
            .request(p0, Request::VersionNode { cid: cid(100) })
            .await
            .unwrap(),
        Response::NotFound
    );
    // Nobody provides this one.
    assert!(seeker.find_providers(&cid(42)).await.unwrap().is_empty());

    // Small records: stored by one node, read by the seeker; oversized refused.
    nodes[3]
        .put_record(b"location/abc", b"holders: 2, 5".to_vec())
        .await
        .unwrap();
    let mut got = None;
    for _ in 0..20 {
        got = seeker.get_record(b"location/abc").await.unwrap();
        if got.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(got, Some(b"holders: 2, 5".to_vec()));
    assert_eq!(seeker.get_record(b"location/none").await.unwrap(), None);
    assert!(matches!(
        nodes[3].put_record(b"big", vec![0; 4097]).await,
        Err(InternetError::TooLarge { .. })
    ));
}
