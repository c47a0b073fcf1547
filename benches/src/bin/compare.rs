//! `compare`: measures every performance goal of the project as a ratio against
//! a baseline from the same run and prints one table (`cargo xtask bench --compare`).
//!
//! Usage: `compare [--quick] [--only AREA]... [--write FILE]`. `--write` replaces
//! the text between the report markers of FILE (`docs/benchmarks.md`) with the
//! table, the machine and the date. Exits 1 when a row misses its target, so a
//! regression is visible, and 2 on bad arguments.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use ecomesh_benches::compare::{self, AREAS, Options};

/// The global allocator: mimalloc, as in the node binary (`ecomesh`), so the
/// store rows measure what ships. The store's write path (sled's
/// copy-on-write pages and the version, state and Merkle encoders) is
/// allocation-heavy; with glibc's malloc a single-document write took about
/// twice the CPU time (issue 16, docs/benchmarks.md "Store writes").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BEGIN: &str = "<!-- compare:begin -->";
const END: &str = "<!-- compare:end -->";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,ecomesh_benches=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut options = Options { quick: false };
    let mut only = Vec::new();
    let mut write = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--only" => match args.next() {
                Some(a) if AREAS.iter().any(|(n, _)| *n == a) => only.push(a),
                other => return usage(&format!("--only takes an area, got {other:?}")),
            },
            "--write" => match args.next() {
                Some(f) => write = Some(f),
                None => return usage("--write takes a file"),
            },
            // `cargo bench` passes `--bench` to every bench target; harmless here.
            "--bench" => {}
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    let rows = compare::run(&options, &only);
    let date = today();
    let report = format!(
        "Measured {date} on {}{}.\n\n{}",
        compare::machine(),
        if options.quick {
            " (--quick: a smoke run)"
        } else {
            ""
        },
        compare::table(&rows)
    );
    println!("{report}");
    if let Some(file) = write
        && let Err(e) = write_report(&file, &report)
    {
        eprintln!("compare: {file}: {e}");
        return ExitCode::from(2);
    }
    let missed = rows.iter().filter(|r| !r.met()).count();
    if missed > 0 {
        eprintln!("compare: {missed} of {} rows miss their target", rows.len());
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn usage(why: &str) -> ExitCode {
    let areas: Vec<&str> = AREAS.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "compare: {why}\nusage: compare [--quick] [--only AREA]... [--write FILE]\nareas: {}",
        areas.join(" ")
    );
    ExitCode::from(2)
}

fn write_report(file: &str, report: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let (Some(b), Some(e)) = (text.find(BEGIN), text.find(END)) else {
        return Err(std::io::Error::other(format!(
            "no {BEGIN} ... {END} markers"
        )));
    };
    if e < b {
        return Err(std::io::Error::other("markers out of order"));
    }
    let new = format!("{}{BEGIN}\n{report}\n{}", &text[..b], &text[e..]);
    std::fs::write(file, new)
}

/// Today's date (UTC) as `YYYY-MM-DD`, from the system clock.
fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
