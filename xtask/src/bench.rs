//! `cargo xtask bench`: the criterion benches of `ecomesh-benches`.

use std::path::Path;

use anyhow::Result;

use crate::cmd::Cmd;

pub(crate) const HELP: &str = "\
cargo xtask bench [ARGS...]

Runs `cargo bench -p ecomesh-benches --bench '*' -- ARGS...`: every criterion
bench in benches/benches/ (only the bench targets, so the library's libtest
harness never sees criterion's options), with ARGS passed to criterion (a name filter such as `hlc`,
`--save-baseline NAME`, `--baseline NAME`, `--quick`, ...).
Reports go to target/criterion/.";

/// Runs the benches, forwarding `criterion_args`.
pub(crate) fn run(root: &Path, criterion_args: &[String]) -> Result<()> {
    let mut cmd = Cmd::cargo().args(["bench", "--package", "ecomesh-benches", "--bench", "*"]);
    if !criterion_args.is_empty() {
        cmd = cmd.arg("--").args(criterion_args);
    }
    cmd.current_dir(root).run()
}
