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
Reports go to target/criterion/.

cargo xtask bench --compare [--quick] [--only AREA]... [--write]

Builds and runs the `compare` report (benches/src/bin/compare.rs, release
profile, with the `anchors` feature so the CRDT libraries it compares against
are in): every performance goal as a ratio against a baseline measured in the
same run, printed as one table with the machine and the date. --write also
records the table in docs/benchmarks.md. Exits non-zero when a goal is missed.
Areas: crdt lora store links cid blob.";

/// Runs the benches, forwarding `criterion_args`; `--compare` first runs the
/// compare report instead.
pub(crate) fn run(root: &Path, criterion_args: &[String]) -> Result<()> {
    if criterion_args.first().map(String::as_str) == Some("--compare") {
        return compare(root, &criterion_args[1..]);
    }
    let mut cmd = Cmd::cargo().args(["bench", "--package", "ecomesh-benches", "--bench", "*"]);
    if !criterion_args.is_empty() {
        cmd = cmd.arg("--").args(criterion_args);
    }
    cmd.current_dir(root).run()
}

/// Runs the compare report, forwarding `args` (`--write` names docs/benchmarks.md).
fn compare(root: &Path, args: &[String]) -> Result<()> {
    let mut forwarded = Vec::new();
    for arg in args {
        if arg == "--write" {
            forwarded.push("--write".to_owned());
            forwarded.push(root.join("docs/benchmarks.md").display().to_string());
        } else {
            forwarded.push(arg.clone());
        }
    }
    Cmd::cargo()
        .args([
            "run",
            "--release",
            "--package",
            "ecomesh-benches",
            "--features",
            "anchors",
            "--bin",
            "compare",
            "--",
        ])
        .args(forwarded)
        .current_dir(root)
        .run()
}
