//! Sneakernet between nodes that share no network: `Node::export` writes a
//! CARv1 file, `Node::import` verifies and merges it (idempotent, refusals
//! reported per block), and the two nodes converge through files alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ecomesh_identity::Identity;
use ecomesh_p2p_storage::VersionNode;
use ecomesh_sync::{ExportOptions, Node, RefuseReason, SetOptions, SyncError, Value};
use ecomesh_wire::{CarLimits, CarReader, CarWriter, Cid};

use common::{fields, test_config};

/// A started node without any transport: it can only exchange files.
async fn offline(dir: &std::path::Path) -> Node {
    Node::builder(dir)
        .identity(Identity::generate().unwrap())
        .config(test_config())
        .start()
        .await
        .unwrap()
}

async fn put(n: &Node, coll: &str, id: &str, pairs: &[(&str, &str)]) {
    n.collection(coll)
        .doc(id)
        .set(fields(pairs), SetOptions::default())
        .await
        .unwrap();
}

fn export(n: &Node, since: u64, blobs: bool) -> Vec<u8> {
    let mut out = Vec::new();
    n.export(since, ExportOptions { blobs }, &mut out).unwrap();
    out
}

fn blocks(file: &[u8]) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
    let mut r = CarReader::new(file, CarLimits::DEFAULT).unwrap();
    let roots = r.roots().to_vec();
    let b = r
        .by_ref()
        .map(|b| b.map(|b| (b.cid, b.data)))
        .collect::<Result<_, _>>();
    (roots, b.unwrap())
}

fn write(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
    let mut w = CarWriter::new(Vec::new(), roots).unwrap();
    for (c, d) in blocks {
        w.write_block(c, d).unwrap();
    }
    w.finish().unwrap()
}

fn replicated_root(n: &Node) -> ecomesh_sync::ContentId {
    n.status().unwrap().replicated_root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_offline_nodes_converge_through_files() {
    let tmp = tempfile::tempdir().unwrap();
    let a = offline(&tmp.path().join("a")).await;
    let b = offline(&tmp.path().join("b")).await;
    put(&a, "notes", "n1", &[("title", "one")]).await;
    put(&a, "notes", "n1", &[("title", "one, edited")]).await;
    put(&a, "notes", "n2", &[("title", "two")]).await;
    a.collection("notes").doc("n2").delete().await.unwrap();
    put(&a, "_local", "secret", &[("k", "v")]).await;
    let blob = a.put_blob("photos", &[7_u8; 5000]).unwrap();

    let mut seen = Vec::new();
    let mut file = Vec::new();
    let summary = a
        .export_with_progress(0, ExportOptions { blobs: true }, &mut file, |p| {
            seen.push(p)
        })
        .unwrap();
    assert_eq!(summary.versions, 4, "the local collection stays home");
    assert_eq!(summary.blobs, 1);
    assert!(summary.pieces >= 1);
    assert_eq!(summary.bytes, file.len() as u64);
    assert_eq!(summary.next, a.status().unwrap().stream_head);
    assert_eq!(
        seen.len() as u64,
        summary.versions + summary.blobs + summary.pieces
    );
    assert!(seen.windows(2).all(|w| w[0].blocks < w[1].blocks));
    // Roots: the heads of n1 and n2, then the blob's block.
    let (roots, _) = blocks(&file);
    assert_eq!(roots.len(), 3);
    assert_eq!(summary.roots, 3);
    let heads: Vec<_> = ["n1", "n2"]
        .iter()
        .flat_map(|id| a.collection("notes").doc(*id).version().unwrap())
        .map(|c| ecomesh_wire::from_content_id(&c).unwrap())
        .collect();
    assert_eq!(&roots[..2], &heads[..]);

    let report = b.import(file.as_slice()).unwrap();
    assert_eq!(report.versions_new, 4, "{report:?}");
    assert_eq!(report.versions_known, 0);
    assert_eq!(report.blobs_new, 1);
    assert_eq!(report.pieces_new, summary.pieces);
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    assert_eq!(report.bytes, file.len() as u64);
    let n1 = b
        .collection("notes")
        .doc("n1")
        .get()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n1.fields.get("title"), Some(&Value::from("one, edited")));
    assert!(
        b.collection("notes")
            .doc("n2")
            .get()
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        b.collection("_local")
            .doc("secret")
            .get()
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(replicated_root(&a), replicated_root(&b));
    assert_eq!(b.get_blob(blob.id).await.unwrap(), vec![7_u8; 5000]);

    // Idempotent: a second import adds nothing.
    let again = b.import(file.as_slice()).unwrap();
    assert_eq!((again.versions_new, again.versions_known), (0, 4));
    assert_eq!((again.blobs_new, again.blobs_known), (0, 1));
    assert_eq!(again.pieces_new, 0);

    // B edits; its export since its own position carries only the edit.
    let mark = b.status().unwrap().stream_head;
    put(&b, "notes", "n3", &[("title", "from b")]).await;
    let back = export(&b, mark, false);
    let (_, back_blocks) = blocks(&back);
    assert_eq!(back_blocks.len(), 1);
    let r = a.import(back.as_slice()).unwrap();
    assert_eq!(r.versions_new, 1);
    assert_eq!(replicated_root(&a), replicated_root(&b));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_forged_blocks_are_refused_and_nothing_of_them_merges() {
    let tmp = tempfile::tempdir().unwrap();
    let a = offline(&tmp.path().join("a")).await;
    let b = offline(&tmp.path().join("b")).await;
    put(&a, "notes", "t", &[("title", "tampered")]).await;
    let (roots, mut bl) = blocks(&export(&a, 0, false));

    // One flipped byte in the data: the CID no longer matches.
    let last = bl[0].1.len() - 1;
    bl[0].1[last] ^= 1;
    let report = b.import(write(&roots, &bl).as_slice()).unwrap();
    assert_eq!(report.refused_total, 1);
    assert_eq!(report.refused[0].cid, ecomesh_wire::to_content_id(&bl[0].0));
    assert!(matches!(
        report.refused[0].reason,
        RefuseReason::CidMismatch(_)
    ));
    assert_eq!(report.refused[0].reason.kind(), "cid_mismatch");
    assert_eq!(report.versions_new, 0);

    // A forged signature under a CID that matches the forged bytes.
    bl[0].1[last] ^= 1;
    let mut v: VersionNode = ecomesh_wire::decode(&bl[0].1).unwrap();
    v.signature[0] ^= 0xff;
    let forged = ecomesh_wire::encode(&v).unwrap();
    let cid = ecomesh_wire::cid_of_dag_cbor(&forged);
    let report = b
        .import(write(&[cid], &[(cid, forged)]).as_slice())
        .unwrap();
    assert_eq!(report.refused_total, 1);
    assert_eq!(report.refused[0].reason.kind(), "invalid_version");
    assert!(
        report.refused[0].reason.to_string().contains("signature"),
        "{}",
        report.refused[0].reason
    );
    assert!(
        b.collection("notes")
            .doc("t")
            .get()
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(b.status().unwrap().stream_head, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parents_later_in_the_file_wait_and_missing_ones_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let a = offline(&tmp.path().join("a")).await;
    let b = offline(&tmp.path().join("b")).await;
    let c = offline(&tmp.path().join("c")).await;
    for i in 0..5 {
        put(&a, "notes", "chain", &[("n", &i.to_string())]).await;
    }
    let (roots, mut bl) = blocks(&export(&a, 0, false));
    bl.reverse();
    let report = b.import(write(&roots, &bl).as_slice()).unwrap();
    assert_eq!(report.versions_new, 5, "{report:?}");
    assert_eq!(replicated_root(&a), replicated_root(&b));

    // Only the last two versions: their ancestors are neither in the file nor in c.
    let tail = export(&a, 3, false);
    let report = c.import(tail.as_slice()).unwrap();
    assert_eq!(report.versions_new, 0);
    assert_eq!(report.refused_total, 2);
    assert!(
        report
            .refused
            .iter()
            .all(|r| matches!(r.reason, RefuseReason::MissingParents(_)))
    );
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_file_is_a_typed_error() {
    let tmp = tempfile::tempdir().unwrap();
    let a = offline(&tmp.path().join("a")).await;
    let b = offline(&tmp.path().join("b")).await;
    put(&a, "notes", "x", &[("k", "v")]).await;
    put(&a, "notes", "y", &[("k", "v")]).await;
    let file = export(&a, 0, false);
    let (_, bl) = blocks(&file);
    // Cut inside the second block: the first merges, then the damage is reported.
    let cut = file.len() - bl[1].1.len() / 2;
    let err = b.import(&file[..cut]).unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::InvalidCar(ecomesh_wire::WireError::Truncated { .. })
        ),
        "{err:?}"
    );
    assert!(
        b.collection("notes")
            .doc("x")
            .get()
            .await
            .unwrap()
            .is_some()
    );
    assert!(matches!(
        b.import(&b"not a car"[..]).unwrap_err(),
        SyncError::InvalidCar(_)
    ));
    assert!(matches!(
        b.import(&[][..]).unwrap_err(),
        SyncError::InvalidCar(_)
    ));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    assert!(matches!(b.import(file.as_slice()), Err(SyncError::Stopped)));
    let mut out = Vec::new();
    assert!(matches!(
        a.export(0, ExportOptions::default(), &mut out),
        Err(SyncError::Stopped)
    ));
}

/// Export and import speed (run on demand):
/// `ECOMESH_CAR_DOCS=10000 cargo test --release -p ecomesh-sync --test sneakernet -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it explicitly"]
#[allow(clippy::print_stderr, clippy::cast_precision_loss)]
async fn export_import_speed() {
    let docs: usize = std::env::var("ECOMESH_CAR_DOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let a = offline(&tmp.path().join("a")).await;
    let b = offline(&tmp.path().join("b")).await;
    let ids: Vec<usize> = (0..docs).collect();
    for chunk in ids.chunks(500) {
        let ops = chunk
            .iter()
            .map(|i| ecomesh_sync::BatchOperation::Set {
                collection: "items".into(),
                id: format!("item-{i:06}"),
                fields: fields(&[("name", &format!("item {i}")), ("kind", "small")]),
                merge: false,
            })
            .collect();
        a.batch(ops).await.unwrap();
    }
    let path = tmp.path().join("items.car");
    let start = std::time::Instant::now();
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let summary = a.export(0, ExportOptions::default(), file).unwrap();
    let export = start.elapsed();
    let start = std::time::Instant::now();
    let input = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let report = b.import(input).unwrap();
    let import = start.elapsed();
    let start = std::time::Instant::now();
    let again = b
        .import(std::io::BufReader::new(std::fs::File::open(&path).unwrap()))
        .unwrap();
    let reimport = start.elapsed();
    assert_eq!(summary.versions, docs as u64);
    assert_eq!(report.versions_new, docs as u64);
    assert_eq!(again.versions_known, docs as u64);
    assert_eq!(replicated_root(&a), replicated_root(&b));
    let rate = |d: std::time::Duration| docs as f64 / d.as_secs_f64();
    eprintln!(
        "{docs} documents, {} bytes: export {export:?} ({:.0}/s), import {import:?} ({:.0}/s), \
         re-import (all known) {reimport:?} ({:.0}/s)",
        summary.bytes,
        rate(export),
        rate(import),
        rate(reimport)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_versions_travel_on_to_connected_peers() {
    let tmp = tempfile::tempdir().unwrap();
    let a = offline(&tmp.path().join("a")).await;
    let (b, c) = common::pair(&tmp.path().join("b"), &tmp.path().join("c")).await;
    put(&a, "notes", "far", &[("title", "carried by hand")]).await;
    let report = b.import(export(&a, 0, false).as_slice()).unwrap();
    assert_eq!(report.versions_new, 1);
    // C never saw the file: B pushes the version on (`list` reads only
    // what C holds; it never fetches).
    common::wait_until(
        std::time::Duration::from_secs(20),
        "the imported document reaches c",
        || {
            let c = c.clone();
            async move { !c.collection("notes").list().unwrap().is_empty() }
        },
    )
    .await;
    assert_eq!(replicated_root(&a), replicated_root(&c));
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}
