//! Project automation (placeholder while the real xtask is written).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("xtask: not written yet")
}
