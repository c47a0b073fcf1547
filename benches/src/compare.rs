//! The performance goals as ratios measured in one run.
//!
//! Each area (one module below) measures its subject beside a baseline in the
//! same process, so the ratio holds on a noisy two-core machine where absolute
//! times do not. [`run`] collects the rows of the areas asked for;
//! `src/bin/compare.rs` prints them as one table and can write
//! `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::{Duration, Instant};

pub mod blob;
pub mod cid;
pub mod crdt;
pub mod links;
pub mod lora;
pub mod store;

/// What a run measures and how long it may take.
#[derive(Clone, Debug)]
pub struct Options {
    /// Shorter timings and smaller inputs where an area allows it (a smoke run,
    /// not a figure to record).
    pub quick: bool,
}

/// Which way a ratio must go to meet its goal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The ratio must be at most this.
    AtMost(f64),
    /// The ratio must be at least this.
    AtLeast(f64),
    /// Reported for context; no goal.
    Info,
}

impl Target {
    /// Whether `ratio` meets the target (always true for [`Target::Info`]).
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Target::AtMost(t) => ratio <= t,
            Target::AtLeast(t) => ratio >= t,
            Target::Info => true,
        }
    }

    fn describe(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {t}"),
            Target::AtLeast(t) => format!(">= {t}"),
            Target::Info => "-".into(),
        }
    }
}

/// One measured ratio: `value / baseline`, both in `unit`.
#[derive(Clone, Debug)]
pub struct Row {
    /// The issue goal this row checks (`"1 B3.1"`, `"3 store"`, ...).
    pub goal: String,
    /// What was measured.
    pub what: String,
    /// The subject's figure.
    pub value: f64,
    /// The baseline's figure, measured in the same run.
    pub baseline: f64,
    /// What the baseline is.
    pub baseline_what: String,
    /// The unit of `value` and `baseline` (`"B"`, `"µs"`, `"MiB/s"`, ...).
    pub unit: &'static str,
    /// What the ratio `value / baseline` must be.
    pub target: Target,
}

impl Row {
    /// `value / baseline` (infinite when the baseline is zero).
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            f64::INFINITY
        } else {
            self.value / self.baseline
        }
    }

    /// Whether the row meets its target.
    pub fn met(&self) -> bool {
        self.target.met(self.ratio())
    }
}

/// Measures one area's rows.
pub type Area = fn(&Options) -> Vec<Row>;

/// The areas in report order, by name.
pub const AREAS: [(&str, Area); 6] = [
    ("crdt", crdt::rows),
    ("lora", lora::rows),
    ("store", store::rows),
    ("links", links::rows),
    ("cid", cid::rows),
    ("blob", blob::rows),
];

/// Runs the areas whose names are in `only` (all when empty), in report order.
pub fn run(options: &Options, only: &[String]) -> Vec<Row> {
    AREAS
        .iter()
        .filter(|(name, _)| only.is_empty() || only.iter().any(|o| o == name))
        .flat_map(|(name, rows)| {
            tracing::info!(area = name, "measuring");
            rows(options)
        })
        .collect()
}

/// The machine the figures come from: CPU model, cores and kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {kernel}")
}

/// The rows as one Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| goal | measured | value | baseline (same run) | ratio | target | met |\n\
         |---|---|---:|---|---:|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {}: {} {} | {:.3} | {} | {} |",
            r.goal,
            r.what,
            fmt_num(r.value),
            r.unit,
            r.baseline_what,
            fmt_num(r.baseline),
            r.unit,
            r.ratio(),
            r.target.describe(),
            match (r.target, r.met()) {
                (Target::Info, _) => "-",
                (_, true) => "yes",
                (_, false) => "**no**",
            },
        );
    }
    out
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 1000.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Seconds per call of `f`: the best of `rounds` rounds, each calling `f` for
/// about `budget / rounds`. The best round is the one least disturbed by other
/// work on the machine, which is what a ratio between two such figures wants.
pub fn seconds_per_call(budget: Duration, rounds: u32, mut f: impl FnMut()) -> f64 {
    let rounds = rounds.max(1);
    let per_round = budget / rounds;
    // Warm up and size the batch so one batch takes about a millisecond.
    let start = Instant::now();
    f();
    let once = start.elapsed().max(Duration::from_nanos(20));
    let batch = (Duration::from_millis(1).as_nanos() / once.as_nanos()).clamp(1, 1_000_000) as u32;
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let round_start = Instant::now();
        let mut calls = 0u64;
        while round_start.elapsed() < per_round || calls == 0 {
            for _ in 0..batch {
                f();
            }
            calls += u64::from(batch);
        }
        best = best.min(round_start.elapsed().as_secs_f64() / calls as f64);
    }
    black_box(best)
}
