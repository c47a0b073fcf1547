//! Where the workspace is, and what `cargo metadata` says about it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::Cmd;

/// The repository root: the parent of the `xtask/` folder this binary was built from.
pub(crate) fn root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.to_path_buf(), Path::to_path_buf)
}

/// One dependency declaration of a workspace package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dep {
    /// The package depended on (not the `rename`d key).
    pub(crate) name: String,
    /// `normal`, `dev` or `build`.
    pub(crate) kind: DepKind,
}

/// The kind of a dependency edge, as `cargo metadata` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DepKind {
    /// `[dependencies]`.
    Normal,
    /// `[dev-dependencies]`.
    Dev,
    /// `[build-dependencies]`.
    Build,
}

impl DepKind {
    /// The manifest section name, for messages.
    pub(crate) fn section(self) -> &'static str {
        match self {
            Self::Normal => "[dependencies]",
            Self::Dev => "[dev-dependencies]",
            Self::Build => "[build-dependencies]",
        }
    }
}

/// One workspace member.
#[derive(Debug, Clone)]
pub(crate) struct Package {
    /// The package name (`ecomesh-types`).
    pub(crate) name: String,
    /// The folder holding its `Cargo.toml`, relative to the workspace root (`crates/types`).
    pub(crate) dir: PathBuf,
    /// Its declared dependencies.
    pub(crate) deps: Vec<Dep>,
}

/// The workspace as `cargo metadata --no-deps` describes it.
#[derive(Debug, Clone)]
pub(crate) struct Metadata {
    /// The directory holding the root `Cargo.toml`.
    pub(crate) root: PathBuf,
    /// Where cargo puts build output (honours `CARGO_TARGET_DIR` and config).
    pub(crate) target_dir: PathBuf,
    /// Every workspace member.
    pub(crate) packages: Vec<Package>,
}

impl Metadata {
    /// Runs `cargo metadata --format-version 1 --no-deps` in `root` and parses it.
    pub(crate) fn load(root: &Path) -> Result<Self> {
        let json = Cmd::cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .current_dir(root)
            .read()?;
        Self::parse(&json)
    }

    /// Parses the JSON of `cargo metadata --format-version 1 --no-deps`.
    pub(crate) fn parse(json: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(json).context("cargo metadata: invalid JSON")?;
        let root = PathBuf::from(str_field(&v, "workspace_root")?);
        let target_dir = PathBuf::from(str_field(&v, "target_directory")?);
        let Some(packages) = v.get("packages").and_then(Value::as_array) else {
            bail!("cargo metadata: no `packages` array");
        };
        let packages = packages
            .iter()
            .map(|p| parse_package(p, &root))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            root,
            target_dir,
            packages,
        })
    }

    /// The member called `name`, if any.
    pub(crate) fn package(&self, name: &str) -> Option<&Package> {
        self.packages.iter().find(|p| p.name == name)
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("cargo metadata: missing string field `{key}`"))
}

fn parse_package(p: &Value, root: &Path) -> Result<Package> {
    let name = str_field(p, "name")?.to_owned();
    let manifest = PathBuf::from(str_field(p, "manifest_path")?);
    let dir = manifest
        .parent()
        .and_then(|d| d.strip_prefix(root).ok())
        .map(Path::to_path_buf)
        .with_context(|| format!("cargo metadata: {name}'s manifest is outside the workspace"))?;
    let deps = p
        .get("dependencies")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let name = str_field(d, "name")?.to_owned();
            let kind = match d.get("kind").and_then(Value::as_str) {
                None => DepKind::Normal,
                Some("dev") => DepKind::Dev,
                Some("build") => DepKind::Build,
                Some(other) => bail!("cargo metadata: unknown dependency kind `{other}`"),
            };
            Ok(Dep { name, kind })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Package { name, dir, deps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_members_dirs_and_dependency_kinds() {
        let json = r#"{
          "workspace_root": "/w",
          "target_directory": "/w/target",
          "packages": [{
            "name": "ecomesh-crdt",
            "manifest_path": "/w/crates/crdt/Cargo.toml",
            "dependencies": [
              {"name": "ecomesh-types", "kind": null, "rename": null},
              {"name": "proptest", "kind": "dev"},
              {"name": "ecomesh-wire", "kind": "build", "rename": "w"}
            ]
          }]
        }"#;
        let m = Metadata::parse(json).unwrap();
        assert_eq!(m.target_dir, Path::new("/w/target"));
        let p = m.package("ecomesh-crdt").unwrap();
        assert_eq!(p.dir, Path::new("crates/crdt"));
        let kinds: Vec<_> = p.deps.iter().map(|d| (d.name.as_str(), d.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("ecomesh-types", DepKind::Normal),
                ("proptest", DepKind::Dev),
                ("ecomesh-wire", DepKind::Build)
            ]
        );
    }

    #[test]
    fn rejects_unknown_dependency_kind() {
        let json = r#"{"workspace_root": "/w", "target_directory": "/t", "packages": [
          {"name": "a", "manifest_path": "/w/a/Cargo.toml",
           "dependencies": [{"name": "b", "kind": "weird"}]}]}"#;
        assert!(Metadata::parse(json).is_err());
    }
}
