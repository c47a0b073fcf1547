//! The dependency-freedom check: the core crates pull in nothing they should not.
//!
//! With default features, `ecomesh-types` has no normal dependency at all, and
//! `ecomesh-crdt` has only `ecomesh-types`. Checked on the resolved graph
//! (`cargo tree -e normal --target all`), so an optional dependency switched on by
//! a default feature counts, and a dev-dependency does not.

use std::collections::BTreeSet;

use anyhow::{Result, bail};

use crate::cmd::Cmd;
use crate::workspace::Metadata;

/// Each checked package and the only packages allowed in its normal dependency graph
/// (besides itself).
const RULES: &[(&str, &[&str])] = &[("ecomesh-types", &[]), ("ecomesh-crdt", &["ecomesh-types"])];

/// Package names in the output of `cargo tree --prefix none --format {p}`.
fn tree_packages(tree: &str) -> BTreeSet<&str> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

/// The packages in `tree` (the graph of `package`) that `allowed` does not permit.
fn extra_packages<'a>(package: &str, allowed: &[&str], tree: &'a str) -> Vec<&'a str> {
    tree_packages(tree)
        .into_iter()
        .filter(|name| *name != package && !allowed.contains(name))
        .collect()
}

/// Runs the check for every rule whose package exists in the workspace.
pub(crate) fn run(metadata: &Metadata) -> Result<()> {
    let mut problems = Vec::new();
    for (package, allowed) in RULES {
        if metadata.package(package).is_none() {
            println!("dependency freedom: {package} is not in the workspace yet; skipped");
            continue;
        }
        let tree = Cmd::cargo()
            .args([
                "tree",
                "--package",
                package,
                "--edges",
                "normal",
                "--target",
                "all",
            ])
            .args(["--prefix", "none", "--format", "{p}"])
            .current_dir(&metadata.root)
            .read()?;
        let extra = extra_packages(package, allowed, &tree);
        if extra.is_empty() {
            let shown = if allowed.is_empty() {
                "no dependency".to_owned()
            } else {
                allowed.join(", ")
            };
            println!("dependency freedom: {package} -> {shown} (ok)");
        } else {
            let permitted = if allowed.is_empty() {
                "no normal dependency at all".to_owned()
            } else {
                format!("only {}", allowed.join(", "))
            };
            problems.push(format!(
                "{package} must have {permitted} with default features, but its graph has: {} \
                 (see `cargo tree -p {package} -e normal`)",
                extra.join(", ")
            ));
        }
    }
    if !problems.is_empty() {
        bail!(
            "dependency-freedom check failed:\n  - {}",
            problems.join("\n  - ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_package_is_free() {
        let tree = "ecomesh-types v0.1.0 (/w/crates/types)\n";
        assert!(extra_packages("ecomesh-types", &[], tree).is_empty());
    }

    #[test]
    fn anything_else_in_the_graph_is_reported() {
        let tree = "ecomesh-crdt v0.1.0 (/w/crates/crdt)\n\
                    ecomesh-types v0.1.0 (/w/crates/types)\n\
                    serde v1.0.200\n\
                    serde_derive v1.0.200 (proc-macro)\n\
                    serde v1.0.200 (*)\n";
        assert_eq!(
            extra_packages("ecomesh-crdt", &["ecomesh-types"], tree),
            vec!["serde", "serde_derive"]
        );
        assert_eq!(
            extra_packages("ecomesh-crdt", &[], tree),
            vec!["ecomesh-types", "serde", "serde_derive"]
        );
    }
}
