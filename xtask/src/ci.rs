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
  lan-test     `cargo xtask lan-test`: 4 `ecomesh node`s in network namespaces (root)
  sim          `cargo xtask sim`: 1000 seeds of the network simulator at 3 nodes
  doctest      cargo test --doc --workspace --all-features (nextest skips doctests)
  doc          cargo doc --workspace --no-deps --all-features, RUSTDOCFLAGS=\"-D warnings\"
  fuzz         every cargo-fuzz target for SECONDS (default 10) via `cargo xtask fuzz`,
               seeded from fuzz/corpus/<target> but writing new inputs under the
               target dir (the tree stays clean); skipped with a note while fuzz/
               has no targets
Then prints the time each step took.

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
    let mut results: Vec<(&str, Outcome, Duration)> = Vec::new();
    let mut failure = None;
    let metadata = Metadata::load(root)?;
    let nextest = has_cargo_subcommand("nextest");

    for &step in STEPS {
        if skip.iter().any(|s| s == step) {
            println!("\n==> {step}: skipped (--skip)");
            results.push((step, Outcome::Skipped, Duration::ZERO));
            continue;
        }
        println!("\n==> {step}");
        let t = Instant::now();
        let result = run_step(step, &metadata, nextest, fuzz_seconds);
        let elapsed = t.elapsed();
        match result {
            Ok(Done::Ran) => results.push((step, Outcome::Passed, elapsed)),
            Ok(Done::Skipped(note)) => {
                println!("{step}: skipped: {note}");
                results.push((step, Outcome::Skipped, elapsed));
            }
            Err(e) => {
                results.push((step, Outcome::Failed, elapsed));
                failure = Some((step, e));
                break;
            }
        }
    }

    println!("\n==> summary");
    for &step in STEPS {
        match results.iter().find(|(s, _, _)| *s == step) {
            Some((_, outcome, elapsed)) => {
                let word = match outcome {
                    Outcome::Passed => "ok",
                    Outcome::Failed => "FAILED",
                    Outcome::Skipped => "skipped",
                };
                println!("  {step:<12} {word:<8} {:>7.1} s", elapsed.as_secs_f64());
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
                .filter(|(_, outcome, _)| *outcome == Outcome::Skipped)
                .map(|(step, _, _)| *step)
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
        // deps` installs, not skip it.
        "test" if nextest => cargo()
            .args(["nextest", "run", "--workspace", "--all-features"])
            .env("ECOMESH_REQUIRE_INTEROP", "1")
            .run()?,
        "test" => cargo()
            .args(["test", "--workspace", "--all-features"])
            .env("ECOMESH_REQUIRE_INTEROP", "1")
            .run()?,
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
