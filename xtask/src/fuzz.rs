//! `cargo xtask fuzz`: build and run the cargo-fuzz targets of `fuzz/` on the
//! pinned stable toolchain.
//!
//! cargo-fuzz passes `-Z` flags (sanitizers, coverage instrumentation) that a
//! stable rustc accepts only with `RUSTC_BOOTSTRAP=1`; every cargo-fuzz command
//! here runs with it. Corpora live in `fuzz/corpus/<target>` (cargo-fuzz's
//! default) and crashes in `fuzz/artifacts/<target>/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, has_cargo_subcommand};

pub(crate) const HELP: &str = "\
cargo xtask fuzz [--time SECONDS] [TARGET] [-- LIBFUZZER_ARGS...]

Builds the cargo-fuzz project in fuzz/ and runs TARGET (every target when omitted,
as `cargo fuzz list` names them) for SECONDS each (default 60) with
`cargo fuzz run <target> -- -max_total_time=SECONDS`, on the pinned stable
toolchain with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags). Each target's corpus
is fuzz/corpus/<target> and grows as the fuzzer finds new inputs.

First checks that every decoder in crates/*/src (a function named decode,
decode_*, from_bytes, from_bytes_* or from_slice taking &[u8] or &str, outside
test code) is listed in fuzz/decoders.txt beside an existing target, and fails
naming each one that is not.

A crash (or a libFuzzer error) fails the command after the remaining targets ran;
the report names the artifact under fuzz/artifacts/<target>/ and the command that
replays it. Arguments after `--` go to libFuzzer.

Needs cargo-fuzz (`cargo xtask deps` installs it) and a C++ compiler.";

/// What to fuzz and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Seconds per target (`-max_total_time`).
    pub(crate) seconds: u64,
    /// One target, or all when `None`.
    pub(crate) target: Option<String>,
    /// Extra libFuzzer arguments.
    pub(crate) libfuzzer_args: Vec<String>,
    /// Where new inputs go. `None`: into `fuzz/corpus/<target>` (cargo-fuzz's
    /// default; the corpus grows). `Some(dir)`: into a fresh `dir/<target>`, with
    /// `fuzz/corpus/<target>` only read as seeds, so the working tree is left
    /// untouched (what `ci` does).
    pub(crate) scratch_corpus: Option<PathBuf>,
}

/// The default `--time`.
pub(crate) const DEFAULT_SECONDS: u64 = 60;

fn fuzz_cmd() -> Cmd {
    Cmd::cargo().arg("fuzz").env("RUSTC_BOOTSTRAP", "1")
}

/// The target sources in `fuzz/fuzz_targets/` (file stems), sorted; empty when the
/// folder does not exist.
pub(crate) fn targets_on_disk(root: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(root.join("fuzz").join("fuzz_targets")) else {
        return Vec::new();
    };
    let mut targets: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| p.file_stem().and_then(|s| s.to_str()).map(str::to_owned))
        .collect();
    targets.sort();
    targets
}

/// The files in `fuzz/artifacts/<target>/` (crash, leak, timeout and oom inputs)
/// written at or after `since`. libFuzzer names an artifact by the hash of its
/// input, so a crash found again rewrites an existing file: the time tells.
fn artifacts_since(root: &Path, target: &str, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("fuzz").join("artifacts").join(target)) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    found
}

/// Builds and runs the selected targets; fails if any of them crashed.
pub(crate) fn run(root: &Path, options: &Options) -> Result<()> {
    if !root.join("fuzz").join("Cargo.toml").is_file() {
        bail!(
            "there is no cargo-fuzz project at {}/fuzz yet",
            root.display()
        );
    }
    // Every decoder of crates/*/src has a target (fuzz/decoders.txt), before any run.
    crate::fuzz_registry::check(root)?;
    if !has_cargo_subcommand("fuzz") {
        bail!(
            "cargo-fuzz is not installed; run `cargo xtask deps` (or `cargo install --locked cargo-fuzz`)"
        );
    }
    let listed = fuzz_cmd().arg("list").current_dir(root).read()?;
    let all: Vec<String> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    let targets = match &options.target {
        Some(target) if all.contains(target) => vec![target.clone()],
        Some(target) => bail!(
            "no fuzz target `{target}`; the targets are: {}",
            if all.is_empty() {
                "(none)".to_owned()
            } else {
                all.join(", ")
            }
        ),
        None if all.is_empty() => bail!("fuzz/ has no targets (`cargo fuzz list` printed none)"),
        None => all,
    };

    // One build for all targets (cargo builds them in parallel); the runs below
    // then find everything up to date.
    let mut build = fuzz_cmd().arg("build");
    if let Some(target) = &options.target {
        build = build.arg(target);
    }
    build.current_dir(root).run()?;

    let mut failures = Vec::new();
    for target in &targets {
        // File times have coarse granularity on some filesystems: allow a second.
        let started = SystemTime::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut run = fuzz_cmd().args(["run", target.as_str()]);
        if let Some(scratch) = &options.scratch_corpus {
            let fresh = scratch.join(target);
            if fresh.exists() {
                std::fs::remove_dir_all(&fresh)
                    .with_context(|| format!("could not clear {}", fresh.display()))?;
            }
            std::fs::create_dir_all(&fresh)
                .with_context(|| format!("could not create {}", fresh.display()))?;
            // libFuzzer writes new inputs to the first corpus directory only.
            run = run.arg(&fresh);
            let seeds = root.join("fuzz").join("corpus").join(target);
            if seeds.is_dir() {
                run = run.arg(seeds);
            }
        }
        let status = run
            .arg("--")
            .arg(format!("-max_total_time={}", options.seconds))
            .args(&options.libfuzzer_args)
            .current_dir(root)
            .status()?;
        if status.success() {
            println!("fuzz: {target}: no crash in {} s", options.seconds);
            continue;
        }
        let new = artifacts_since(root, target, started);
        let mut report = format!("{target}: {status}");
        if new.is_empty() {
            report.push_str(" (no new artifact; see the libFuzzer output above)");
        }
        for artifact in &new {
            let shown = artifact.strip_prefix(root).unwrap_or(artifact);
            report.push_str(&format!(
                "\n      artifact: {}\n      replay:   RUSTC_BOOTSTRAP=1 cargo fuzz run {target} {}",
                shown.display(),
                shown.display()
            ));
        }
        failures.push(report);
    }
    if !failures.is_empty() {
        bail!("fuzzing failed:\n  - {}", failures.join("\n  - "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_on_disk_lists_rust_sources_sorted() {
        let root = std::env::temp_dir().join(format!("xtask-fuzz-{}", std::process::id()));
        let dir = root.join("fuzz").join("fuzz_targets");
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["decode_value.rs", "cid_parse.rs", "README.md"] {
            std::fs::write(dir.join(file), "").unwrap();
        }
        assert_eq!(targets_on_disk(&root), vec!["cid_parse", "decode_value"]);
        std::fs::remove_dir_all(&root).unwrap();
        assert!(targets_on_disk(&root).is_empty());
    }

    #[test]
    fn artifacts_since_picks_files_written_after_the_start() {
        let root = std::env::temp_dir().join(format!("xtask-fuzz-art-{}", std::process::id()));
        let dir = root.join("fuzz").join("artifacts").join("t");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("crash-1"), "x").unwrap();
        let future = SystemTime::now() + Duration::from_secs(3600);
        assert!(artifacts_since(&root, "t", future).is_empty());
        let past = SystemTime::now() - Duration::from_secs(3600);
        assert_eq!(artifacts_since(&root, "t", past), vec![dir.join("crash-1")]);
        assert!(artifacts_since(&root, "other", past).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
