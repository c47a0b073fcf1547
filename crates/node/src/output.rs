//! Lines of the CLI's answers on stdout.

use std::io::Write;

/// Prints `text` and a newline on stdout. When the reader has gone away
/// (`ecomesh status | head -3`), the process ends quietly with success, as
/// command-line tools do, instead of panicking; other write errors end it
/// with a message and failure.
pub fn line(text: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{text}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "error: writing to stdout: {e}");
        std::process::exit(1);
    }
}
