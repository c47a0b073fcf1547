//! Criterion benches for the ecomesh crates (see `benches/`), and the `compare`
//! report: every performance goal as a ratio against a baseline measured in the
//! same run (`cargo xtask bench --compare`).

pub mod compare;
