//! The `links` rows of the compare report.

use super::{Options, Row};

/// The rows of this area (none measured yet).
pub fn rows(_options: &Options) -> Vec<Row> {
    Vec::new()
}
