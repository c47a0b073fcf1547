//! Project automation for the ecomesh workspace: `cargo xtask <command>`.
//!
//! One module per subcommand; every external command goes through [`cmd::Cmd`],
//! which echoes it before running it. A new subcommand is a module with a `HELP`
//! text and a `run` function, a line in [`HELP`] and an arm in [`dispatch`].

// A command-line tool: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod args;
mod bench;
mod ci;
mod cmd;
mod crash;
mod deny;
mod dep_freedom;
mod deps;
mod fuzz;
mod fuzz_registry;
mod hostile;
mod lan;
mod layering;
mod proptest;
mod sim;
mod workspace;

use std::process::ExitCode;

use anyhow::Result;

use crate::args::Args;
use crate::workspace::Metadata;

const HELP: &str = "\
cargo xtask <COMMAND> [ARGS...]   (project automation for ecomesh)

Commands:
  ci         every check CI runs: fmt, layering, dependency freedom, cargo-deny,
             clippy, tests, the notes example, doctests, docs, a short fuzz run;
             prints step timings
  deps       install what a fresh Debian machine lacks (cargo-deny, cargo-fuzz,
             cargo-nextest, apt packages), only what is missing
  proptest   run every `prop_*` test in release mode: --cases N (default 256)
  fuzz       build and run the cargo-fuzz targets: [--time SECONDS] [TARGET]
  bench      run the criterion benches of ecomesh-benches, forwarding ARGS
  crash      the store's kill -9 crash-recovery tests: --restarts N (default 100)
  lan-test   real `ecomesh node`s in network namespaces on a virtual LAN: mDNS
             discovery, sends, store-and-forward over a cut link, restart (root)
  sim        the deterministic network simulator: --seeds N --nodes M [--seed S]
  hostile    honest traffic during hostile-peer attacks on real nodes, as a
             ratio to the same run without them: [--writes N] [--rate R]
  deny       cargo deny --offline check against the shared RustSec snapshot
  layering   check that crates depend only downward (docs/architecture.md)

`cargo xtask <COMMAND> --help` describes each one.
On a fresh machine: `cargo xtask deps && cargo xtask ci`.";

const LAYERING_HELP: &str = "\
cargo xtask layering

Checks that every crate in crates/ is listed in the `layering` block of
docs/architecture.md and that its ecomesh-* [dependencies] and
[build-dependencies] are among those the block allows it; [dev-dependencies] may
also name transport-tests and any crate below it (and sync's any transport-*
crate, for its examples and tests). Reads
`cargo metadata --format-version 1 --no-deps`. Also part of `cargo xtask ci`.";

fn main() -> ExitCode {
    let mut argv = std::env::args().skip(1);
    let command = argv.next();
    let rest: Vec<String> = argv.collect();
    match dispatch(command.as_deref(), rest) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `help` and returns true when `args` asks for it.
fn wants_help(args: &mut Args, help: &str) -> bool {
    let asked = args.help();
    if asked {
        println!("{help}");
    }
    asked
}

fn dispatch(command: Option<&str>, rest: Vec<String>) -> Result<()> {
    let root = workspace::root();
    let mut args = Args::new(rest.clone());
    match command {
        None | Some("-h" | "--help" | "help") => {
            println!("{HELP}");
            Ok(())
        }
        Some("ci") => {
            if wants_help(&mut args, ci::HELP) {
                return Ok(());
            }
            let fuzz_seconds = args.value("fuzz-time")?.unwrap_or(ci::DEFAULT_FUZZ_SECONDS);
            let skip = args.values("skip")?;
            no_positionals(args)?;
            ci::run(&root, fuzz_seconds, &skip)
        }
        Some("deps") => {
            if wants_help(&mut args, deps::HELP) {
                return Ok(());
            }
            let dry_run = args.flag("dry-run");
            no_positionals(args)?;
            deps::run(&root, dry_run)
        }
        Some("proptest") => {
            if wants_help(&mut args, proptest::HELP) {
                return Ok(());
            }
            let cases = args.value("cases")?.unwrap_or(proptest::DEFAULT_CASES);
            no_positionals(args)?;
            proptest::run(&root, cases)
        }
        Some("fuzz") => {
            if wants_help(&mut args, fuzz::HELP) {
                return Ok(());
            }
            let seconds = args.value("time")?.unwrap_or(fuzz::DEFAULT_SECONDS);
            let libfuzzer_args = args.trailing();
            let mut positionals = args.finish()?;
            if positionals.len() > 1 {
                anyhow::bail!("at most one TARGET (got {})", positionals.join(" "));
            }
            let options = fuzz::Options {
                seconds,
                target: positionals.pop(),
                libfuzzer_args,
                scratch_corpus: None,
            };
            fuzz::run(&root, &options)
        }
        Some("bench") => {
            // Everything is criterion's, except a leading --help.
            if matches!(rest.first().map(String::as_str), Some("-h" | "--help")) {
                println!("{}", bench::HELP);
                return Ok(());
            }
            let forwarded = match rest.first().map(String::as_str) {
                Some("--") => &rest[1..],
                _ => &rest[..],
            };
            bench::run(&root, forwarded)
        }
        Some("crash") => {
            if wants_help(&mut args, crash::HELP) {
                return Ok(());
            }
            let restarts = args.value("restarts")?.unwrap_or(crash::DEFAULT_RESTARTS);
            let seed = args.value("seed")?;
            no_positionals(args)?;
            crash::run(&root, restarts, seed)
        }
        Some("lan-test") => {
            if wants_help(&mut args, lan::HELP) {
                return Ok(());
            }
            let nodes = args.value("nodes")?.unwrap_or(4);
            let keep = args.flag("keep");
            no_positionals(args)?;
            lan::run(&Metadata::load(&root)?, nodes, keep)
        }
        Some("sim") => {
            if wants_help(&mut args, sim::HELP) {
                return Ok(());
            }
            let options = sim::Options {
                seeds: args.value("seeds")?.unwrap_or(sim::DEFAULT_SEEDS),
                nodes: args.value("nodes")?.unwrap_or(3),
                steps: args.value("steps")?.unwrap_or(60),
                base: args.value("base")?.unwrap_or(0),
                seed: args.value("seed")?,
                release: args.flag("release"),
            };
            no_positionals(args)?;
            sim::run(&root, &options)
        }
        Some("hostile") => {
            if wants_help(&mut args, hostile::HELP) {
                return Ok(());
            }
            let writes = args.value("writes")?.unwrap_or(200);
            let rate = args.value("rate")?.unwrap_or(2000);
            no_positionals(args)?;
            hostile::run(&root, writes, rate)
        }
        Some("deny") => {
            if wants_help(&mut args, deny::HELP) {
                return Ok(());
            }
            let checks = args.finish()?;
            deny::run(&Metadata::load(&root)?, &checks, deny::Detail::Full)
        }
        Some("layering") => {
            if wants_help(&mut args, LAYERING_HELP) {
                return Ok(());
            }
            no_positionals(args)?;
            layering::run(&Metadata::load(&root)?)
        }
        Some(other) => anyhow::bail!("unknown command `{other}`\n\n{HELP}"),
    }
}

fn no_positionals(args: Args) -> Result<()> {
    let extra = args.finish()?;
    if !extra.is_empty() {
        anyhow::bail!("unexpected argument `{}` (see --help)", extra.join(" "));
    }
    Ok(())
}
