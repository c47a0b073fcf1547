//! `cargo xtask ci`: every check the project must pass, failing at the first problem.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::cmd::{Cmd, has_cargo_subcommand};
use crate::workspace::Metadata;
use crate::{deny, dep_freedom, fuzz, layering};

pub(crate) const HELP: &str = "\
cargo xtask ci [--fuzz-time SECONDS] [--skip STEP]...

Runs every check, in this order, stopping at the first failure and naming it:
  fmt          cargo fmt --all --check
  layering     each crate in crates/ depends only on what docs/architecture.md allows
  dep-freedom  ecomesh-types has no normal dependency; ecomesh-crdt only ecomesh-types
  deny         cargo deny --offline check (advisories against ../shared/advisory-db,
               bans, licenses, sources) without inclusion graphs; see
               `cargo xtask deny --help`
  clippy       cargo clippy --workspace --all-targets --all-features -- -D warnings
  test         cargo nextest run --workspace --all-features (cargo test --workspace
               --all-features without cargo-nextest)
  example      cargo run -p ecomesh-sync --example notes: two embedded nodes on
               loopback (wired transport) sync a note; fails after 30 s; then
               --example ledger: two devices link by code, record earnings and
               spendings and must converge on one balance; fails after 30 s
  lan-test     `cargo xtask lan-test`: 4 `ecomesh node`s in network namespaces (root)
  sim          `cargo xtask sim`: 1000 seeds of the network simulator at 3 nodes
  doctest      cargo test --doc --workspace --all-features (nextest skips doctests)
  doc          cargo doc --workspace --no-deps --all-features, RUSTDOCFLAGS=\"-D warnings\"
  fuzz         fails on a decoder in crates/*/src without a target (fuzz/decoders.txt),
               then every cargo-fuzz target for SECONDS (default 10) via `cargo xtask fuzz`,
               seeded from fuzz/corpus/<target> but writing new inputs under the
               target dir (the tree stays clean); skipped with a note while fuzz/
               has no targets
Then prints the time each step took and the disk space left after it (a full disk
fails builds with errors that look like anything else, so a step that fails with
under 2 GiB left says so).

--skip STEP leaves a step out (for local iteration; CI runs everything).
Run `cargo xtask deps` first on a fresh machine.";

/// Every step name, in run order.
pub(crate) const STEPS: &[&str] = &[
    "fmt",
    "layering",
    "dep-freedom",
    "deny",
    "clippy",
    "test",
    "example",
    "lan-test",
    "sim",
    "doctest",
    "doc",
    "fuzz",
];

/// The default `--fuzz-time`.
pub(crate) const DEFAULT_FUZZ_SECONDS: u64 = 10;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Passed,
    Failed,
    /// Not applicable (with a note printed) or left out by `--skip`.
    Skipped,
}

/// What a step did: pass, or skip with a note saying why.
enum Done {
    Ran,
    Skipped(String),
}

/// Runs the steps and prints a timing summary, also when a step failed.
pub(crate) fn run(root: &Path, fuzz_seconds: u64, skip: &[String]) -> Result<()> {
    for s in skip {
        if !STEPS.contains(&s.as_str()) {
            bail!("unknown step `{s}` for --skip; steps: {}", STEPS.join(", "));
        }
    }
    let started = Instant::now();
    let mut results: Vec<(&str, Outcome, Duration, Option<u64>)> = Vec::new();
    let mut failure = None;
    let metadata = Metadata::load(root)?;
    let target_dir = metadata.target_dir.clone();
    let nextest = has_cargo_subcommand("nextest");

    for &step in STEPS {
        if skip.iter().any(|s| s == step) {
            println!("\n==> {step}: skipped (--skip)");
            results.push((step, Outcome::Skipped, Duration::ZERO, None));
            continue;
        }
        match disk_free(&target_dir) {
            Some(free) => println!("\n==> {step} ({} free)", human(free)),
            None => println!("\n==> {step}"),
        }
        let t = Instant::now();
        let result = run_step(step, &metadata, nextest, fuzz_seconds);
        let elapsed = t.elapsed();
        let free = disk_free(&target_dir);
        match result {
            Ok(Done::Ran) => results.push((step, Outcome::Passed, elapsed, free)),
            Ok(Done::Skipped(note)) => {
                println!("{step}: skipped: {note}");
                results.push((step, Outcome::Skipped, elapsed, free));
            }
            Err(e) => {
                results.push((step, Outcome::Failed, elapsed, free));
                let e = match free {
                    Some(free) if free < LOW_DISK => e.context(format!(
                        "only {} left on the disk of {}: the disk filling up may be what failed",
                        human(free),
                        target_dir.display()
                    )),
                    _ => e,
                };
                failure = Some((step, e));
                break;
            }
        }
    }

    println!("\n==> summary (time; disk space left after the step)");
    for &step in STEPS {
        match results.iter().find(|(s, _, _, _)| *s == step) {
            Some((_, outcome, elapsed, free)) => {
                let word = match outcome {
                    Outcome::Passed => "ok",
                    Outcome::Failed => "FAILED",
                    Outcome::Skipped => "skipped",
                };
                let free = free.map(human).unwrap_or_default();
                println!(
                    "  {step:<12} {word:<8} {:>7.1} s  {free:>10}",
                    elapsed.as_secs_f64()
                );
            }
            None => println!("  {step:<12} not run"),
        }
    }
    println!(
        "  {:<12} {:<8} {:>7.1} s",
        "total",
        "",
        started.elapsed().as_secs_f64()
    );

    match failure {
        Some((step, e)) => Err(e.context(format!("cargo xtask ci: step `{step}` failed"))),
        None => {
            let skipped: Vec<&str> = results
                .iter()
                .filter(|(_, outcome, _, _)| *outcome == Outcome::Skipped)
                .map(|(step, _, _, _)| *step)
                .collect();
            if skipped.is_empty() {
                println!("cargo xtask ci: all steps passed");
            } else {
                println!("cargo xtask ci: passed; skipped: {}", skipped.join(", "));
            }
            Ok(())
        }
    }
}

/// Below this many bytes free, a failed step's error mentions the disk.
const LOW_DISK: u64 = 2 << 30;

/// Bytes available to us on the file system holding `path` (or its nearest existing
/// ancestor), from POSIX `df -Pk`; `None` when that cannot be told.
fn disk_free(path: &Path) -> Option<u64> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let out = Cmd::new("df")
        .arg("-Pk")
        .arg(existing)
        .read_quietly()
        .ok()?;
    parse_df_available(&out)
}

/// The "Available" column (KiB) of `df -P` output, in bytes.
fn parse_df_available(out: &str) -> Option<u64> {
    let line = out.lines().nth(1)?;
    let kib: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` as GiB (or MiB below one GiB), one decimal.
fn human(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let b = bytes as f64;
    if b >= GIB {
        format!("{:.1} GiB", b / GIB)
    } else {
        format!("{:.0} MiB", b / MIB)
    }
}

fn run_step(step: &str, metadata: &Metadata, nextest: bool, fuzz_seconds: u64) -> Result<Done> {
    let root = metadata.root.as_path();
    let cargo = || Cmd::cargo().current_dir(root);
    match step {
        "fmt" => cargo().args(["fmt", "--all", "--check"]).run()?,
        "layering" => layering::run(metadata)?,
        "dep-freedom" => dep_freedom::run(metadata)?,
        "deny" => deny::run(metadata, &[], deny::Detail::Brief)?,
        "clippy" => cargo()
            .args(["clippy", "--workspace", "--all-targets", "--all-features"])
            .args(["--", "-D", "warnings"])
            .run()?,
        // CI must run the interop test against the js-libp2p peer `cargo xtask
        // deps` installs, and the network-namespace tests (the relay test, the
        // node's fault injection; CI runs as root with iproute2), not skip them.
        "test" if nextest => cargo()
            .args(["nextest", "run", "--workspace", "--all-features"])
            .env("ECOMESH_REQUIRE_INTEROP", "1")
            .env("ECOMESH_REQUIRE_NETNS", "1")
            .run()?,
        "test" => cargo()
            .args(["test", "--workspace", "--all-features"])
            .env("ECOMESH_REQUIRE_INTEROP", "1")
            .env("ECOMESH_REQUIRE_NETNS", "1")
            .run()?,
        "example" => {
            cargo()
                .args(["run", "-p", "ecomesh-sync", "--example", "notes"])
                .run()?;
            cargo()
                .args(["run", "-p", "ecomesh-sync", "--example", "ledger"])
                .run()?;
        }
        "lan-test" => crate::lan::run(metadata, 4, false)?,
        "sim" => crate::sim::run(
            root,
            &crate::sim::Options {
                seeds: crate::sim::DEFAULT_SEEDS,
                nodes: 3,
                steps: 60,
                base: 0,
                seed: None,
                release: false,
            },
        )?,
        "doctest" if !nextest => {
            return Ok(Done::Skipped(
                "cargo test already ran the doctests (no cargo-nextest)".to_owned(),
            ));
        }
        "doctest" => cargo()
            .args(["test", "--doc", "--workspace", "--all-features"])
            .run()?,
        "doc" => cargo()
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings")
            .run()?,
        "fuzz" => {
            if fuzz::targets_on_disk(root).is_empty() {
                return Ok(Done::Skipped(
                    "fuzz/fuzz_targets/ has no targets yet".to_owned(),
                ));
            }
            fuzz::run(
                root,
                &fuzz::Options {
                    seconds: fuzz_seconds,
                    target: None,
                    libfuzzer_args: Vec::new(),
                    scratch_corpus: Some(metadata.target_dir.join("fuzz-ci-corpus")),
                },
            )?;
        }
        other => bail!("internal error: no step called `{other}`"),
    }
    Ok(Done::Ran)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_is_in_the_help_in_run_order() {
        let mut at = 0;
        for step in STEPS {
            let needle = format!("\n  {step} ");
            let found = HELP[at..]
                .find(&needle)
                .unwrap_or_else(|| panic!("step `{step}` missing from HELP or out of order"));
            at += found + needle.len();
        }
        assert!(STEPS.contains(&"example"));
    }

    #[test]
    fn df_available_column_is_read_in_bytes() {
        let out = "Filesystem     1024-blocks     Used Available Capacity Mounted on\n\
                   /dev/vda         263174148 93303480  2621440      98% /\n";
        assert_eq!(parse_df_available(out), Some(2_621_440 * 1024));
        assert_eq!(parse_df_available("Filesystem\n"), None);
        assert_eq!(parse_df_available("h\n/dev/x 1 2 lots 3% /\n"), None);
    }

    #[test]
    fn sizes_read_as_gib_or_mib() {
        assert_eq!(human(5 << 30), "5.0 GiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(287 << 20), "287 MiB");
    }

    #[test]
    fn free_space_of_an_existing_directory_is_known() {
        let free = disk_free(Path::new("/definitely/not/here/../tmp"));
        assert!(free.is_some_and(|b| b > 0), "{free:?}");
    }
}
