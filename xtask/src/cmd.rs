//! Echo-and-run helper for external commands.
//!
//! Every command xtask runs goes through [`Cmd`], which prints it (`$ cargo ...`,
//! with any environment it sets) before running it, so a log shows exactly what
//! to re-run by hand.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use anyhow::{Context, Result, bail};

/// A command line to run: program, arguments, extra environment, working directory.
#[derive(Debug, Clone)]
pub(crate) struct Cmd {
    program: OsString,
    /// What the echo shows for the program (`cargo` rather than the toolchain path in `$CARGO`).
    shown_as: String,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    removed_envs: Vec<OsString>,
    dir: Option<PathBuf>,
}

impl Cmd {
    /// A command running `program`, found on `PATH`.
    pub(crate) fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_os_string();
        Self {
            shown_as: program.to_string_lossy().into_owned(),
            program,
            args: Vec::new(),
            envs: Vec::new(),
            removed_envs: Vec::new(),
            dir: None,
        }
    }

    /// A `cargo` command using the same cargo that runs xtask (`$CARGO`), so the
    /// pinned toolchain is used throughout.
    pub(crate) fn cargo() -> Self {
        let program = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
        Self {
            shown_as: "cargo".to_owned(),
            ..Self::new(program)
        }
    }

    /// Appends one argument.
    pub(crate) fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends several arguments.
    pub(crate) fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Sets an environment variable for the child.
    pub(crate) fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_os_string(), value.as_ref().to_os_string()));
        self
    }

    /// Removes an inherited environment variable from the child's environment.
    pub(crate) fn env_remove(mut self, key: impl AsRef<OsStr>) -> Self {
        self.removed_envs.push(key.as_ref().to_os_string());
        self
    }

    /// Runs the child in `dir` instead of the current directory.
    pub(crate) fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_path_buf());
        self
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.args);
        for key in &self.removed_envs {
            command.env_remove(key);
        }
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    /// Echoes the command, runs it with inherited stdio and returns its exit status.
    pub(crate) fn status(&self) -> Result<ExitStatus> {
        println!("$ {self}");
        self.command()
            .status()
            .with_context(|| format!("could not start `{self}`"))
    }

    /// Echoes and runs the command; a non-zero exit is an error naming the command.
    pub(crate) fn run(&self) -> Result<()> {
        let status = self.status()?;
        if !status.success() {
            bail!("`{self}` failed ({status})");
        }
        Ok(())
    }

    /// Runs the command without echo, capturing stdout (stderr is inherited);
    /// a non-zero exit is an error naming the command.
    pub(crate) fn read(&self) -> Result<String> {
        let output = self
            .command()
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("could not start `{self}`"))?;
        if !output.status.success() {
            bail!("`{self}` failed ({})", output.status);
        }
        String::from_utf8(output.stdout).with_context(|| format!("`{self}` printed non-UTF-8"))
    }

    /// Like [`read`](Self::read), but stderr is discarded too: for probes whose
    /// failure the caller handles.
    pub(crate) fn read_quietly(&self) -> Result<String> {
        let output = self
            .command()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .with_context(|| format!("could not start `{self}`"))?;
        if !output.status.success() {
            bail!("`{self}` failed ({})", output.status);
        }
        String::from_utf8(output.stdout).with_context(|| format!("`{self}` printed non-UTF-8"))
    }

    /// Runs the command silently and says whether it exited successfully; used to
    /// probe for installed tools.
    pub(crate) fn succeeds_quietly(&self) -> bool {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Quotes `word` for a POSIX shell when it needs it, so echoed commands can be pasted.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%^".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(dir) = &self.dir {
            write!(f, "(cd {} && ", shell_quote(&dir.to_string_lossy()))?;
        }
        for (key, value) in &self.envs {
            write!(
                f,
                "{}={} ",
                key.to_string_lossy(),
                shell_quote(&value.to_string_lossy())
            )?;
        }
        f.write_str(&self.shown_as)?;
        for arg in &self.args {
            write!(f, " {}", shell_quote(&arg.to_string_lossy()))?;
        }
        if self.dir.is_some() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Says whether `cargo <subcommand>` is installed (probed with `--version`).
pub(crate) fn has_cargo_subcommand(subcommand: &str) -> bool {
    Cmd::cargo()
        .args([subcommand, "--version"])
        .succeeds_quietly()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_quotes_only_what_a_shell_would_split() {
        let cmd = Cmd::new("cargo").env("RUSTDOCFLAGS", "-D warnings").args([
            "nextest",
            "run",
            "-E",
            "test(prop_)",
            "it's",
        ]);
        assert_eq!(
            cmd.to_string(),
            r"RUSTDOCFLAGS='-D warnings' cargo nextest run -E 'test(prop_)' 'it'\''s'"
        );
    }

    #[test]
    fn echo_shows_working_directory() {
        let cmd = Cmd::new("git").arg("init").current_dir("/tmp/a b");
        assert_eq!(cmd.to_string(), "(cd '/tmp/a b' && git init)");
    }

    #[test]
    fn failing_command_is_an_error_naming_it() {
        let err = Cmd::new("false").run().unwrap_err().to_string();
        assert!(err.contains("`false` failed"), "{err}");
        assert!(!Cmd::new("false").succeeds_quietly());
        assert!(Cmd::new("true").succeeds_quietly());
    }

    #[test]
    fn read_captures_stdout() {
        let out = Cmd::new("sh").args(["-c", "echo hello"]).read().unwrap();
        assert_eq!(out, "hello\n");
    }
}
