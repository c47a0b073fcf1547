//! Encrypted collections end to end on real `Node`s (issue 20, item 1): two
//! members talk only through a non-member relay (a line A - R - B on the shared
//! in-memory network); the relay stores and forwards the collection and its
//! key epochs, yet its sled files hold none of the plaintext; a removed member
//! keeps reading old versions and cannot read new ones; anti-entropy between a
//! member and a non-member converges on the ciphertext CIDs; k of n members'
//! shares rebuild a key on another device.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{fields, node_on, test_config, wait_until};
use ecomesh_identity::Identity;
use ecomesh_sync::{Node, StoreError};
use ecomesh_transport_tests::{Delivery, MemNetwork, Topology};

const LIMIT: Duration = Duration::from_secs(30);
const MARKER_A: &str = "PLAINTEXT-MARKER-alpha-5d1e";
const MARKER_B: &str = "PLAINTEXT-MARKER-bravo-93c7";
const MARKER_NEW: &str = "PLAINTEXT-MARKER-after-removal-0b42";

fn line_net() -> MemNetwork {
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    net.set_topology(Topology::Line);
    net
}

/// Every byte of every file under `dir`.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(all_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn text_of(node: &Node, id: &str) -> Option<String> {
    match node.collection("notes").doc(id).get().await {
        Ok(Some(doc)) => match doc.fields.get("text") {
            Some(ecomesh_sync::Value::Text(t)) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

async fn is_sealed(node: &Node, id: &str) -> bool {
    match node.collection("notes").doc(id).get().await {
        Err(e) => matches!(e.store_error(), Some(StoreError::Sealed { .. })),
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_relay_stores_and_forwards_ciphertext_and_never_plaintext() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ia, ir, ib) = (
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
    );
    let net = line_net();
    // Joined in this order, the line is A - R - B: A and B never meet.
    let a = node_on(&net, &ia, dirs[0].path(), test_config()).await;
    let r = node_on(&net, &ir, dirs[1].path(), test_config()).await;
    let b = node_on(&net, &ib, dirs[2].path(), test_config()).await;
    wait_until(LIMIT, "the line is up", || {
        let (a, r, b) = (a.clone(), r.clone(), b.clone());
        async move { a.peers().len() == 1 && r.peers().len() == 2 && b.peers().len() == 1 }
    })
    .await;

    a.create_private_collection("notes", &[*ib.public_key()])
        .await
        .unwrap();
    b.join_private_collection("notes", *ia.public_key())
        .await
        .unwrap();
    wait_until(
        LIMIT,
        "B holds the key of epoch 0 (through the relay)",
        || {
            let b = b.clone();
            async move {
                b.private_collection("notes")
                    .unwrap()
                    .is_some_and(|p| p.current_epoch == Some(0))
            }
        },
    )
    .await;

    a.collection("notes")
        .doc("n1")
        .set(
            fields(&[("text", MARKER_A)]),
            ecomesh_sync::SetOptions::REPLACE,
        )
        .await
        .unwrap();
    b.collection("notes")
        .doc("n2")
        .set(
            fields(&[("text", MARKER_B)]),
            ecomesh_sync::SetOptions::REPLACE,
        )
        .await
        .unwrap();
    wait_until(LIMIT, "both members read both notes", || {
        let (a, b) = (a.clone(), b.clone());
        async move {
            text_of(&b, "n1").await.as_deref() == Some(MARKER_A)
                && text_of(&a, "n2").await.as_deref() == Some(MARKER_B)
        }
    })
    .await;
    // The relay holds both documents, and reads them as sealed.
    wait_until(LIMIT, "the relay holds both notes", || {
        let r = r.clone();
        async move { is_sealed(&r, "n1").await && is_sealed(&r, "n2").await }
    })
    .await;
    assert!(r.private_collection("notes").unwrap().is_none());

    // Removal: a new epoch for A alone; B keeps the old notes, not the new write.
    let old = a.collection("notes").doc("n1").history().unwrap();
    let old_cid = old.last().unwrap().cid.clone();
    let epoch = a
        .remove_private_member("notes", ib.public_key())
        .await
        .unwrap();
    assert_eq!(epoch, 1);
    a.collection("notes")
        .doc("n1")
        .set(
            fields(&[("text", MARKER_NEW)]),
            ecomesh_sync::SetOptions::REPLACE,
        )
        .await
        .unwrap();
    let new_cid = a.collection("notes").doc("n1").history().unwrap();
    let new_cid = new_cid.last().unwrap().cid.clone();
    wait_until(
        LIMIT,
        "B holds the new version and no longer writes",
        || {
            let b = b.clone();
            let new_cid = new_cid.clone();
            async move {
                b.collection("notes").doc("n1").at(&new_cid).is_err()
                    && b.private_collection("notes")
                        .unwrap()
                        .is_some_and(|p| p.current_epoch.is_none() && p.latest_epoch == Some(1))
            }
        },
    )
    .await;
    assert!(is_sealed(&b, "n1").await, "B reads the new version");
    let at_old = b
        .collection("notes")
        .doc("n1")
        .at(&old_cid)
        .unwrap()
        .unwrap();
    assert_eq!(
        at_old.document.unwrap().fields.get("text"),
        Some(&ecomesh_sync::Value::Text(MARKER_A.into()))
    );
    assert_eq!(text_of(&b, "n2").await.as_deref(), Some(MARKER_B));
    let refused = b
        .collection("notes")
        .doc("n3")
        .set(fields(&[("text", "x")]), ecomesh_sync::SetOptions::REPLACE)
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused.store_error(),
            Some(StoreError::NoCollectionKey { .. })
        ),
        "{refused}"
    );
    assert_eq!(text_of(&a, "n1").await.as_deref(), Some(MARKER_NEW));
    wait_until(LIMIT, "the relay holds the new version", || {
        let r = r.clone();
        let new_cid = new_cid.clone();
        async move { r.collection("notes").doc("n1").at(&new_cid).is_err() }
    })
    .await;

    for n in [&a, &r, &b] {
        n.shutdown().await.unwrap();
    }
    let relay = all_bytes(&dirs[1].path().join("store"));
    // The grep reads the store: the relay holds the documents by name...
    assert!(contains(&relay, "notes") && contains(&relay, "n1") && contains(&relay, "n2"));
    // ...and none of their plaintext.
    for marker in [MARKER_A, MARKER_B, MARKER_NEW] {
        assert!(!contains(&relay, marker), "{marker} in the relay's store");
    }
    // The same grep finds a member's plaintext: members keep the merged
    // state in clear at rest (docs/privacy.md), so the check above can fail.
    assert!(contains(
        &all_bytes(&dirs[0].path().join("store")),
        MARKER_NEW
    ));
    // The removed member's store has no plaintext of the write after its removal.
    assert!(!contains(
        &all_bytes(&dirs[2].path().join("store")),
        MARKER_NEW
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_between_a_member_and_a_non_member_converges_on_ciphertext_cids() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (ia, ir) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    let a = node_on(&net, &ia, dirs[0].path(), test_config()).await;
    a.create_private_collection("notes", &[]).await.unwrap();
    for i in 0..20 {
        a.collection("notes")
            .doc(format!("n{i}"))
            .set(
                fields(&[("text", &format!("{MARKER_A}-{i}"))]),
                ecomesh_sync::SetOptions::REPLACE,
            )
            .await
            .unwrap();
    }
    // The non-member joins after the writes: only anti-entropy brings them.
    let r = node_on(&net, &ir, dirs[1].path(), test_config()).await;
    wait_until(LIMIT, "the relay's index equals the member's", || {
        let (a, r) = (a.clone(), r.clone());
        async move {
            let root = |n: &Node| n.collection_root("notes").unwrap();
            root(&a).is_some() && root(&a) == root(&r)
        }
    })
    .await;
    for i in 0..20 {
        let id = format!("n{i}");
        assert!(is_sealed(&r, &id).await);
        let ha = a.collection("notes").doc(&id).history().unwrap();
        let hr = r.collection("notes").doc(&id).history().unwrap();
        assert_eq!(ha, hr, "{id}: same versions by CID");
    }
    a.shutdown().await.unwrap();
    r.shutdown().await.unwrap();
    assert!(!contains(
        &all_bytes(&dirs[1].path().join("store")),
        MARKER_A
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn k_of_n_member_shares_rebuild_the_key_on_another_device() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids: Vec<Identity> = (0..4).map(|_| Identity::generate().unwrap()).collect();
    let net = MemNetwork::new(0, 0);
    net.set_delivery(Delivery::Immediate);
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        nodes.push(node_on(&net, id, dirs[i].path(), test_config()).await);
    }
    // Owner 0 with members 1 and 2 (n = 3, so k = 3, the seed's ceil(n/2 + 1)).
    let members = [*ids[1].public_key(), *ids[2].public_key()];
    nodes[0]
        .create_private_collection("notes", &members)
        .await
        .unwrap();
    for n in &nodes[1..3] {
        n.join_private_collection("notes", *ids[0].public_key())
            .await
            .unwrap();
    }
    nodes[0]
        .collection("notes")
        .doc("n1")
        .set(
            fields(&[("text", MARKER_A)]),
            ecomesh_sync::SetOptions::REPLACE,
        )
        .await
        .unwrap();
    let recoverer = &nodes[3];
    wait_until(
        LIMIT,
        "members hold the key and the device holds the note",
        || {
            let (n1, n2, r) = (nodes[1].clone(), nodes[2].clone(), recoverer.clone());
            async move {
                text_of(&n1, "n1").await.is_some()
                    && text_of(&n2, "n1").await.is_some()
                    && is_sealed(&r, "n1").await
            }
        },
    )
    .await;
    let to = ids[3].public_key();
    let shares: Vec<Vec<u8>> = nodes[..3]
        .iter()
        .map(|n| n.recovery_share("notes", 0, to).unwrap())
        .collect();
    // Fewer than k shares rebuild nothing.
    assert!(
        recoverer
            .recover_private_key("notes", &shares[..2])
            .is_err()
    );
    assert!(is_sealed(recoverer, "n1").await);
    assert_eq!(recoverer.recover_private_key("notes", &shares).unwrap(), 0);
    assert_eq!(text_of(recoverer, "n1").await.as_deref(), Some(MARKER_A));
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
