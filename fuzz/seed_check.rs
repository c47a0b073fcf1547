//! Shared by the crates' `tests/fuzz_seeds.rs` (included with `#[path]`): a fuzz
//! target's committed seeds (`fuzz/corpus/<target>/seed-<name>`) are exactly what
//! the encoders make today, and they, every other committed corpus input and every
//! crash kept in the crate's `tests/fuzz_regressions/<target>/` pass the target's
//! check. With `ECOMESH_WRITE_FUZZ_SEEDS=1` the seeds are (re)written first.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::fmt::Display;
use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|f| f != ".gitkeep" && f != "README.md")
        })
        .collect();
    out.sort();
    out
}

/// Checks `target`'s seeds against `seeds` and replays its corpus and the crate's
/// regressions (under `manifest_dir`) through `check`; returns how many inputs ran.
pub(crate) fn run<N: Display>(
    manifest_dir: &str,
    target: &str,
    seeds: Vec<(N, Vec<u8>)>,
    check: fn(&[u8]),
) -> usize {
    let corpus = Path::new(manifest_dir)
        .join("../../fuzz/corpus")
        .join(target);
    if std::env::var("ECOMESH_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&corpus).unwrap();
        for (name, bytes) in &seeds {
            std::fs::write(corpus.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    assert!(!seeds.is_empty(), "{target}: no seeds");
    for (name, bytes) in &seeds {
        let path = corpus.join(format!("seed-{name}"));
        let committed = std::fs::read(&path).unwrap_or_default();
        assert_eq!(
            &committed,
            bytes,
            "{} is not the encoder's output",
            path.display()
        );
    }
    let regressions = Path::new(manifest_dir)
        .join("tests/fuzz_regressions")
        .join(target);
    let inputs: Vec<PathBuf> = files(&corpus)
        .into_iter()
        .chain(files(&regressions))
        .collect();
    for path in &inputs {
        eprintln!("{target}: {}", path.display());
        check(&std::fs::read(path).unwrap());
    }
    assert!(inputs.len() >= seeds.len(), "{target}: {inputs:?}");
    inputs.len()
}
