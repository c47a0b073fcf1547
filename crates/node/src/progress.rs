//! Progress of long CLI operations (export, import, blob put and get): an
//! indicatif bar on stderr when stdout is a terminal, otherwise one plain line
//! on stderr at most every 5 seconds and one at the end, so logs stay readable.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

/// Interval between plain progress lines when stdout is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A progress display of one operation, counted in bytes or in items.
#[derive(Debug)]
pub struct Progress {
    label: String,
    bytes: bool,
    total: Option<u64>,
    bar: Option<ProgressBar>,
    plain: Mutex<(u64, Instant)>,
}

impl Progress {
    /// Progress of `label` over `total` bytes (`None`: unknown).
    pub fn bytes(label: &str, total: Option<u64>) -> Progress {
        Self::new(label, total, true, std::io::stdout().is_terminal())
    }

    /// Progress of `label` over `total` items (`None`: unknown).
    pub fn items(label: &str, total: Option<u64>) -> Progress {
        Self::new(label, total, false, std::io::stdout().is_terminal())
    }

    fn new(label: &str, total: Option<u64>, bytes: bool, terminal: bool) -> Progress {
        let bar = terminal.then(|| {
            let (bar, template) = match total {
                Some(t) if bytes => (
                    ProgressBar::new(t),
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ),
                Some(t) => (
                    ProgressBar::new(t),
                    "{msg} [{bar:30}] {pos}/{len} eta {eta}",
                ),
                None if bytes => (
                    ProgressBar::no_length(),
                    "{spinner} {msg} {bytes} {bytes_per_sec}",
                ),
                None => (ProgressBar::no_length(), "{spinner} {msg} {pos}"),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            if total.is_none() {
                // No position updates to redraw on: keep the spinner moving.
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            bar
        });
        Progress {
            label: label.to_owned(),
            bytes,
            total,
            bar,
            plain: Mutex::new((0, Instant::now())),
        }
    }

    /// Sets the position (bytes or items done so far).
    pub fn set(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let mut plain = self.plain.lock().unwrap_or_else(|e| e.into_inner());
        plain.0 = done;
        if plain.1.elapsed() >= PLAIN_EVERY {
            plain.1 = Instant::now();
            line(&format!("{}: {}", self.label, self.amount(done)));
        }
    }

    /// Adds `n` to the position.
    pub fn inc(&self, n: u64) {
        let done = match &self.bar {
            Some(bar) => bar.position() + n,
            None => self.plain.lock().unwrap_or_else(|e| e.into_inner()).0 + n,
        };
        self.set(done);
    }

    /// Ends the display with `message` (the bar is cleared; plain output prints it).
    pub fn finish(&self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        } else if !message.is_empty() {
            line(&format!("{}: {message}", self.label));
        }
    }

    fn amount(&self, done: u64) -> String {
        let show = |n: u64| {
            if self.bytes {
                HumanBytes(n).to_string()
            } else {
                n.to_string()
            }
        };
        match self.total {
            Some(t) => format!("{} of {}", show(done), show(t)),
            None => show(done),
        }
    }
}

fn line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_progress_counts_and_names_sizes() {
        let p = Progress::new("blob get", Some(3 << 20), true, false);
        p.inc(1 << 20);
        p.inc(1 << 20);
        assert_eq!(p.amount(2 << 20), "2.00 MiB of 3.00 MiB");
        assert_eq!(p.plain.lock().unwrap().0, 2 << 20);
        let items = Progress::new("import", None, false, false);
        items.set(7);
        assert_eq!(items.amount(7), "7");
    }
}
