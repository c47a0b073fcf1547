//! Sneakernet through the CLI: two `ecomesh node` processes that never
//! connect converge through CARv1 files alone (`ecomesh export`/`import`);
//! a tampered block and a forged signature are refused with their reasons and
//! nothing of them merges; a second import adds nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Node, ecomesh, ok_json};
use ecomesh_node::control::{self, Request, Response};
use ecomesh_wire::{CarLimits, CarReader, CarWriter, Cid};
use serde_json::{Value, json};

type Blocks = (Vec<Cid>, Vec<(Cid, Vec<u8>)>);

fn read_car(path: &Path) -> Blocks {
    let bytes = std::fs::read(path).unwrap();
    let mut r = CarReader::new(bytes.as_slice(), CarLimits::DEFAULT).unwrap();
    let roots = r.roots().to_vec();
    let blocks: Result<Vec<_>, _> = r.by_ref().map(|b| b.map(|b| (b.cid, b.data))).collect();
    (roots, blocks.unwrap())
}

fn write_car(path: &Path, roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) {
    let mut w = CarWriter::new(Vec::new(), roots).unwrap();
    for (c, d) in blocks {
        w.write_block(c, d).unwrap();
    }
    std::fs::write(path, w.finish().unwrap()).unwrap();
}

fn put(n: &Node, id: &str, fields: &Value) {
    ok_json(&n.data, &["doc", "put", "notes", id, &fields.to_string()]);
}

fn import(n: &Node, file: &Path) -> Value {
    ok_json(&n.data, &["import", file.to_str().unwrap()])
}

fn head(n: &Node) -> u64 {
    n.status()["stream_head"].as_u64().unwrap()
}

#[test]
fn two_nodes_that_never_meet_converge_through_car_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, a_id) = Node::init(dir.path(), "a");
    let (mut b, b_id) = Node::init(dir.path(), "b");
    a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0"]);
    let apart = |a: &Node, b: &Node| {
        assert!(!a.peers().contains(&b_id), "a met b");
        assert!(!b.peers().contains(&a_id), "b met a");
    };
    apart(&a, &b);

    // A writes documents and a blob, and exports them.
    put(&a, "n1", &json!({"title": "first"}));
    put(&a, "n2", &json!({"title": "second", "qty": 2}));
    put(&a, "n1", &json!({"title": "first, edited"}));
    let blob_file = dir.path().join("photo.bin");
    let blob_bytes: Vec<u8> = (0..20_000_u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&blob_file, &blob_bytes).unwrap();
    let blob = ok_json(&a.data, &["blob", "put", blob_file.to_str().unwrap()]);
    let blob_id = blob["id"].as_str().unwrap().to_owned();
    let a_car = dir.path().join("a.car");
    let exported = ok_json(
        &a.data,
        &["export", "--blobs", "-o", a_car.to_str().unwrap()],
    );
    assert_eq!(exported["versions"], 3);
    assert_eq!(exported["blobs"], 1);
    assert_eq!(
        exported["bytes"].as_u64().unwrap(),
        std::fs::metadata(&a_car).unwrap().len()
    );
    assert_eq!(exported["next"].as_u64().unwrap(), head(&a));

    // B imports them and reads the same documents and blob.
    let r = import(&b, &a_car);
    assert_eq!(r["versions_new"], 3, "{r}");
    assert_eq!(r["versions_known"], 0);
    assert_eq!(r["blobs_new"], 1);
    assert_eq!(r["refused_total"], 0, "{r}");
    for id in ["n1", "n2"] {
        assert_eq!(b.local_fields("notes", id), a.local_fields("notes", id));
    }
    assert_eq!(
        b.local_fields("notes", "n1").unwrap()["title"],
        "first, edited"
    );
    let got = dir.path().join("got.bin");
    ok_json(
        &b.data,
        &["blob", "get", &blob_id, "-o", got.to_str().unwrap()],
    );
    assert_eq!(std::fs::read(&got).unwrap(), blob_bytes);

    // A second import adds nothing; over the control socket, progress lines
    // come before the report.
    let mut progress = Vec::new();
    let again = control::call_stream(
        &b.data.join("control.sock"),
        &Request::Import {
            path: a_car.to_str().unwrap().into(),
        },
        |item| {
            progress.push(item);
            Ok(())
        },
    )
    .unwrap();
    let Response::Imported(again) = again else {
        panic!("not an import report: {again:?}")
    };
    assert_eq!(again.versions_new, 0);
    assert_eq!(again.versions_known, 3);
    assert_eq!((again.blobs_new, again.blobs_known), (0, 1));
    assert_eq!(again.pieces_new, 0);
    assert!(!progress.is_empty());
    for p in &progress {
        let Response::Progress { stage, done, total } = p else {
            panic!("not a progress line: {p:?}")
        };
        assert_eq!(stage, "bytes");
        assert!(*done <= total.unwrap());
    }

    // A new write of A, exported since A's position, then damaged two ways.
    let mark = head(&a);
    put(&a, "t1", &json!({"title": "must not leak"}));
    let t_car = dir.path().join("t.car");
    let t = ok_json(
        &a.data,
        &[
            "export",
            "--since",
            &mark.to_string(),
            "-o",
            t_car.to_str().unwrap(),
        ],
    );
    assert_eq!(t["versions"], 1);
    let (roots, blocks) = read_car(&t_car);
    let (cid, data) = blocks[0].clone();

    // A tampered block: one byte of its data flipped, the CID kept.
    let mut tampered = data.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let tampered_car = dir.path().join("tampered.car");
    write_car(&tampered_car, &roots, &[(cid, tampered)]);
    let head_b = head(&b);
    let r = import(&b, &tampered_car);
    assert_eq!(r["versions_new"], 0);
    assert_eq!(r["refused_total"], 1, "{r}");
    assert_eq!(r["refused"][0]["cid"], cid.to_string());
    assert_eq!(r["refused"][0]["kind"], "cid_mismatch");

    // A forged signature: a byte of the signature flipped, the CID recomputed
    // so the block itself verifies.
    let at = data
        .windows(6)
        .position(|w| w == b"\x63sig\x58\x40")
        .expect("the version has a signature field")
        + 6;
    let mut forged = data.clone();
    forged[at] ^= 0xff;
    let forged_cid = ecomesh_wire::cid_of_dag_cbor(&forged);
    let forged_car = dir.path().join("forged.car");
    write_car(&forged_car, &[forged_cid], &[(forged_cid, forged)]);
    let text = ecomesh(&b.data, &["import", forged_car.to_str().unwrap()]);
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("refused 1 blocks"), "{text}");
    assert!(text.contains(&forged_cid.to_string()), "{text}");
    assert!(text.contains("invalid_version"), "{text}");
    assert!(text.contains("signature does not verify"), "{text}");
    assert_eq!(
        b.local_fields("notes", "t1"),
        None,
        "nothing of them merged"
    );
    assert_eq!(head(&b), head_b);

    // The genuine file still merges.
    assert_eq!(import(&b, &t_car)["versions_new"], 1);

    // B edits and exports since its own position; A imports; both converge.
    let mark_b = head(&b);
    put(&b, "n2", &json!({"title": "second, from b"}));
    let b_car = dir.path().join("b.car");
    let back = ecomesh(
        &b.data,
        &[
            "export",
            "--since",
            &mark_b.to_string(),
            "-o",
            b_car.to_str().unwrap(),
        ],
    );
    assert!(back.status.success());
    let back = String::from_utf8(back.stdout).unwrap();
    assert!(back.contains("exported 1 versions"), "{back}");
    let r = import(&a, &b_car);
    assert_eq!(r["versions_new"], 1, "{r}");
    assert_eq!(
        a.local_fields("notes", "n2").unwrap()["title"],
        "second, from b"
    );
    let (sa, sb) = (a.status(), b.status());
    assert_eq!(sa["root_cid"], sb["root_cid"]);
    assert_eq!(sa["replicated_root"], sb["replicated_root"]);
    apart(&a, &b);
    a.terminate();
    b.terminate();
}

#[test]
fn a_bad_file_or_a_relative_path_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, _) = Node::init(dir.path(), "a");
    a.start(&["--listen", "127.0.0.1:0"]);
    let junk = dir.path().join("junk.car");
    std::fs::write(&junk, b"\x05hello").unwrap();
    let o = ecomesh(&a.data, &["import", junk.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a valid CARv1 file"), "{err}");
    let o = ecomesh(
        &a.data,
        &["import", dir.path().join("none.car").to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("opening"));
    // The node refuses relative paths (the CLI makes them absolute).
    let r = control::call_stream(
        &a.data.join("control.sock"),
        &Request::Import {
            path: "relative.car".into(),
        },
        |_| Ok(()),
    );
    assert!(r.unwrap_err().to_string().contains("absolute"));
    a.terminate();
}
