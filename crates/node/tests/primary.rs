//! A node as a primary for devices (issue 19): the `/primary/v1/` routes
//! carry only the gate's bytes, bounded, with its errors as statuses; and a
//! device's hybrid adapter over `RemoteStorageAdapter` queues its writes while
//! the primary process is down and replays them exactly once when it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ecomesh_hybrid_storage::{
    DeviceAuth, Grant, HealthConfig, HybridConfig, HybridStorageAdapter, PrimaryHealth, Strategy,
};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_mesh::{MeshConfig, MultiTransportManager};
use ecomesh_node::remote::{RemoteConfig, RemoteStorageAdapter};
use ecomesh_p2p_storage::kv::SledBackend;
use ecomesh_p2p_storage::{P2PConfig, P2PStorageAdapter, SledStore, StoreConfig};
use ecomesh_types::{Map, PeerId, SetOptions, StorageAdapter, Value};
use serde_json::{Value as Json, json};

use common::{Node, curl, ok_json, wall_ms};

fn post(api: &str, path: &str, token: Option<&str>, body: &str) -> common::Http {
    let url = format!("http://{api}{path}");
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    args.push(&url);
    curl(&args)
}

fn kind(r: &common::Http) -> Json {
    r.json()["error"]["kind"].clone()
}

/// Authenticates `identity` by hand over curl: the routes' contract.
fn authenticate(api: &str, identity: &Identity) -> String {
    let (mut auth, hello) =
        DeviceAuth::start(identity.clone(), Arc::new(AccessPolicy::Open)).unwrap();
    let c = post(
        api,
        "/primary/v1/challenge",
        None,
        &json!({ "hello": STANDARD.encode(hello) }).to_string(),
    );
    assert_eq!(c.status, 200, "{}", c.body);
    let c = c.json();
    let challenge = STANDARD.decode(c["challenge"].as_str().unwrap()).unwrap();
    let response = auth.on_challenge(&challenge).unwrap();
    let g = post(
        api,
        "/primary/v1/verify",
        None,
        &json!({ "session": c["session"], "response": STANDARD.encode(response) }).to_string(),
    );
    assert_eq!(g.status, 200, "{}", g.body);
    let g = g.json();
    let device: PeerId = g["device"].as_str().unwrap().parse().unwrap();
    assert_eq!(device, identity.peer_id());
    let grant = Grant::new(
        STANDARD.decode(g["confirm"].as_str().unwrap()).unwrap(),
        g["token"].as_str().unwrap().to_owned(),
        g["expires_ms"].as_u64().unwrap(),
        device,
    );
    // The primary's Confirm verifies: the device talks to the node it meant.
    auth.on_grant(&grant).unwrap();
    grant.token
}

#[test]
fn the_primary_routes_check_the_token_bound_bodies_and_map_the_gates_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = Node::init(dir.path(), "primary");
    p.start(&["--listen", "127.0.0.1:0"]);
    let api = p.api_addr();

    // Nothing is merged or served without the gate's token.
    let none = post(&api, "/primary/v1/versions", None, r#"{"versions":[]}"#);
    assert_eq!((none.status, kind(&none)), (401, json!("unauthorized")));
    let forged = format!(
        "{}.{}.{}",
        Identity::generate().unwrap().peer_id(),
        wall_ms() + 60_000,
        "00".repeat(32)
    );
    let f = post(
        &api,
        "/primary/v1/versions",
        Some(&forged),
        r#"{"versions":[]}"#,
    );
    assert_eq!((f.status, kind(&f)), (401, json!("unauthorized")));
    // The node's own API token is not the gate's.
    let api_token = p.api_token();
    let t = post(
        &api,
        "/primary/v1/versions",
        Some(&api_token),
        r#"{"versions":[]}"#,
    );
    assert_eq!(t.status, 401);
    let ping = curl(&[&format!("http://{api}/primary/v1/ping")]);
    assert_eq!(ping.status, 401);

    // Bad bytes at the door are typed errors.
    let not_b64 = post(&api, "/primary/v1/challenge", None, r#"{"hello":"%%%"}"#);
    assert_eq!(
        (not_b64.status, kind(&not_b64)),
        (400, json!("bad_request"))
    );
    let garbage = post(
        &api,
        "/primary/v1/challenge",
        None,
        r#"{"hello":"AAECAw=="}"#,
    );
    assert_eq!(
        (garbage.status, kind(&garbage)),
        (401, json!("auth_failed"))
    );
    let unknown = post(
        &api,
        "/primary/v1/verify",
        None,
        r#"{"session":999,"response":"AA=="}"#,
    );
    assert_eq!(
        (unknown.status, kind(&unknown)),
        (401, json!("unauthorized"))
    );
    let big = format!(r#"{{"hello":"{}"}}"#, "A".repeat(100 * 1024));
    let big_file = dir.path().join("big.json");
    std::fs::write(&big_file, big).unwrap();
    let too_big = post(
        &api,
        "/primary/v1/challenge",
        None,
        &format!("@{}", big_file.display()),
    );
    assert_eq!(
        (too_big.status, kind(&too_big)),
        (413, json!("body_too_large"))
    );

    // An authenticated device: ping answers with its id, a batch over the
    // bound is refused whole, a damaged version is refused alone.
    let device = Identity::generate().unwrap();
    let token = authenticate(&api, &device);
    let ping = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://{api}/primary/v1/ping"),
    ]);
    assert_eq!(ping.status, 200, "{}", ping.body);
    assert_eq!(ping.json()["device"], device.peer_id().to_base58());
    let over = json!({ "versions": vec!["AA=="; 1001] }).to_string();
    let over_file = dir.path().join("over.json");
    std::fs::write(&over_file, over).unwrap();
    let o = post(
        &api,
        "/primary/v1/versions",
        Some(&token),
        &format!("@{}", over_file.display()),
    );
    assert_eq!((o.status, kind(&o)), (413, json!("batch_too_large")));
    let bad = post(
        &api,
        "/primary/v1/versions",
        Some(&token),
        r#"{"versions":["AAECAw=="]}"#,
    );
    assert_eq!(bad.status, 200, "{}", bad.body);
    assert_eq!(bad.json()["outcomes"][0]["outcome"], "refused");
    // The gate's token does not open the node's API.
    let s = curl(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        &format!("http://{api}/api/v1/status"),
    ]);
    assert_eq!(s.status, 401);
    p.terminate();
}

fn fields(n: i64) -> Map {
    [("n".to_owned(), Value::Integer(n))].into_iter().collect()
}

/// The device side: a sled store under a `P2PStorageAdapter`, the hybrid
/// adapter over the remote primary.
fn device(
    dir: &std::path::Path,
    identity: &Identity,
    remote: Arc<RemoteStorageAdapter>,
) -> HybridStorageAdapter<SledBackend> {
    let store =
        SledStore::open(&dir.join("store"), identity.clone(), StoreConfig::default()).unwrap();
    let keys: Arc<BTreeMap<PeerId, PublicKey>> = Arc::default();
    let mesh = Arc::new(MultiTransportManager::new(
        identity.clone(),
        keys,
        MeshConfig::default(),
    ));
    let local = Arc::new(P2PStorageAdapter::new(
        Arc::new(store),
        mesh,
        P2PConfig::default(),
    ));
    let health = HealthConfig::default().with_request_timeout_ms(5_000);
    let config = HybridConfig::new(Strategy::LocalFirstWithPrimarySync).with_health(health);
    HybridStorageAdapter::new(remote, local, &dir.join("queue"), config, Arc::new(wall_ms)).unwrap()
}

fn primary_history(p: &Node, id: &str) -> Vec<Json> {
    let h = ok_json(&p.data, &["doc", "history", "c", id]);
    h["versions"].as_array().cloned().unwrap_or_default()
}

#[test]
fn writes_queued_while_the_primary_process_is_down_replay_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, _) = Node::init(dir.path(), "primary");
    p.start(&["--listen", "127.0.0.1:0"]);
    let api = p.api_addr();
    let addr: SocketAddr = api.parse().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let me = Identity::generate().unwrap();
    let remote = Arc::new(RemoteStorageAdapter::new(
        RemoteConfig::new(addr).with_timeout(Duration::from_secs(5)),
        me.clone(),
        Arc::new(AccessPolicy::Open),
    ));
    let dev_dir = dir.path().join("device");
    let h = device(&dev_dir, &me, remote.clone());

    rt.block_on(async {
        // Authenticates on the first heartbeat; a write reaches the primary.
        assert_eq!(h.heartbeat().await, PrimaryHealth::Healthy);
        h.set("c", "d0", fields(0), SetOptions::default())
            .await
            .unwrap();
        let r = h.replay().await.unwrap();
        assert_eq!(r.applied, 1, "{r:?}");
        assert_eq!(
            remote.get("c", "d0").await.unwrap().unwrap().fields,
            fields(0)
        );
    });

    // The primary dies; writes go on locally and wait in the queue.
    p.kill9();
    const N: i64 = 25;
    rt.block_on(async {
        assert_ne!(h.heartbeat().await, PrimaryHealth::Healthy);
        for n in 1..=N {
            h.set("c", &format!("d{n}"), fields(n), SetOptions::default())
                .await
                .unwrap();
        }
        // A chain: d1 written three times, each version on the last.
        h.set("c", "d1", fields(101), SetOptions::default())
            .await
            .unwrap();
        h.set("c", "d1", fields(201), SetOptions::default())
            .await
            .unwrap();
        assert_eq!(h.queued(), usize::try_from(N).unwrap() + 2);
        assert!(h.replay().await.is_err(), "the primary is down");
        assert_eq!(
            h.queued(),
            usize::try_from(N).unwrap() + 2,
            "nothing leaves the queue unmerged"
        );
    });

    // It comes back at the same address, with a new token key: the device
    // authenticates again and the queue replays.
    p.api = api.clone();
    p.start(&["--listen", "127.0.0.1:0"]);
    rt.block_on(async {
        let mut health = h.heartbeat().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while health != PrimaryHealth::Healthy {
            assert!(
                std::time::Instant::now() < deadline,
                "the primary's return is seen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            health = h.heartbeat().await;
        }
        // The heartbeat that saw the return replayed the queue.
        assert_eq!(h.queued(), 0, "the return replays the whole queue");
        let again = h.replay().await.unwrap();
        assert_eq!(again.applied + again.already_present, 0, "{again:?}");
        for n in 2..=N {
            let d = remote.get("c", &format!("d{n}")).await.unwrap().unwrap();
            assert_eq!(d.fields, fields(n));
        }
        assert_eq!(
            remote.get("c", "d1").await.unwrap().unwrap().fields,
            fields(201)
        );
    });
    // Exactly once, by the primary's own history: one version per write.
    for n in 0..=N {
        let versions = primary_history(&p, &format!("d{n}"));
        let expected = if n == 1 { 3 } else { 1 };
        assert_eq!(versions.len(), expected, "d{n}: {versions:?}");
        assert!(
            versions
                .iter()
                .all(|v| v["author"] == me.peer_id().to_base58().as_str())
        );
    }
    p.terminate();
}
