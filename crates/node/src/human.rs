//! Times and sizes for people: `3 min ago`, `2026-12-07 10:15 UTC`,
//! `1.2 MiB`, `2 h 5 min`. The CLI's text output uses these; `--json` keeps
//! Unix milliseconds and byte counts.

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, in Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `bytes` with a binary unit and one decimal: `512 B`, `1.2 MiB`, `3.0 GiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A Unix-millisecond time as a UTC date and minute: `2026-12-07 10:15 UTC`.
pub fn date(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem / 60) % 60
    )
}

/// How long before `now_ms` the time `ms` was: `just now`, `40 s ago`,
/// `3 min ago`, `5 h ago`, `2 days ago`; `in 3 min` for a time ahead of now.
pub fn ago(ms: u64, now_ms: u64) -> String {
    if ms > now_ms {
        return format!("in {}", span((ms - now_ms) / 1000));
    }
    let secs = (now_ms - ms) / 1000;
    if secs < 2 {
        "just now".to_owned()
    } else {
        format!("{} ago", span(secs))
    }
}

/// A time for people: `2026-12-07 10:15 UTC (3 min ago)`; older than a week,
/// the date alone.
pub fn time(ms: u64, now_ms: u64) -> String {
    const WEEK_MS: u64 = 7 * 86_400_000;
    if now_ms.saturating_sub(ms) > WEEK_MS {
        date(ms)
    } else {
        format!("{} ({})", date(ms), ago(ms, now_ms))
    }
}

/// A span of seconds in its largest unit: `40 s`, `3 min`, `5 h`, `2 days`.
pub fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h", secs / 3600),
        86_400..172_800 => "1 day".to_owned(),
        _ => format!("{} days", secs / 86_400),
    }
}

/// An uptime with two units: `45 s`, `3 min 20 s`, `2 h 5 min`, `3 days 4 h`.
pub fn uptime(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, (secs / 60) % 60),
        _ => format!("{} days {} h", secs / 86_400, (secs / 3600) % 24),
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_use_binary_units_with_one_decimal() {
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(1_258_291), "1.2 MiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn dates_are_utc_minutes_and_spans_name_their_unit() {
        assert_eq!(date(0), "1970-01-01 00:00 UTC");
        // 2026-12-07 10:15:30 UTC
        let t = 1_796_638_530_000;
        assert_eq!(date(t), "2026-12-07 10:15 UTC");
        assert_eq!(date(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(ago(t, t), "just now");
        assert_eq!(ago(t - 40_000, t), "40 s ago");
        assert_eq!(ago(t - 180_000, t), "3 min ago");
        assert_eq!(ago(t - 5 * 3_600_000, t), "5 h ago");
        assert_eq!(ago(t - 2 * 86_400_000, t), "2 days ago");
        assert_eq!(ago(t + 120_000, t), "in 2 min");
        assert_eq!(time(t - 180_000, t), "2026-12-07 10:12 UTC (3 min ago)");
        assert_eq!(time(0, t), "1970-01-01 00:00 UTC");
        assert_eq!(uptime(200), "3 min 20 s");
        assert_eq!(uptime(7_500), "2 h 5 min");
    }
}
