//! The `replication_log` cargo-fuzz target's committed seeds (`fuzz/corpus/replication_log/`, genuine
//! encoder output) are exactly what the encoders make today, and they and every crash
//! the target found (`tests/fuzz_regressions/replication_log/`) pass the target's check.
//! `ECOMESH_WRITE_FUZZ_SEEDS=1 cargo test --test log_fuzz_regressions` rewrites the seeds.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

use std::path::{Path, PathBuf};

use ecomesh_replication::fuzzing::log_seeds as seeds;
use ecomesh_replication::fuzzing::logs as check;

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

#[test]
fn seeds_are_the_encoders_output_and_pass_the_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/replication_log");
    if std::env::var("ECOMESH_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds() {
            std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        }
    }
    let expected = seeds();
    for (name, bytes) in &expected {
        let path = dir.join(format!("seed-{name}"));
        let committed = std::fs::read(&path).unwrap_or_default();
        assert_eq!(
            &committed,
            bytes,
            "{} is not the encoder's output",
            path.display()
        );
        check(bytes);
    }
    let all = files(&dir);
    assert!(all.len() >= expected.len(), "{}: {all:?}", dir.display());
    for path in all {
        check(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn replay_fuzz_regressions() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions/replication_log");
    for path in files(&dir) {
        eprintln!("replaying {}", path.display());
        check(&std::fs::read(&path).unwrap());
    }
}
