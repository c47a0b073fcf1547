//! `cargo xtask crash`: the store's kill -9 crash tests with a chosen number of restarts.

use std::path::Path;

use anyhow::Result;

use crate::cmd::{Cmd, has_cargo_subcommand};

pub(crate) const HELP: &str = "\
cargo xtask crash [--restarts N] [--seed S]

Runs the crash-recovery tests of ecomesh-p2p-storage (tests/crash.rs) in
release mode: for each scenario (single writes, batches, deletes) a child
process writes continuously and is killed with SIGKILL at a random point, N
times (default 100); after every kill the store must reopen with every
invariant intact and every acknowledged write present. The seed of each
scenario is printed; --seed S replays one (ECOMESH_CRASH_SEED). `cargo xtask
ci` runs the same tests with 10 restarts as part of the test suite.";

/// The default `--restarts`.
pub(crate) const DEFAULT_RESTARTS: u32 = 100;

/// Runs the crash tests with `restarts` kills per scenario.
pub(crate) fn run(root: &Path, restarts: u32, seed: Option<u64>) -> Result<()> {
    let mut cmd = if has_cargo_subcommand("nextest") {
        Cmd::cargo().args([
            "nextest",
            "run",
            "--release",
            "-p",
            "ecomesh-p2p-storage",
            "--test",
            "crash",
            "--no-capture",
        ])
    } else {
        Cmd::cargo().args([
            "test",
            "--release",
            "-p",
            "ecomesh-p2p-storage",
            "--test",
            "crash",
            "--",
            "--nocapture",
        ])
    };
    cmd = cmd.env("ECOMESH_CRASH_RESTARTS", restarts.to_string());
    if let Some(seed) = seed {
        cmd = cmd.env("ECOMESH_CRASH_SEED", seed.to_string());
    }
    cmd.current_dir(root).run()
}
