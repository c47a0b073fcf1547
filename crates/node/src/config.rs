//! `ecomesh.toml` in the data directory: values for every `ecomesh node`
//! flag, so a node starts with `ecomesh node` alone. A key is a flag's long
//! name without its dashes (`keepalive = 5`, `transports = ["wired",
//! "internet"]`, `no-mdns = true`); a flag given on the command line (or
//! through its environment variable) wins over the file. Unknown keys and
//! values of the wrong shape are errors naming the key and the file.
//!
//! The file's values become extra command-line arguments, so they are
//! checked by the same parsers as the flags themselves.
//!
//! One table is not a flag: `[relationships]` lists peers by level
//! (`family = ["PEER", ...]`, likewise `neighbour`, `municipal`,
//! `bioregional`); each entry becomes `--relation=PEER=LEVEL`, and
//! `--relation` on the command line overrides the whole table.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// The config file's name in the data directory.
pub const CONFIG_FILE: &str = "ecomesh.toml";
/// Largest config file read, in bytes.
pub const MAX_CONFIG: u64 = 1 << 20;

/// A config file read for `ecomesh node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    /// Arguments for the keys whose flags were not given (flags win), in key order.
    pub args: Vec<String>,
    /// The keys used, in key order.
    pub used: Vec<String>,
    /// The keys overridden by a flag given on the command line.
    pub overridden: Vec<String>,
}

/// Reads `path` (absent: `Ok(None)`) against the flags of `node` (the
/// `ecomesh node` subcommand) and the `given` matches of this invocation.
pub fn load(path: &Path, node: &Command, given: &ArgMatches) -> Result<Option<Loaded>> {
    let text = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        Ok(m) if m.len() > MAX_CONFIG => bail!(
            "{} is {} bytes; a config file has at most {MAX_CONFIG}",
            path.display(),
            m.len()
        ),
        Ok(_) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
    };
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut loaded = Loaded {
        path: path.to_owned(),
        args: Vec::new(),
        used: Vec::new(),
        overridden: Vec::new(),
    };
    for (key, value) in &table {
        if key == RELATIONSHIPS {
            if is_given(given, "relation") {
                loaded.overridden.push(key.clone());
            } else {
                loaded.args.extend(relationship_args(value, path)?);
                loaded.used.push(key.clone());
            }
            continue;
        }
        let Some(arg) = node.get_arguments().find(|a| a.get_long() == Some(key)) else {
            bail!(
                "unknown key {key:?} in {}; keys are `ecomesh node` flags without their dashes: {}",
                path.display(),
                keys(node).join(", ")
            );
        };
        let id = arg.get_id().as_str();
        if is_given(given, id) || conflicts_with_given(node, arg, given) {
            loaded.overridden.push(key.clone());
            continue;
        }
        let bad = |want: &str| {
            anyhow::anyhow!(
                "key {key:?} in {}: expected {want}, found {}",
                path.display(),
                value.type_str()
            )
        };
        match arg.get_action() {
            ArgAction::SetTrue => match value {
                toml::Value::Boolean(true) => loaded.args.push(format!("--{key}")),
                toml::Value::Boolean(false) => {}
                _ => return Err(bad("true or false")),
            },
            action => {
                let repeatable = matches!(action, ArgAction::Append);
                let values = match value {
                    toml::Value::Array(items) if repeatable => items.iter().collect(),
                    toml::Value::Array(_) => return Err(bad("one value, not an array")),
                    one => vec![one],
                };
                for v in values {
                    let text = match v {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        _ => return Err(bad("a string or an integer")),
                    };
                    loaded.args.push(format!("--{key}={text}"));
                }
            }
        }
        loaded.used.push(key.clone());
    }
    Ok(Some(loaded))
}

/// The table of relationships by level.
pub const RELATIONSHIPS: &str = "relationships";

/// The `--relation` arguments of the `[relationships]` table `value`.
fn relationship_args(value: &toml::Value, path: &Path) -> Result<Vec<String>> {
    let bad = |what: String| anyhow::anyhow!("[{RELATIONSHIPS}] in {}: {what}", path.display());
    let toml::Value::Table(levels) = value else {
        return Err(bad(format!(
            "expected a table such as family = [\"PEER\"], found {}",
            value.type_str()
        )));
    };
    let mut args = Vec::new();
    for (level, peers) in levels {
        let trust = ecomesh_sync::Trust::from_name(level.trim_end_matches('s'))
            .filter(|t| *t != ecomesh_sync::Trust::OwnDevice)
            .ok_or_else(|| {
                bad(format!(
                    "unknown level {level:?}; levels are family, neighbour, municipal, \
                     bioregional and stranger (own devices come from device links)"
                ))
            })?;
        let toml::Value::Array(peers) = peers else {
            return Err(bad(format!("{level}: expected an array of peer ids")));
        };
        for p in peers {
            let toml::Value::String(p) = p else {
                return Err(bad(format!("{level}: a peer id is a string")));
            };
            args.push(format!("--relation={p}={}", trust.name()));
        }
    }
    Ok(args)
}

fn is_given(given: &ArgMatches, id: &str) -> bool {
    matches!(
        given.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// True when `arg` conflicts (either way) with a flag given on the command line.
fn conflicts_with_given(node: &Command, arg: &clap::Arg, given: &ArgMatches) -> bool {
    node.get_arg_conflicts_with(arg)
        .iter()
        .any(|a| is_given(given, a.get_id().as_str()))
        || node.get_arguments().any(|other| {
            is_given(given, other.get_id().as_str())
                && node
                    .get_arg_conflicts_with(other)
                    .iter()
                    .any(|c| c.get_id() == arg.get_id())
        })
}

/// The keys a config file may hold: the long names of `node`'s flags.
fn keys(node: &Command) -> Vec<&str> {
    node.get_arguments()
        .filter(|a| !a.is_global_set())
        .filter_map(clap::Arg::get_long)
        .filter(|l| *l != "help")
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn node() -> Command {
        Command::new("node")
            .arg(Arg::new("keepalive").long("keepalive").default_value("15"))
            .arg(Arg::new("peers").long("peer").action(ArgAction::Append))
            .arg(
                Arg::new("no_mdns")
                    .long("no-mdns")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("api").long("api"))
            .arg(
                Arg::new("relation")
                    .long("relation")
                    .action(ArgAction::Append),
            )
            .arg(
                Arg::new("no_api")
                    .long("no-api")
                    .action(ArgAction::SetTrue)
                    .conflicts_with("api"),
            )
    }

    fn load_text(text: &str, argv: &[&str]) -> Result<Option<Loaded>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join(CONFIG_FILE);
        std::fs::write(&path, text)?;
        let cmd = node();
        let m = cmd.clone().try_get_matches_from(argv)?;
        load(&path, &cmd, &m)
    }

    #[test]
    fn keys_become_flags_unless_given_on_the_command_line() {
        let l = load_text(
            "keepalive = 5\npeer = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\nno-mdns = true\nno-api = true\n",
            &["node", "--api", "127.0.0.1:0"],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            l.args,
            [
                "--keepalive=5",
                "--no-mdns",
                "--peer=127.0.0.1:1",
                "--peer=127.0.0.1:2"
            ]
        );
        assert_eq!(l.overridden, ["no-api"]);
        let l = load_text("keepalive = 5\n", &["node", "--keepalive", "3"])
            .unwrap()
            .unwrap();
        assert!(l.args.is_empty());
        assert_eq!(l.overridden, ["keepalive"]);
    }

    #[test]
    fn the_relationships_table_becomes_relation_flags_unless_given() {
        let p = "8P17RLZyXFYbqozmiDqiVnRLWmHWgBPxNYtmw3w95hmm";
        let text = format!("[relationships]\nfamily = [\"{p}\"]\nneighbours = [\"{p}\"]\n");
        let l = load_text(&text, &["node"]).unwrap().unwrap();
        assert_eq!(
            l.args,
            [
                format!("--relation={p}=family"),
                format!("--relation={p}=neighbour")
            ]
        );
        let l = load_text(&text, &["node", "--relation", "x=family"])
            .unwrap()
            .unwrap();
        assert!(l.args.is_empty());
        assert_eq!(l.overridden, [RELATIONSHIPS]);
        for bad in [
            "relationships = 3\n",
            "[relationships]\nfriends = [\"x\"]\n",
            "[relationships]\nown-device = [\"x\"]\n",
            "[relationships]\nfamily = \"x\"\n",
            "[relationships]\nfamily = [1]\n",
        ] {
            let e = format!("{:#}", load_text(bad, &["node"]).unwrap_err());
            assert!(
                e.contains("[relationships]") && e.contains(CONFIG_FILE),
                "{e}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_wrong_shapes_name_the_key_and_the_file() {
        let e = format!("{:#}", load_text("keepalve = 5\n", &["node"]).unwrap_err());
        assert!(e.contains("\"keepalve\"") && e.contains(CONFIG_FILE), "{e}");
        assert!(e.contains("keepalive"), "lists the keys: {e}");
        let e = format!(
            "{:#}",
            load_text("keepalive = [1, 2]\n", &["node"]).unwrap_err()
        );
        assert!(
            e.contains("\"keepalive\"") && e.contains("one value"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            load_text("no-mdns = \"yes\"\n", &["node"]).unwrap_err()
        );
        assert!(
            e.contains("\"no-mdns\"") && e.contains("true or false"),
            "{e}"
        );
        let e = format!("{:#}", load_text("keepalive = \n", &["node"]).unwrap_err());
        assert!(e.contains("not valid TOML"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let cmd = node();
        let m = cmd.clone().try_get_matches_from(["node"]).unwrap();
        assert_eq!(load(&dir.path().join(CONFIG_FILE), &cmd, &m).unwrap(), None);
    }
}
