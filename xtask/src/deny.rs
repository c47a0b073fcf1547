//! `cargo xtask deny`: `cargo deny check` fully offline, against the dated RustSec
//! snapshot in `../shared/advisory-db`.
//!
//! cargo-deny reads an advisory database from `<db-path>/<dir derived from the db
//! URL>` and, when it may not fetch, requires that directory to be a git checkout
//! whose last fetch (the mtime of `.git/FETCH_HEAD`, else the HEAD commit time) is
//! recent. The snapshot is plain files, so this module copies it to
//! `<target-dir>/advisory-dbs/<dir>`, makes the copy a local git repository with
//! one commit (no network involved), and runs `cargo deny --offline check` with
//! `ECOMESH_ADVISORY_DBS` pointing `db-path` (see `deny.toml`) at it. The copy is
//! rebuilt on every run, so it always matches the snapshot on disk.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::cmd::{Cmd, has_cargo_subcommand};
use crate::workspace::Metadata;

/// Overrides where the plain-file snapshot is read from.
const SNAPSHOT_ENV: &str = "ECOMESH_ADVISORY_DB";

/// Tells `deny.toml`'s `db-path` where the prepared database root is.
const DB_ROOT_ENV: &str = "ECOMESH_ADVISORY_DBS";

/// The directory cargo-deny derives (via `tame_index::utils::url_to_local_dir`)
/// from the db URL `deny.toml` names, `https://github.com/RustSec/advisory-db`.
/// If a future cargo-deny derives another name, its error names the path it
/// tried; put that directory name here.
const DB_DIR: &str = "advisory-db-3157b0e258782691";

/// The checks run when none are named.
pub(crate) const ALL_CHECKS: &[&str] = &["advisories", "bans", "licenses", "sources"];

pub(crate) const HELP: &str = "\
cargo xtask deny [CHECK...]

Runs `cargo deny --offline check` (advisories, bans, licenses, sources by default)
with deny.toml. The advisory check reads the dated RustSec snapshot in
<repo>/../shared/advisory-db (override with ECOMESH_ADVISORY_DB=<dir>): xtask copies
it to <target-dir>/advisory-dbs, commits it to a local git repository there (the
form cargo-deny reads), and runs cargo-deny without any fetch. Crates themselves
come from crates.io (`cargo fetch` runs first, so `--offline` has every platform's
packages).

The snapshot has a date (see its SNAPSHOT.txt): advisories published after it are
not checked. A clean result is a floor, not a proof.

Needs cargo-deny (`cargo xtask deps` installs it).";

/// Finds the snapshot: `$ECOMESH_ADVISORY_DB`, else `<root>/../shared/advisory-db`.
fn locate_snapshot(root: &Path, from_env: Option<OsString>) -> Result<PathBuf> {
    let path = match from_env {
        Some(p) => PathBuf::from(p),
        None => root.join("..").join("shared").join("advisory-db"),
    };
    if !path.join("crates").is_dir() {
        bail!(
            "no RustSec advisory snapshot at {} (expected a `crates/` folder in it). \
             CI keeps it at <repo>/../shared/advisory-db; elsewhere set {SNAPSHOT_ENV}=<dir>",
            path.display()
        );
    }
    Ok(path)
}

/// Copies `from` into `to` (which must not exist), skipping any `.git`.
fn copy_tree(from: &Path, to: &Path) -> Result<usize> {
    fs::create_dir_all(to).with_context(|| format!("could not create {}", to.display()))?;
    let mut files = 0;
    for entry in fs::read_dir(from).with_context(|| format!("could not read {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let kind = entry.file_type()?;
        if kind.is_dir() {
            files += copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst).with_context(|| {
                format!("could not copy {} to {}", src.display(), dst.display())
            })?;
            files += 1;
        }
    }
    Ok(files)
}

/// Builds `<db_root>/<DB_DIR>` from the snapshot: a copy of the files committed to
/// a fresh local git repository. Returns the snapshot's one-line description.
fn prepare_db(snapshot: &Path, db_root: &Path) -> Result<String> {
    let db = db_root.join(DB_DIR);
    if db.exists() {
        fs::remove_dir_all(&db).with_context(|| format!("could not remove {}", db.display()))?;
    }
    let files = copy_tree(snapshot, &db)?;
    let about = fs::read_to_string(snapshot.join("SNAPSHOT.txt"))
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .unwrap_or_else(|| "RustSec advisory database snapshot (no SNAPSHOT.txt)".to_owned());
    println!("advisory db: {about}");
    println!(
        "advisory db: {files} files copied from {} to {}",
        snapshot.display(),
        db.display()
    );

    if Cmd::new("git").arg("--version").succeeds_quietly() {
        let git = || {
            Cmd::new("git")
                .args([
                    "-c",
                    "user.name=ecomesh xtask",
                    "-c",
                    "user.email=xtask@ecomesh.invalid",
                ])
                .args([
                    "-c",
                    "commit.gpgsign=false",
                    "-c",
                    "init.defaultBranch=main",
                ])
                // Work on the copy even when run from a git hook of the outer repository.
                .env_remove("GIT_DIR")
                .env_remove("GIT_WORK_TREE")
                .env_remove("GIT_INDEX_FILE")
                .current_dir(&db)
        };
        git().args(["init", "--quiet"]).read()?;
        git().args(["add", "--all"]).read()?;
        git()
            .args(["commit", "--quiet", "--no-verify", "-m"])
            .arg(format!("Local copy of {about}"))
            .read()?;
        println!("advisory db: committed to a local git repository (no network)");
    } else {
        // cargo-deny only reads the time of the last fetch from `.git/FETCH_HEAD`;
        // without git, record "fetched now" there.
        let git_dir = db.join(".git");
        fs::create_dir_all(&git_dir)?;
        fs::write(
            git_dir.join("FETCH_HEAD"),
            format!("local snapshot: {about}\n"),
        )?;
        println!("advisory db: git not found; marked the copy as fetched now via .git/FETCH_HEAD");
    }
    Ok(about)
}

/// How much cargo-deny prints per finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detail {
    /// With the inclusion graph (who pulls each crate in).
    Full,
    /// Without inclusion graphs: one short block per finding (used by `ci`,
    /// where every duplicate-version warning would otherwise print a tree).
    Brief,
}

/// Runs `cargo deny --offline check <checks>` against the snapshot.
pub(crate) fn run(metadata: &Metadata, checks: &[String], detail: Detail) -> Result<()> {
    if !has_cargo_subcommand("deny") {
        bail!(
            "cargo-deny is not installed; run `cargo xtask deps` (or `cargo install --locked cargo-deny`)"
        );
    }
    let checks: Vec<String> = if checks.is_empty() {
        ALL_CHECKS.iter().map(|c| (*c).to_owned()).collect()
    } else {
        checks.to_vec()
    };
    let db_root = metadata.target_dir.join("advisory-dbs");
    if checks.iter().any(|c| c == "advisories" || c == "all") {
        let snapshot = locate_snapshot(&metadata.root, std::env::var_os(SNAPSHOT_ENV))?;
        prepare_db(&snapshot, &db_root)?;
    }
    // `--offline` stops cargo-deny fetching the advisory db, but also makes its
    // `cargo metadata` offline, which needs every platform's packages on disk.
    Cmd::cargo()
        .args(["fetch", "--quiet"])
        .current_dir(&metadata.root)
        .run()?;
    let mut deny = Cmd::cargo().args(["deny", "--offline", "check"]);
    if detail == Detail::Brief {
        deny = deny.arg("--hide-inclusion-graph");
    }
    deny.args(&checks)
        .env(DB_ROOT_ENV, &db_root)
        .current_dir(&metadata.root)
        .run()
        .with_context(|| {
            format!(
                "cargo deny found a problem (above). If it could not open the advisory database, \
                 it looked somewhere other than {}: see DB_DIR in xtask/src/deny.rs",
                db_root.join(DB_DIR).display()
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-deny-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn snapshot_copy_becomes_a_one_commit_git_repository() {
        let base = scratch("prepare");
        let snapshot = base.join("snapshot");
        fs::create_dir_all(snapshot.join("crates/sharks")).unwrap();
        fs::create_dir_all(snapshot.join(".git")).unwrap();
        fs::write(snapshot.join(".git/ignored"), "not copied").unwrap();
        fs::write(
            snapshot.join("crates/sharks/RUSTSEC-2024-0398.md"),
            "advisory",
        )
        .unwrap();
        fs::write(
            snapshot.join("SNAPSHOT.txt"),
            "Snapshot of 2025-02-24\nmore\n",
        )
        .unwrap();

        let db_root = base.join("dbs");
        let about = prepare_db(&snapshot, &db_root).unwrap();
        assert_eq!(about, "Snapshot of 2025-02-24");
        let db = db_root.join(DB_DIR);
        assert_eq!(
            fs::read_to_string(db.join("crates/sharks/RUSTSEC-2024-0398.md")).unwrap(),
            "advisory"
        );
        assert!(!db.join(".git/ignored").exists());
        if Cmd::new("git").arg("--version").succeeds_quietly() {
            let log = Cmd::new("git")
                .args(["log", "--format=%s"])
                .current_dir(&db)
                .read()
                .unwrap();
            assert_eq!(log, "Local copy of Snapshot of 2025-02-24\n");
        }
        // A second run replaces the copy instead of failing on it.
        prepare_db(&snapshot, &db_root).unwrap();
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn missing_snapshot_is_a_clear_error() {
        let err = locate_snapshot(&scratch("missing").join("repo"), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no RustSec advisory snapshot"), "{err}");
    }
}
