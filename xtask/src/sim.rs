//! `cargo xtask sim`: the deterministic network simulator of ecomesh-p2p-storage.

use std::path::Path;

use anyhow::Result;

use crate::cmd::{Cmd, has_cargo_subcommand};

pub(crate) const HELP: &str = "\
cargo xtask sim [--seeds N] [--nodes M] [--steps K] [--base B] [--seed S] [--release]

Runs the deterministic network simulator (crates/p2p-storage/tests/sim.rs)
(in the test profile, whose dependencies are optimized already, so CI reuses
the test build; --release for long runs): for each seed, M nodes (default 3) of the real store, mesh
manager and P2P adapter run K random steps (default 60) of writes, partitions,
heals, crashes and restarts over links with latency, loss, duplication and
reordering, on a virtual clock; then the network heals and every node must
reach the same replicated root CID, hold every acknowledged write, and no
node may hold another's local (`_private`) writes. Seeds B..B+N (default
0..1000); --seed S runs one seed verbosely. A failing seed prints the command
that reproduces it. `cargo xtask ci` runs 1000 seeds at 3 nodes.";

/// Default `--seeds`.
pub(crate) const DEFAULT_SEEDS: u64 = 1000;

/// What to simulate.
pub(crate) struct Options {
    pub(crate) seeds: u64,
    pub(crate) nodes: u64,
    pub(crate) steps: u64,
    pub(crate) base: u64,
    pub(crate) seed: Option<u64>,
    pub(crate) release: bool,
}

/// Runs the simulator test with `options`.
pub(crate) fn run(root: &Path, o: &Options) -> Result<()> {
    let profile: &[&str] = if o.release { &["--release"] } else { &[] };
    let mut cmd = if has_cargo_subcommand("nextest") {
        Cmd::cargo().args(["nextest", "run"]).args(profile).args([
            "-p",
            "ecomesh-p2p-storage",
            "--test",
            "sim",
            "--no-capture",
        ])
    } else {
        Cmd::cargo().args(["test"]).args(profile).args([
            "-p",
            "ecomesh-p2p-storage",
            "--test",
            "sim",
            "--",
            "--nocapture",
        ])
    };
    cmd = cmd
        .env("ECOMESH_SIM_SEEDS", o.seeds.to_string())
        .env("ECOMESH_SIM_NODES", o.nodes.to_string())
        .env("ECOMESH_SIM_STEPS", o.steps.to_string())
        .env("ECOMESH_SIM_BASE", o.base.to_string());
    if let Some(s) = o.seed {
        cmd = cmd.env("ECOMESH_SIM_SEED", s.to_string());
    }
    cmd.current_dir(root).run()
}
