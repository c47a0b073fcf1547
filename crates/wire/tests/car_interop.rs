//! CARv1 interoperability with the IPLD reference implementation, `@ipld/car`
//! (`interop/car.mjs`, pinned versions in `interop/package-lock.json`): it reads
//! every file of `tests/vectors/car.txt` and a larger file written here to the
//! same roots and blocks, and a file it writes reads back here block for block.
//!
//! Needs `npm ci --prefix crates/wire/interop` beforehand (`cargo xtask deps`
//! runs it; tests never download). Without `node_modules` the test is skipped
//! with a message, unless `ECOMESH_REQUIRE_INTEROP=1`, when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ecomesh_types::Value;
use ecomesh_wire::{CarLimits, CarReader, CarWriter, Cid, HashAlg};

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn js(args: &[&str]) -> Vec<serde_json::Value> {
    let o = Command::new("node")
        .arg("car.mjs")
        .args(args)
        .current_dir(interop_dir())
        .output()
        .expect("node (v20+) is installed");
    assert!(
        o.status.success(),
        "node car.mjs {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// What a file holds, as the JS side reports it: roots, then (cid, len) per block.
fn expected(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> (Vec<String>, Vec<(String, usize)>) {
    (
        roots.iter().map(ToString::to_string).collect(),
        blocks
            .iter()
            .map(|(c, d)| (c.to_string(), d.len()))
            .collect(),
    )
}

fn reported(v: &serde_json::Value) -> (Vec<String>, Vec<(String, usize)>) {
    assert_eq!(v["version"], 1);
    let roots = v["roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let blocks = v["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert_ne!(b["verified"], false, "{b}");
            (
                b["cid"].as_str().unwrap().to_owned(),
                usize::try_from(b["len"].as_u64().unwrap()).unwrap(),
            )
        })
        .collect();
    (roots, blocks)
}

fn read(path: &Path) -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
    let bytes = std::fs::read(path).unwrap();
    let mut r = CarReader::new(bytes.as_slice(), CarLimits::DEFAULT).unwrap();
    let roots = r.roots().to_vec();
    let blocks: Result<Vec<_>, _> = r
        .by_ref()
        .map(|b| {
            let b = b?;
            b.verify()?;
            Ok::<_, ecomesh_wire::WireError>((b.cid, b.data))
        })
        .collect();
    (roots, blocks.unwrap())
}

#[test]
fn ipld_car_reads_our_files_and_we_read_its() {
    let required = std::env::var("ECOMESH_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
    if !interop_dir().join("node_modules").is_dir() {
        let msg = format!(
            "interop: {} is missing; run `npm ci --prefix crates/wire/interop`",
            interop_dir().join("node_modules").display()
        );
        assert!(!required, "{msg} (ECOMESH_REQUIRE_INTEROP=1)");
        eprintln!("SKIPPED {msg}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    // The committed vectors.
    let vectors = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/car.txt"),
    )
    .unwrap();
    for block in vectors.split("\n\n") {
        let field = |k: &str| block.lines().find_map(|l| l.strip_prefix(k)).unwrap();
        let path = tmp.path().join(format!("{}.car", field("name: ")));
        std::fs::write(&path, unhex(field("hex: "))).unwrap();
        files.push(path);
    }
    // A larger file: many dag-cbor blocks, a blake3 raw block, a block > 127 bytes
    // (multi-byte varints).
    let mut blocks = Vec::new();
    for i in 0..200_i64 {
        let data = ecomesh_wire::to_dag_cbor(&Value::Text("x".repeat(usize::try_from(i).unwrap())))
            .unwrap();
        blocks.push((ecomesh_wire::cid_of_dag_cbor(&data), data));
    }
    let big = vec![0x5a; 70_000];
    blocks.push((
        ecomesh_wire::cid_for_bytes(ecomesh_wire::cid::RAW, HashAlg::Blake3, &big),
        big,
    ));
    let roots = vec![blocks[199].0, blocks[200].0];
    let mut w = CarWriter::new(Vec::new(), &roots).unwrap();
    for (c, d) in &blocks {
        w.write_block(c, d).unwrap();
    }
    let large = tmp.path().join("large.car");
    std::fs::write(&large, w.finish().unwrap()).unwrap();
    files.push(large);

    let args: Vec<&str> = std::iter::once("read")
        .chain(files.iter().map(|p| p.to_str().unwrap()))
        .collect();
    let out = js(&args);
    assert_eq!(out.len(), files.len());
    for (path, got) in files.iter().zip(&out) {
        let (roots, blocks) = read(path);
        assert_eq!(
            reported(got),
            expected(&roots, &blocks),
            "{}",
            path.display()
        );
    }

    // A file @ipld/car wrote reads here to what it says it wrote.
    let theirs = tmp.path().join("theirs.car");
    let said = js(&["write", theirs.to_str().unwrap()]);
    let (roots, blocks) = read(&theirs);
    assert_eq!(
        roots.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![said[0]["roots"][0].as_str().unwrap().to_owned()]
    );
    let cids: Vec<String> = blocks.iter().map(|b| b.0.to_string()).collect();
    assert_eq!(serde_json::json!(cids), said[0]["blocks"]);
    assert_eq!(blocks[0].1, vec![0xa1, 0x61, 0x61, 0x01]);
}
