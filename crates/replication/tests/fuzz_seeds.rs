//! The `antientropy_frame` and `replication_log` fuzz targets' seeds are the
//! encoders' output, and their corpora and kept crashes pass their checks (see
//! `fuzz/seed_check.rs`).

#[path = "../../../fuzz/seed_check.rs"]
mod seed_check;

#[test]
fn antientropy_frame_seeds_corpus_and_regressions_pass() {
    use ecomesh_replication::antientropy::fuzzing::{frame, seeds};
    seed_check::run(
        env!("CARGO_MANIFEST_DIR"),
        "antientropy_frame",
        seeds(),
        frame,
    );
}

#[test]
fn replication_log_seeds_corpus_and_regressions_pass() {
    use ecomesh_replication::fuzzing::{log_seeds, logs};
    seed_check::run(
        env!("CARGO_MANIFEST_DIR"),
        "replication_log",
        log_seeds(),
        logs,
    );
}
