//! The decoder registry: every function of `crates/*/src` that decodes untrusted
//! bytes or text must be listed in `fuzz/decoders.txt` beside the cargo-fuzz target
//! that exercises it, and `cargo xtask fuzz` (so CI's fuzz step) fails otherwise.
//!
//! The naming rule that finds decoders: a function named `decode`, `decode_*`,
//! `from_bytes`, `from_bytes_*` or `from_slice` whose parameter list takes a slice
//! or text (`&[u8]` or `&str`), outside test code (files named `tests.rs` or
//! `fuzzing.rs`, and everything after a `#[cfg(test)]` inline module). A decoder of
//! untrusted input must follow the rule, so its new decoders are found.
//!
//! `fuzz/decoders.txt` has one line per decoder, `FILE FUNCTION TARGET`, where
//! FILE is relative to the repository root and TARGET names a file of
//! `fuzz/fuzz_targets/`; `#` starts a comment. A line whose decoder no longer
//! exists fails too, so the registry stays true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The registry file, relative to the repository root.
pub(crate) const REGISTRY: &str = "fuzz/decoders.txt";

/// Decoders found in the sources: (file relative to `root`, function name).
pub(crate) fn scan(root: &Path) -> Result<BTreeSet<(String, String)>> {
    let mut files = Vec::new();
    let crates = root.join("crates");
    let entries = std::fs::read_dir(&crates)
        .with_context(|| format!("could not list {}", crates.display()))?;
    for entry in entries {
        let src = entry?.path().join("src");
        if src.is_dir() {
            collect_rs(&src, &mut files)?;
        }
    }
    let mut found = BTreeSet::new();
    for file in files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name == "tests.rs" || name == "fuzzing.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("could not read {}", file.display()))?;
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        for function in decoders_in(&text) {
            found.insert((rel.clone(), function));
        }
    }
    Ok(found)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                collect_rs(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `name` is a decoder's name under the rule.
fn decoder_name(name: &str) -> bool {
    name == "decode"
        || name.starts_with("decode_")
        || name == "from_bytes"
        || name.starts_with("from_bytes_")
        || name == "from_slice"
}

/// The decoder functions defined in one source file's text (see the module docs).
pub(crate) fn decoders_in(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            let next = lines.get(i + 1).map(|l| l.trim()).unwrap_or_default();
            if next.starts_with("mod ") && next.ends_with('{') {
                break;
            }
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let Some(at) = trimmed.find("fn ") else {
            continue;
        };
        if at > 0 && !trimmed[..at].ends_with(' ') {
            continue;
        }
        let rest = &trimmed[at + 3..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        if !decoder_name(name) {
            continue;
        }
        // The parameter list, which may span lines, up to the closing parenthesis.
        let mut params = String::from(&rest[end..]);
        let mut j = i + 1;
        while !params.contains(')') && j < lines.len() && j < i + 12 {
            params.push_str(lines[j]);
            j += 1;
        }
        let params = without_lifetimes(params.split(')').next().unwrap_or_default());
        if params.contains("&[u8]") || params.contains("&str") {
            found.push(name.to_owned());
        }
    }
    found
}

/// `text` with every lifetime (`'a ` and the like) removed, so `&'a [u8]` reads `&[u8]`.
fn without_lifetimes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            while chars
                .next_if(|c| c.is_ascii_alphanumeric() || *c == '_')
                .is_some()
            {}
            while chars.next_if(|c| *c == ' ').is_some() {}
        } else {
            out.push(c);
        }
    }
    out
}

/// The registry's entries: (file, function) to target.
pub(crate) fn parse_registry(text: &str) -> Result<BTreeMap<(String, String), String>> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [file, function, target] = fields[..] else {
            bail!(
                "{REGISTRY}:{}: expected `FILE FUNCTION TARGET`, got `{line}`",
                n + 1
            );
        };
        if out
            .insert((file.to_owned(), function.to_owned()), target.to_owned())
            .is_some()
        {
            bail!("{REGISTRY}:{}: {file} {function} is listed twice", n + 1);
        }
    }
    Ok(out)
}

/// The problems of the registry against the sources and the targets on disk.
pub(crate) fn problems(
    found: &BTreeSet<(String, String)>,
    registry: &BTreeMap<(String, String), String>,
    targets: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for (file, function) in found {
        match registry.get(&(file.clone(), function.clone())) {
            None => out.push(format!(
                "decoder `{function}` in {file} has no fuzz target: add a target (or extend one) and list it in {REGISTRY}"
            )),
            Some(target) if !targets.contains(target) => out.push(format!(
                "decoder `{function}` in {file} is listed with fuzz target `{target}`, which fuzz/fuzz_targets/ lacks"
            )),
            Some(_) => {}
        }
    }
    for (file, function) in registry.keys() {
        if !found.contains(&(file.clone(), function.clone())) {
            out.push(format!(
                "{REGISTRY} lists `{function}` in {file}, which is not a decoder there (any more): remove or fix the line"
            ));
        }
    }
    out
}

/// Fails unless every decoder of the sources is registered with an existing target.
pub(crate) fn check(root: &Path) -> Result<()> {
    let path = root.join(REGISTRY);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("could not read {}", path.display()))?;
    let registry = parse_registry(&text)?;
    let found = scan(root)?;
    let targets = crate::fuzz::targets_on_disk(root);
    let problems = problems(&found, &registry, &targets);
    if !problems.is_empty() {
        bail!("fuzz coverage:\n  - {}", problems.join("\n  - "));
    }
    println!(
        "fuzz: {} decoders in crates/*/src, each with a fuzz target ({REGISTRY})",
        found.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "\
/// Docs.
pub fn decode(bytes: &[u8]) -> Result<X> {}
pub(crate) fn decode_header(
    limits: Limits,
    text: &str,
) -> Option<Y> {}
fn from_bytes_with<T>(b: &[u8], l: L) {}
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {}
pub const fn from_bytes(bytes: [u8; 32]) -> Self {}
fn encode(bytes: &[u8]) {}
// fn decode_commented(b: &[u8]) {}
fn undecode(b: &[u8]) {}
#[cfg(test)]
mod tests {
    fn decode_in_tests(b: &[u8]) {}
}
";

    #[test]
    fn the_naming_rule_finds_slice_and_text_decoders_outside_tests() {
        assert_eq!(
            decoders_in(SOURCE),
            vec!["decode", "decode_header", "from_bytes_with", "decode"]
        );
    }

    #[test]
    fn an_unregistered_decoder_a_missing_target_and_a_stale_line_fail() {
        let found: BTreeSet<(String, String)> = [
            ("crates/a/src/x.rs", "decode"),
            ("crates/a/src/x.rs", "from_slice"),
            ("crates/b/src/y.rs", "decode_frame"),
        ]
        .into_iter()
        .map(|(f, n)| (f.to_owned(), n.to_owned()))
        .collect();
        let registry = parse_registry(
            "# file function target\n\
             crates/a/src/x.rs decode a_target\n\
             crates/a/src/x.rs from_slice gone_target  # a comment\n\
             crates/c/src/z.rs decode a_target\n",
        )
        .unwrap();
        let targets = vec!["a_target".to_owned()];
        let p = problems(&found, &registry, &targets);
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(p[0].contains("`from_slice`") && p[0].contains("gone_target"));
        assert!(p[1].contains("`decode_frame`") && p[1].contains("has no fuzz target"));
        assert!(p[2].contains("crates/c/src/z.rs") && p[2].contains("not a decoder"));

        let complete = parse_registry(
            "crates/a/src/x.rs decode a_target\n\
             crates/a/src/x.rs from_slice a_target\n\
             crates/b/src/y.rs decode_frame a_target\n",
        )
        .unwrap();
        assert!(problems(&found, &complete, &targets).is_empty());
    }

    #[test]
    fn malformed_and_duplicate_registry_lines_are_refused() {
        assert!(parse_registry("crates/a/src/x.rs decode\n").is_err());
        assert!(parse_registry("a f t\na f u\n").is_err());
    }

    #[test]
    fn the_committed_registry_covers_this_repository() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        check(&root).unwrap();
    }
}
