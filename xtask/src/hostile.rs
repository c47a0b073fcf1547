//! `cargo xtask hostile`: the hostile-peer figure of issue 20 (honest
//! messages per second during each attack, as a ratio to the same run
//! without it), measured on real `ecomesh node` processes.

use std::path::Path;

use anyhow::Result;

use crate::cmd::{Cmd, has_cargo_subcommand};

pub(crate) const HELP: &str = "\
cargo xtask hostile [--writes N] [--rate R]

Runs the ignored test `hostile_figure` of crates/node/tests/hostile.rs: a
victim node and an honest node on loopback, an attacker in the test process
speaking the wired transport's real protocol. For each attack (invalid
signatures, wrong CIDs, garbage and oversized frames, replays, a Sybil
announce storm) the honest node writes N documents (default 200) that must
all reach the victim, during the attack and in rounds without attack before
and after it; the table printed gives honest writes per second during the
attack, without it (the mean of the rounds around it), their ratio (goal:
at least 0.8) and the victim's memory. R is the attacker's rate, hostile
sends per second per attacker thread (default 2000). Nothing is asserted
about speed: the machine's load moves the figures.";

/// Runs the figure test with `writes` honest writes per round and the
/// attacker at `rate` sends per second per thread.
pub(crate) fn run(root: &Path, writes: u32, rate: u32) -> Result<()> {
    let cmd = if has_cargo_subcommand("nextest") {
        Cmd::cargo().args([
            "nextest",
            "run",
            "-p",
            "ecomesh-node",
            "--test",
            "hostile",
            "--run-ignored",
            "only",
            "--no-capture",
            "hostile_figure",
        ])
    } else {
        Cmd::cargo().args([
            "test",
            "-p",
            "ecomesh-node",
            "--test",
            "hostile",
            "--",
            "--ignored",
            "--nocapture",
            "hostile_figure",
        ])
    };
    cmd.env("ECOMESH_HOSTILE_WRITES", writes.to_string())
        .env("ECOMESH_HOSTILE_RATE", rate.to_string())
        .current_dir(root)
        .run()
}
