//! The REST routes between real nodes: peers with their transports, last
//! contact, reputation and sync state; texts, blobs and documents crossing
//! from one node to the other as the API shows them; the store-and-forward
//! queue; the LoRa duty cycle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Http, Node, curl, wait_for};
use serde_json::Value;

/// A node's API: its base URL and token.
struct Api {
    base: String,
    auth: String,
}

impl Api {
    fn of(n: &Node) -> Api {
        Api {
            base: format!("http://{}", n.api_addr()),
            auth: format!("Authorization: Bearer {}", n.api_token()),
        }
    }

    fn get(&self, path: &str) -> Value {
        let r = self.call(&[], path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.body);
        r.json()
    }

    fn call(&self, args: &[&str], path: &str) -> Http {
        let url = format!("{}{path}", self.base);
        let mut all = vec!["-H", &self.auth];
        all.extend(args);
        all.push(&url);
        curl(&all)
    }

    fn post(&self, path: &str, body: &str) -> Http {
        self.call(&["-d", body], path)
    }
}

/// A blob stored through A's API is fetched through B's from A, a range of it too.
fn a_blob_crosses_with_ranges(api_a: &Api, api_b: &Api, dir: &std::path::Path) {
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let file = dir.join("blob.bin");
    std::fs::write(&file, &bytes).unwrap();
    let up = api_a.call(
        &["--data-binary", &format!("@{}", file.display())],
        "/api/v1/blobs?collection=files",
    );
    assert_eq!(up.status, 201, "{}", up.body);
    let blob = up.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(up.json()["size"], 200_000);
    let out = dir.join("got.bin");
    let got = api_b.call(
        &["-o", out.to_str().unwrap()],
        &format!("/api/v1/blobs/{blob}"),
    );
    assert_eq!(got.status, 200);
    assert!(std::fs::read(&out).unwrap() == bytes, "b got other bytes");
    let part = dir.join("part.bin");
    let ranged = api_b.call(
        &["-H", "Range: bytes=1000-1999", "-o", part.to_str().unwrap()],
        &format!("/api/v1/blobs/{blob}"),
    );
    assert_eq!(ranged.status, 206);
    assert!(std::fs::read(&part).unwrap() == bytes[1000..2000]);
    let listed = api_b.get("/api/v1/blobs");
    assert!(
        listed["blobs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == blob.as_str() && x["collection"] == "files"),
        "{listed}"
    );
}

#[test]
fn two_nodes_as_the_rest_api_shows_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, a_id) = Node::init(dir.path(), "a");
    let (mut b, b_id) = Node::init(dir.path(), "b");
    let b_addr = b.start(&["--listen", "127.0.0.1:0"]);
    a.start(&["--listen", "127.0.0.1:0", "--peer", &b_addr]);
    let (api_a, api_b) = (Api::of(&a), Api::of(&b));

    // Peers: B over wired, with a last contact, a reputation and a sync state.
    let peer = wait_for("b among a's peers", || {
        api_a.get("/api/v1/peers")["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == b_id.as_str())
            .cloned()
    });
    assert_eq!(peer["transports"], serde_json::json!(["wired"]));
    assert!(peer["last_seen_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let reputation = peer["reputation"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&reputation), "{reputation}");
    assert!(peer["sync"]["state"].is_string());
    let transports = api_a.get("/api/v1/transports");
    assert_eq!(transports["transports"][0]["type"], "wired");
    assert_eq!(transports["transports"][0]["peers"], 1);

    // A document written through A's API is read through B's.
    let w = api_a.call(
        &[
            "-X",
            "PUT",
            "-d",
            r#"{"fields": {"title": "hello", "n": 1}}"#,
        ],
        "/api/v1/collections/notes/docs/n1",
    );
    assert_eq!(w.status, 200, "{}", w.body);
    let doc = wait_for("the note on b", || {
        let r = api_b.call(&[], "/api/v1/collections/notes/docs/n1");
        (r.status == 200).then(|| r.json())
    });
    assert_eq!(doc["fields"]["title"], "hello");
    assert_eq!(doc["version"][0], w.json()["version"]);
    let change = wait_for("the note in b's changes", || {
        api_b.get("/api/v1/changes?since=0")["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["collection"] == "notes")
            .cloned()
    });
    assert_eq!(change["source"], a_id.as_str());
    assert_eq!(change["id"], "n1");

    // Sync: A and B end synced; a forced session starts with B.
    wait_for("a synced with b", || {
        let s = api_a.get("/api/v1/sync");
        let peers = s["peers"].as_array().unwrap().clone();
        (s["state"] == "synced"
            && peers
                .iter()
                .any(|p| p["peer_id"] == b_id.as_str() && p["last_sync_ms"].is_u64()))
        .then_some(())
    });
    let forced = api_a.post("/api/v1/sync", &format!(r#"{{"peer": "{b_id}"}}"#));
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert_eq!(forced.json()["started"], serde_json::json!([b_id]));

    // A text from A lands in B's inbox and shows delivered in A's outbox.
    let sent = api_a.post(
        "/api/v1/texts",
        &format!(r#"{{"peer": "{b_id}", "text": "hi b"}}"#),
    );
    assert_eq!(sent.status, 200, "{}", sent.body);
    let id = sent.json()["id"].as_str().unwrap().to_owned();
    wait_for("the text in b's inbox", || {
        api_b.get("/api/v1/texts/inbox")["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "hi b" && m["from"] == a_id.as_str())
            .then_some(())
    });
    wait_for("the text delivered in a's outbox", || {
        api_a.get("/api/v1/texts/outbox")["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
            .then_some(())
    });

    a_blob_crosses_with_ranges(&api_a, &api_b, dir.path());

    // With B gone, messages for it wait in A's store-and-forward buffer.
    b.terminate();
    wait_for("b gone from a's peers", || {
        api_a.get("/api/v1/peers")["peers"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    let queued = api_a.post(
        "/api/v1/texts",
        &format!(r#"{{"peer": "{b_id}", "text": "later"}}"#),
    );
    assert_eq!(queued.status, 200, "{}", queued.body);
    assert_eq!(queued.json()["outcome"], "queued");
    let q = wait_for("the text for b in a's queue", || {
        let q = api_a.get("/api/v1/queue");
        q["by_destination"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["peer_id"] == b_id.as_str() && d["messages"].as_u64() >= Some(1))
            .then_some(q)
    });
    assert!(q["messages"].as_u64().unwrap() >= 1);
    assert!(q["bytes"].as_u64().unwrap() > 0);
    assert!(q["max_messages"].as_u64().unwrap() >= q["messages"].as_u64().unwrap());
    a.terminate();
}

/// A LoRa node's `/api/v1/transports` reports the airtime its radio used in
/// the duty-cycle window, from the running transport.
#[test]
fn the_lora_duty_cycle_is_reported_from_the_radio() {
    use ecomesh_transport_lora::sim::{SimChannel, SimConfig};
    let channel = SimChannel::new(SimConfig {
        seed: 9,
        ..SimConfig::default()
    });
    let ra = channel.add_radio().unwrap();
    let rb = channel.add_radio().unwrap();
    channel.link(ra.node, rb.node, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = Node::init(dir.path(), "a");
    let (mut b, b_id) = Node::init(dir.path(), "b");
    let lora = |r: &std::path::Path| format!("lora:{}", r.display());
    for (n, r) in [(&mut a, &ra.path), (&mut b, &rb.path)] {
        n.start(&[
            "--transports",
            &lora(r),
            "--lora-preset",
            "sim",
            "--lora-secret",
            "api-test",
        ]);
    }
    let api = Api::of(&a);
    wait_for("b among a's LoRa peers", || {
        a.peers_on("lora").contains(&b_id).then_some(())
    });
    let t = wait_for("airtime used on a's radio", || {
        let t = api.get("/api/v1/transports");
        let lora = t["transports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["type"] == "lora")
            .cloned()?;
        (lora["lora"]["airtime_used_ms"].as_u64() > Some(0)).then_some(lora)
    });
    assert_eq!(t["peers"], 1);
    let l = &t["lora"];
    assert!(l["window_secs"].as_u64().unwrap() > 0, "{l}");
    assert!(l["airtime_allowed_ms"].as_u64().unwrap() > 0, "{l}");
    let used = l["duty_cycle_used"].as_f64().unwrap();
    let budget = l["duty_cycle_budget"].as_f64().unwrap();
    assert!(used > 0.0 && used <= budget, "{l}");
    a.terminate();
    b.terminate();
}
