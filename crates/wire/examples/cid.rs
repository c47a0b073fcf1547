//! Prints the CID and the DAG-CBOR bytes of DAG-JSON documents.
//!
//! `cargo run -p ecomesh-wire --example cid -- FILE` reads one DAG-JSON
//! document per line of FILE and prints, per line, `CID<TAB>hex of DAG-CBOR`.
//! Blank lines are skipped. A line that is not valid DAG-JSON (or cannot be
//! encoded) is reported on stderr with its line number, and the exit status is
//! then 1; a missing or unreadable FILE gives status 2.

use std::io::{BufRead, BufReader, Write};
use std::process::ExitCode;

use ecomesh_wire::{HashAlg, encode_block, from_dag_json};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        let _ = writeln!(std::io::stderr(), "usage: cid FILE");
        return ExitCode::from(2);
    };
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err = std::io::stderr();
    let mut failed = false;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = writeln!(err, "{path}:{n}: cannot read line: {e}");
                failed = true;
                continue;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match from_dag_json(&line).and_then(|v| encode_block(&v, HashAlg::Sha2_256)) {
            Ok((bytes, cid)) => {
                let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                if writeln!(out, "{cid}\t{hex}").is_err() {
                    return ExitCode::from(2);
                }
            }
            Err(e) => {
                let _ = writeln!(err, "{path}:{n}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
