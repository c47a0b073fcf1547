//! A small command-line parser: enough for `--name VALUE`, `--name=VALUE`,
//! flags, positionals and a trailing `-- ARGS...`, without a dependency.

use std::str::FromStr;

use anyhow::{Context, Result, bail};

/// The arguments of one subcommand; options are taken out as they are read and
/// [`Args::finish`] rejects whatever is left that looks like an option.
#[derive(Debug)]
pub(crate) struct Args {
    /// Arguments before `--`.
    args: Vec<String>,
    /// Arguments after `--`, passed through untouched.
    trailing: Vec<String>,
}

impl Args {
    /// Splits `args` at the first `--`.
    pub(crate) fn new(args: Vec<String>) -> Self {
        let mut args = args;
        let trailing = match args.iter().position(|a| a == "--") {
            Some(i) => {
                let rest = args.split_off(i);
                rest.into_iter().skip(1).collect()
            }
            None => Vec::new(),
        };
        Self { args, trailing }
    }

    /// Takes `-h`/`--help`; true when present.
    pub(crate) fn help(&mut self) -> bool {
        let before = self.args.len();
        self.args.retain(|a| a != "-h" && a != "--help");
        self.args.len() != before
    }

    /// Takes the flag `--name`; true when present.
    pub(crate) fn flag(&mut self, name: &str) -> bool {
        let long = format!("--{name}");
        let before = self.args.len();
        self.args.retain(|a| *a != long);
        self.args.len() != before
    }

    /// Takes every `--name VALUE` / `--name=VALUE`, in order.
    pub(crate) fn values(&mut self, name: &str) -> Result<Vec<String>> {
        let long = format!("--{name}");
        let prefix = format!("--{name}=");
        let mut found = Vec::new();
        let mut kept = Vec::new();
        let mut iter = std::mem::take(&mut self.args).into_iter();
        while let Some(arg) = iter.next() {
            if arg == long {
                match iter.next() {
                    Some(value) => found.push(value),
                    None => bail!("`{long}` needs a value"),
                }
            } else if let Some(value) = arg.strip_prefix(&prefix) {
                found.push(value.to_owned());
            } else {
                kept.push(arg);
            }
        }
        self.args = kept;
        Ok(found)
    }

    /// Takes `--name VALUE` given at most once, parsed as `T`.
    pub(crate) fn value<T>(&mut self, name: &str) -> Result<Option<T>>
    where
        T: FromStr,
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let mut values = self.values(name)?;
        if values.len() > 1 {
            bail!("`--{name}` given more than once");
        }
        values
            .pop()
            .map(|v| {
                v.parse::<T>()
                    .with_context(|| format!("`--{name} {v}`: not a valid value"))
            })
            .transpose()
    }

    /// Takes the arguments after `--`.
    pub(crate) fn trailing(&mut self) -> Vec<String> {
        std::mem::take(&mut self.trailing)
    }

    /// Returns the remaining positional arguments; an unknown option or an
    /// unconsumed `-- ...` is an error.
    pub(crate) fn finish(self) -> Result<Vec<String>> {
        if let Some(unknown) = self.args.iter().find(|a| a.starts_with('-')) {
            bail!("unknown option `{unknown}` (see --help)");
        }
        if !self.trailing.is_empty() {
            bail!(
                "this command takes no arguments after `--` (got `{}`)",
                self.trailing.join(" ")
            );
        }
        Ok(self.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::new(list.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn values_in_both_spellings_and_positionals() {
        let mut a = args(&[
            "--time",
            "5",
            "decode_value",
            "--skip=fuzz",
            "--skip",
            "doc",
        ]);
        assert_eq!(a.value::<u64>("time").unwrap(), Some(5));
        assert_eq!(a.values("skip").unwrap(), vec!["fuzz", "doc"]);
        assert_eq!(a.finish().unwrap(), vec!["decode_value"]);
    }

    #[test]
    fn trailing_arguments_pass_through_untouched() {
        let mut a = args(&["--cases", "10", "--", "--help", "-x"]);
        assert!(!a.help(), "--help after -- belongs to the child");
        assert_eq!(a.value::<u32>("cases").unwrap(), Some(10));
        assert_eq!(a.trailing(), vec!["--help", "-x"]);
        assert!(a.finish().unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_problem() {
        let err = args(&["--bogus"]).finish().unwrap_err().to_string();
        assert!(err.contains("--bogus"), "{err}");
        let err = args(&["--time"]).value::<u64>("time").unwrap_err();
        assert!(err.to_string().contains("needs a value"), "{err}");
        let err = args(&["--time", "soon"]).value::<u64>("time").unwrap_err();
        assert!(err.to_string().contains("--time soon"), "{err}");
        let err = args(&["--time=1", "--time=2"])
            .value::<u64>("time")
            .unwrap_err();
        assert!(err.to_string().contains("more than once"), "{err}");
        let err = args(&["--", "x"]).finish().unwrap_err();
        assert!(err.to_string().contains("after `--`"), "{err}");
    }

    #[test]
    fn flags_are_taken_wherever_they_are() {
        let mut a = args(&["--dry-run", "x"]);
        assert!(a.flag("dry-run"));
        assert!(!a.flag("dry-run"));
        assert_eq!(a.finish().unwrap(), vec!["x"]);
    }

    #[test]
    fn help_anywhere_before_dashdash() {
        let mut a = args(&["target", "-h"]);
        assert!(a.help());
        assert_eq!(a.finish().unwrap(), vec!["target"]);
    }
}
