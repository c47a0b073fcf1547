//! `cargo xtask proptest`: every property test (`prop_*`) in release mode with a
//! chosen number of cases.

use std::path::Path;

use anyhow::Result;

use crate::cmd::{Cmd, has_cargo_subcommand};

pub(crate) const HELP: &str = "\
cargo xtask proptest [--cases N]

Runs every test whose name contains `prop_`, across the workspace, in release
mode with PROPTEST_CASES=N (default 256). Property tests use proptest's default
config, so N is their case count. With cargo-nextest installed this is
`cargo nextest run --workspace --all-features --release -E 'test(prop_)'`,
otherwise `cargo test --workspace --all-features --release -- prop_`.
Fails when no test matches.";

/// The default `--cases`.
pub(crate) const DEFAULT_CASES: u32 = 256;

/// Runs the property tests with `cases` cases each.
pub(crate) fn run(root: &Path, cases: u32) -> Result<()> {
    let cmd = if has_cargo_subcommand("nextest") {
        // nextest fails when the filter selects no test.
        Cmd::cargo().args([
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--release",
            "-E",
            "test(prop_)",
        ])
    } else {
        Cmd::cargo().args([
            "test",
            "--workspace",
            "--all-features",
            "--release",
            "--",
            "prop_",
        ])
    };
    cmd.env("PROPTEST_CASES", cases.to_string())
        .current_dir(root)
        .run()
}
