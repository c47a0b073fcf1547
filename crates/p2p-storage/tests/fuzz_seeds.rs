//! The `p2p_messages` and `store_records` fuzz targets' seeds are the encoders'
//! output, and their corpora and kept crashes pass their checks (see
//! `fuzz/seed_check.rs`).

#[path = "../../../fuzz/seed_check.rs"]
mod seed_check;

use ecomesh_p2p_storage::fuzzing;

#[test]
fn p2p_messages_seeds_corpus_and_regressions_pass() {
    let seeds = fuzzing::p2p_message_seeds();
    seed_check::run(
        env!("CARGO_MANIFEST_DIR"),
        "p2p_messages",
        seeds,
        fuzzing::p2p_messages,
    );
}

#[test]
fn store_records_seeds_corpus_and_regressions_pass() {
    let seeds = fuzzing::store_record_seeds();
    seed_check::run(
        env!("CARGO_MANIFEST_DIR"),
        "store_records",
        seeds,
        fuzzing::store_records,
    );
}
