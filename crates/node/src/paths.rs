//! Where a node keeps its files.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The files of one node under its data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

/// Longest Unix socket path the kernel accepts (`sun_path` minus the NUL).
const MAX_SOCKET_PATH: usize = 107;

impl DataDir {
    /// The data directory: `explicit` (from `--data`), else `$ECOMESH_DATA`, else
    /// `$XDG_DATA_HOME/ecomesh`, else `$HOME/.local/share/ecomesh`.
    pub fn resolve(explicit: Option<PathBuf>) -> Result<DataDir> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let root = if let Some(p) = explicit {
            p
        } else if let Some(p) = env("ECOMESH_DATA") {
            PathBuf::from(p)
        } else if let Some(p) = env("XDG_DATA_HOME") {
            PathBuf::from(p).join("ecomesh")
        } else if let Some(h) = env("HOME") {
            PathBuf::from(h).join(".local/share/ecomesh")
        } else {
            bail!("no data directory: HOME is not set; pass --data DIR or set ECOMESH_DATA");
        };
        Ok(DataDir { root })
    }

    /// A data directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The identity key file.
    pub fn identity(&self) -> PathBuf {
        self.layout().identity()
    }

    /// The layout of the node's own files (store, queue, stream, mesh
    /// state), as the embedded [`ecomesh_sync::Node`] keeps them.
    pub fn layout(&self) -> ecomesh_sync::DataLayout {
        ecomesh_sync::DataLayout::new(&self.root)
    }

    /// The control socket of the running node.
    pub fn socket(&self) -> PathBuf {
        self.root.join("control.sock")
    }

    /// The HTTP API's bearer token (mode 0600), made at the first start.
    pub fn api_token(&self) -> PathBuf {
        self.root.join("api-token")
    }

    /// Where the running node writes the address its HTTP API listens on
    /// (one line, `HOST:PORT`); removed when it stops.
    pub fn api_addr(&self) -> PathBuf {
        self.root.join("api.addr")
    }

    /// The control socket path, refused when too long for a Unix socket.
    pub fn checked_socket(&self) -> Result<PathBuf> {
        let s = self.socket();
        if s.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the control socket path {} is longer than {MAX_SOCKET_PATH} bytes, \
                 the limit of Unix sockets; use a shorter --data directory",
                s.display()
            );
        }
        Ok(s)
    }

    /// Creates the directory (mode 0700) if needed.
    pub fn create(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .with_context(|| format!("cannot create the data directory {}", self.root.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_directory_wins_and_files_live_under_it() {
        let d = DataDir::resolve(Some(PathBuf::from("/x/y"))).unwrap();
        assert_eq!(d.root(), Path::new("/x/y"));
        assert_eq!(d.identity(), Path::new("/x/y/identity.key"));
        assert_eq!(d.socket(), Path::new("/x/y/control.sock"));
    }

    #[test]
    fn overlong_socket_path_is_refused_with_the_fix() {
        let d = DataDir::new(PathBuf::from("/").join("d".repeat(120)));
        let e = d.checked_socket().unwrap_err().to_string();
        assert!(e.contains("shorter --data"), "{e}");
        assert!(DataDir::new("/tmp/n").checked_socket().is_ok());
    }
}
