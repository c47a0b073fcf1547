//! Small file helpers: atomic writes and moving unreadable state aside.

use std::path::Path;

use crate::clock::now_ms;

/// Writes `bytes` to `path` atomically: a temporary file beside it, fsync,
/// rename, directory fsync. A crash leaves either the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Moves an unreadable state file aside (nothing is deleted) so the node can start.
pub(crate) fn quarantine(path: &Path, why: &dyn std::fmt::Display) {
    let aside = path.with_extension(format!("corrupt-{}", now_ms()));
    tracing::error!(file = %path.display(), moved_to = %aside.display(), error = %why,
        "state file unreadable; moved aside, starting without it");
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::error!(error = %e, "could not move the unreadable file aside");
    }
}
