//! The layering check: every crate in `crates/` depends only on the crates that
//! the `layering` block of `docs/architecture.md` allows it.
//!
//! The block is a fenced code block with the info string `layering`; each line is
//! `<folder>: <folder> <folder> ...`, naming the crate folders (package
//! `ecomesh-<folder>`) that the crate may name in `[dependencies]` and
//! `[build-dependencies]`. `[dev-dependencies]` may also name `transport-tests` and
//! any crate below the crate itself (the transitive closure of its list); the
//! `sync` crate's `[dev-dependencies]` may also name `transport-*` crates, because
//! its examples and tests run real transports as an embedding application does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

use anyhow::{Context, Result, bail, ensure};

use crate::workspace::{DepKind, Metadata};

/// Where the layering block lives, relative to the workspace root.
pub(crate) const ARCHITECTURE_DOC: &str = "docs/architecture.md";

/// The info string that marks the block.
const FENCE: &str = "```layering";

/// The crate every transport may use in its tests.
const TRANSPORT_TESTS: &str = "transport-tests";

/// The embeddable node, whose examples and tests link transports as an
/// application does.
const SYNC: &str = "sync";

/// The folder prefix of every transport crate.
const TRANSPORT_PREFIX: &str = "transport-";

/// Whether `folder`'s `[dev-dependencies]` may name `dep` beyond what is below
/// it: `transport-tests` for everyone, any `transport-*` for `sync`.
fn dev_extra_allowed(folder: &str, dep: &str) -> bool {
    dep == TRANSPORT_TESTS || (folder == SYNC && dep.starts_with(TRANSPORT_PREFIX))
}

/// The allowed dependencies of each crate folder, as the architecture document lists them.
#[derive(Debug, Clone)]
pub(crate) struct Layering {
    allowed: BTreeMap<String, BTreeSet<String>>,
}

impl Layering {
    /// Reads and parses the block from `<root>/docs/architecture.md`.
    pub(crate) fn load(root: &Path) -> Result<Self> {
        let path = root.join(ARCHITECTURE_DOC);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("could not read {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("{ARCHITECTURE_DOC}: bad layering block"))
    }

    /// Parses the one `layering` block of a markdown document and checks that it is
    /// a well-formed DAG: every named crate has its own line, nothing depends on
    /// itself, no cycles.
    pub(crate) fn parse(markdown: &str) -> Result<Self> {
        let mut lines = markdown.lines().enumerate();
        let mut blocks = 0;
        let mut allowed = BTreeMap::new();
        while let Some((_, line)) = lines.next() {
            if line.trim_end() != FENCE {
                continue;
            }
            blocks += 1;
            let mut closed = false;
            for (index, line) in lines.by_ref() {
                let line = line.trim();
                if line.starts_with("```") {
                    closed = true;
                    break;
                }
                if line.is_empty() {
                    continue;
                }
                let number = index + 1;
                let (name, deps) = line
                    .split_once(':')
                    .with_context(|| format!("line {number}: expected `<crate>: <crates...>`"))?;
                let name = name.trim();
                ensure!(
                    is_crate_folder(name),
                    "line {number}: `{name}` is not a crate folder name"
                );
                let mut set = BTreeSet::new();
                for dep in deps.split_whitespace() {
                    ensure!(
                        is_crate_folder(dep),
                        "line {number}: `{dep}` is not a crate folder name"
                    );
                    ensure!(dep != name, "line {number}: `{name}` lists itself");
                    ensure!(
                        set.insert(dep.to_owned()),
                        "line {number}: `{dep}` listed twice"
                    );
                }
                ensure!(
                    allowed.insert(name.to_owned(), set).is_none(),
                    "line {number}: `{name}` has two lines"
                );
            }
            ensure!(closed, "the block is not closed with ```");
        }
        ensure!(
            blocks == 1,
            "expected exactly one {FENCE} block, found {blocks}"
        );
        let layering = Self { allowed };
        layering.validate()?;
        Ok(layering)
    }

    fn validate(&self) -> Result<()> {
        for (name, deps) in &self.allowed {
            for dep in deps {
                ensure!(
                    self.allowed.contains_key(dep),
                    "`{name}` may depend on `{dep}`, which has no line of its own"
                );
            }
        }
        // Depth-first search for a cycle; `path` is the current chain.
        fn visit<'a>(
            layering: &'a Layering,
            name: &'a str,
            done: &mut BTreeSet<&'a str>,
            path: &mut Vec<&'a str>,
        ) -> Result<()> {
            if done.contains(name) {
                return Ok(());
            }
            if let Some(start) = path.iter().position(|n| *n == name) {
                bail!("cycle: {} -> {name}", path[start..].join(" -> "));
            }
            path.push(name);
            for dep in layering.allowed.get(name).into_iter().flatten() {
                visit(layering, dep, done, path)?;
            }
            path.pop();
            done.insert(name);
            Ok(())
        }
        let mut done = BTreeSet::new();
        for name in self.allowed.keys() {
            visit(self, name, &mut done, &mut Vec::new())?;
        }
        Ok(())
    }

    /// Every crate below `name`: the transitive closure of what it may depend on.
    fn below(&self, name: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<&str> = vec![name];
        while let Some(next) = stack.pop() {
            for dep in self.allowed.get(next).into_iter().flatten() {
                if seen.insert(dep.as_str()) {
                    stack.push(dep);
                }
            }
        }
        seen
    }

    /// Checks every package in `crates/`; returns one message per problem (empty when clean).
    pub(crate) fn check(&self, metadata: &Metadata) -> Vec<String> {
        let mut problems = Vec::new();
        for package in &metadata.packages {
            let Some(folder) = crate_folder(&package.dir) else {
                continue; // xtask, benches: not layered
            };
            let expected = format!("ecomesh-{folder}");
            if package.name != expected {
                problems.push(format!(
                    "crates/{folder} holds package `{}`; a crate in crates/<dir> must be named `{expected}`",
                    package.name
                ));
            }
            let Some(allowed) = self.allowed.get(folder) else {
                problems.push(format!(
                    "crates/{folder} ({}) is not listed in the layering block of {ARCHITECTURE_DOC}; \
                     add a line `{folder}: <crates it may depend on>`",
                    package.name
                ));
                continue;
            };
            let below = self.below(folder);
            for dep in &package.deps {
                let Some(dep_folder) = dep.name.strip_prefix("ecomesh-") else {
                    continue;
                };
                let ok = match dep.kind {
                    DepKind::Normal | DepKind::Build => allowed.contains(dep_folder),
                    DepKind::Dev => {
                        dev_extra_allowed(folder, dep_folder) || below.contains(dep_folder)
                    }
                };
                if !ok {
                    let list = if allowed.is_empty() {
                        "nothing".to_owned()
                    } else {
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    };
                    let dev_note = if dep.kind == DepKind::Dev {
                        format!(
                            " (dev-dependencies may also name {TRANSPORT_TESTS} and any crate below \
                             {folder}; only {SYNC}'s may name other {TRANSPORT_PREFIX}* crates)"
                        )
                    } else {
                        String::new()
                    };
                    problems.push(format!(
                        "{} depends on {} in {}, but {ARCHITECTURE_DOC} allows {folder} to depend only on: {list}{dev_note}",
                        package.name,
                        dep.name,
                        dep.kind.section(),
                    ));
                }
            }
        }
        problems
    }
}

/// `crates/<folder>` -> `<folder>`; anything else -> None.
fn crate_folder(dir: &Path) -> Option<&str> {
    let mut components = dir.components();
    match (components.next(), components.next(), components.next()) {
        (Some(Component::Normal(first)), Some(Component::Normal(folder)), None)
            if first == "crates" =>
        {
            folder.to_str()
        }
        _ => None,
    }
}

fn is_crate_folder(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Runs the check against the workspace at `root`, failing with every problem listed.
pub(crate) fn run(metadata: &Metadata) -> Result<()> {
    let layering = Layering::load(&metadata.root)?;
    let problems = layering.check(metadata);
    if !problems.is_empty() {
        bail!(
            "layering check failed:\n  - {}\nFix the dependency, or change the layering block in {ARCHITECTURE_DOC} \
             if the architecture really changed.",
            problems.join("\n  - ")
        );
    }
    let layered = metadata
        .packages
        .iter()
        .filter(|p| crate_folder(&p.dir).is_some())
        .count();
    println!(
        "layering: {layered} crates in crates/ depend only downward, as {ARCHITECTURE_DOC} lists"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::workspace::{Dep, Package};

    const DOC: &str = "# Architecture\n\ntext\n\n```layering\ntypes:\ncrdt: types\nwire: types crdt\n\
                       transport-tests: types wire\nmesh: types crdt wire\n```\n\nmore text\n";

    fn package(dir: &str, name: &str, deps: &[(&str, DepKind)]) -> Package {
        Package {
            name: name.to_owned(),
            dir: PathBuf::from(dir),
            deps: deps
                .iter()
                .map(|(n, k)| Dep {
                    name: (*n).to_owned(),
                    kind: *k,
                })
                .collect(),
        }
    }

    fn metadata(packages: Vec<Package>) -> Metadata {
        Metadata {
            root: PathBuf::from("/w"),
            target_dir: PathBuf::from("/w/target"),
            packages,
        }
    }

    #[test]
    fn parses_the_block_and_computes_what_is_below() {
        let l = Layering::parse(DOC).unwrap();
        assert_eq!(l.allowed.len(), 5);
        assert!(l.allowed["types"].is_empty());
        assert_eq!(l.below("mesh"), BTreeSet::from(["types", "crdt", "wire"]));
        assert_eq!(
            l.below("transport-tests"),
            BTreeSet::from(["types", "crdt", "wire"])
        );
    }

    #[test]
    fn the_real_architecture_document_parses() {
        let l = Layering::load(&crate::workspace::root()).unwrap();
        assert!(l.allowed["types"].is_empty());
        assert_eq!(l.allowed["crdt"], BTreeSet::from(["types".to_owned()]));
        assert!(l.allowed.contains_key("node"));
    }

    #[test]
    fn malformed_blocks_are_rejected() {
        for (doc, expect) in [
            ("no block here", "exactly one"),
            (
                "```layering\ntypes:\n```\n```layering\ncrdt:\n```",
                "exactly one",
            ),
            ("```layering\ntypes:\n", "not closed"),
            ("```layering\ntypes\n```", "expected `<crate>"),
            ("```layering\ntypes: types\n```", "lists itself"),
            ("```layering\ncrdt: types\n```", "no line of its own"),
            ("```layering\ntypes:\ntypes:\n```", "two lines"),
            ("```layering\na: b\nb: c\nc: a\n```", "cycle"),
            ("```layering\nTypes:\n```", "not a crate folder"),
        ] {
            let err = format!("{:#}", Layering::parse(doc).unwrap_err());
            assert!(err.contains(expect), "{doc:?}: {err}");
        }
    }

    #[test]
    fn downward_dependencies_pass() {
        let l = Layering::parse(DOC).unwrap();
        let m = metadata(vec![
            package(
                "crates/types",
                "ecomesh-types",
                &[("serde", DepKind::Normal)],
            ),
            package(
                "crates/crdt",
                "ecomesh-crdt",
                &[("ecomesh-types", DepKind::Normal)],
            ),
            package(
                "crates/mesh",
                "ecomesh-mesh",
                &[
                    ("ecomesh-wire", DepKind::Normal),
                    ("ecomesh-transport-tests", DepKind::Dev),
                ],
            ),
            // Outside crates/: not layered.
            package(
                "benches",
                "ecomesh-benches",
                &[("ecomesh-mesh", DepKind::Normal)],
            ),
        ]);
        assert_eq!(l.check(&m), Vec::<String>::new());
    }

    #[test]
    fn upward_and_sideways_dependencies_fail_naming_both_crates() {
        let l = Layering::parse(DOC).unwrap();
        let m = metadata(vec![
            package(
                "crates/crdt",
                "ecomesh-crdt",
                &[("ecomesh-wire", DepKind::Normal)],
            ),
            package(
                "crates/types",
                "ecomesh-types",
                &[("ecomesh-crdt", DepKind::Build)],
            ),
            package(
                "crates/wire",
                "ecomesh-wire",
                &[("ecomesh-mesh", DepKind::Dev)],
            ),
        ]);
        let problems = l.check(&m);
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(problems[0].contains("ecomesh-crdt depends on ecomesh-wire in [dependencies]"));
        assert!(problems[0].contains("only on: types"));
        assert!(
            problems[1].contains("ecomesh-types depends on ecomesh-crdt in [build-dependencies]")
        );
        assert!(problems[1].contains("only on: nothing"));
        assert!(problems[2].contains("ecomesh-wire depends on ecomesh-mesh in [dev-dependencies]"));
        assert!(problems[2].contains("transport-tests"));
    }

    #[test]
    fn dev_dependencies_may_reach_below_but_normal_ones_may_not() {
        let l = Layering::parse(DOC).unwrap();
        // mesh lists wire, which lists crdt: crdt is below mesh.
        let dev = metadata(vec![package(
            "crates/transport-tests",
            "ecomesh-transport-tests",
            &[("ecomesh-crdt", DepKind::Dev)],
        )]);
        assert!(l.check(&dev).is_empty());
        let normal = metadata(vec![package(
            "crates/transport-tests",
            "ecomesh-transport-tests",
            &[("ecomesh-crdt", DepKind::Normal)],
        )]);
        assert_eq!(l.check(&normal).len(), 1);
    }

    #[test]
    fn only_sync_dev_dependencies_may_name_transports() {
        let doc = "```layering\ntypes:\ntransport-wired: types\ntransport-tests: types\n\
                   mesh: types\nsync: types mesh\n```\n";
        let l = Layering::parse(doc).unwrap();
        let sync_dev = metadata(vec![package(
            "crates/sync",
            "ecomesh-sync",
            &[
                ("ecomesh-transport-wired", DepKind::Dev),
                ("ecomesh-transport-tests", DepKind::Dev),
            ],
        )]);
        assert_eq!(l.check(&sync_dev), Vec::<String>::new());
        // Not in sync's normal or build dependencies.
        for kind in [DepKind::Normal, DepKind::Build] {
            let m = metadata(vec![package(
                "crates/sync",
                "ecomesh-sync",
                &[("ecomesh-transport-wired", kind)],
            )]);
            let problems = l.check(&m);
            assert_eq!(problems.len(), 1, "{kind:?}: {problems:#?}");
            assert!(problems[0].contains("ecomesh-sync depends on ecomesh-transport-wired"));
        }
        // Not in another crate's dev-dependencies.
        let mesh_dev = metadata(vec![package(
            "crates/mesh",
            "ecomesh-mesh",
            &[("ecomesh-transport-wired", DepKind::Dev)],
        )]);
        let problems = l.check(&mesh_dev);
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert!(problems[0].contains("only sync's may name other transport-* crates"));
        // The prefix must match whole: `transportless` is no transport.
        assert!(!dev_extra_allowed("sync", "transportless"));
        assert!(dev_extra_allowed("sync", "transport-lora"));
        assert!(!dev_extra_allowed("mesh", "transport-lora"));
        assert!(dev_extra_allowed("mesh", "transport-tests"));
    }

    #[test]
    fn unlisted_crates_and_wrong_names_fail() {
        let l = Layering::parse(DOC).unwrap();
        let m = metadata(vec![
            package("crates/gossip", "ecomesh-gossip", &[]),
            package("crates/wire", "wire", &[]),
        ]);
        let problems = l.check(&m);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("crates/gossip (ecomesh-gossip) is not listed"));
        assert!(problems[1].contains("must be named `ecomesh-wire`"));
    }

    #[test]
    fn crate_folder_only_matches_direct_children_of_crates() {
        assert_eq!(crate_folder(Path::new("crates/types")), Some("types"));
        assert_eq!(crate_folder(Path::new("crates/types/sub")), None);
        assert_eq!(crate_folder(Path::new("xtask")), None);
        assert_eq!(crate_folder(Path::new("benches")), None);
    }
}
