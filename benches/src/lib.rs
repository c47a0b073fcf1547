//! Criterion benches for the ecomesh crates; see `benches/`.
