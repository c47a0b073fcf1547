//! The `mesh_keys` fuzz target's seeds are the encoders' output, and its corpus and
//! kept crashes pass its check (see `fuzz/seed_check.rs`).

#[path = "../../../fuzz/seed_check.rs"]
mod seed_check;

#[test]
fn mesh_keys_seeds_corpus_and_regressions_pass() {
    use ecomesh_mesh::fuzzing::{keys_and_acks, seeds};
    seed_check::run(
        env!("CARGO_MANIFEST_DIR"),
        "mesh_keys",
        seeds(),
        keys_and_acks,
    );
}
