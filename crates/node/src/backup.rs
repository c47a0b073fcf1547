//! `ecomesh identity export` and `ecomesh identity import`: the node's identity
//! carried to a new device under a passphrase ([`ecomesh_identity::backup`]:
//! Argon2id and XChaCha20-Poly1305), so a lost device does not lose the user.
//!
//! The file is text: the 134-byte backup in base64 between armour lines, short
//! enough to print on paper. Import takes that text (or the raw bytes) and
//! writes the identity into a data directory that has none, or, with
//! `--force`, replaces one after moving it aside. Both work without a running
//! node; import refuses while one runs on the directory.

use std::fs::{self, OpenOptions};
use std::io::{IsTerminal, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use ecomesh_identity::Identity;
use ecomesh_identity::backup::{self, BackupParams};
use zeroize::Zeroizing;

use crate::paths::DataDir;

const BEGIN: &str = "-----BEGIN ECOMESH IDENTITY BACKUP-----";
const END: &str = "-----END ECOMESH IDENTITY BACKUP-----";
/// Largest backup file read: the armoured form is about 250 bytes.
const MAX_FILE: u64 = 4096;
/// The environment variable a script passes the passphrase in.
pub const PASSPHRASE_ENV: &str = "ECOMESH_PASSPHRASE";

/// `ecomesh identity ...`.
#[derive(Debug, Subcommand)]
pub enum IdentityCommand {
    /// Write the identity, encrypted under a passphrase, to a backup file.
    Export(ExportArgs),
    /// Restore an identity from a backup file into the data directory.
    Import(ImportArgs),
}

/// Where the passphrase comes from: a file, `$ECOMESH_PASSPHRASE`, or a prompt.
#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// Read the passphrase from the first line of this file instead of asking
    /// (or of $ECOMESH_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// `ecomesh identity export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The backup file to write (mode 0600; refused if it exists unless --force).
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
    /// Overwrite an existing file.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
    /// Argon2id memory in MiB: what each guess at the passphrase costs.
    #[arg(long, value_name = "MIB", default_value_t = 64)]
    memory_mib: u32,
}

/// `ecomesh identity import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The backup file written by `ecomesh identity export`.
    file: PathBuf,
    /// Replace an existing, different identity (it is kept beside as
    /// `identity.key.replaced-<unix seconds>`).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    passphrase: PassphraseArgs,
}

/// Runs an `identity` subcommand; prints what it did (JSON with `json`).
pub fn command(data: &DataDir, command: IdentityCommand, json: bool) -> Result<()> {
    match command {
        IdentityCommand::Export(a) => export(data, a, json),
        IdentityCommand::Import(a) => import(data, a, json),
    }
}

fn passphrase(args: &PassphraseArgs, confirm: bool) -> Result<Zeroizing<String>> {
    if let Some(path) = &args.passphrase_file {
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .with_context(|| format!("reading the passphrase from {}", path.display()))?,
        );
        return Ok(Zeroizing::new(
            text.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Zeroizing::new(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "no passphrase: give --passphrase-file FILE or set {PASSPHRASE_ENV} \
             (standard input is not a terminal to ask on)"
        );
    }
    let first = Zeroizing::new(
        rpassword::prompt_password("backup passphrase: ").context("reading the passphrase")?,
    );
    if confirm {
        let again = Zeroizing::new(
            rpassword::prompt_password("the same passphrase again: ")
                .context("reading the passphrase")?,
        );
        if *again != *first {
            bail!("the two passphrases differ; nothing was written");
        }
    }
    Ok(first)
}

fn export(data: &DataDir, a: ExportArgs, json: bool) -> Result<()> {
    let id_path = data.identity();
    let identity = Identity::load(&id_path)
        .with_context(|| format!("loading the identity at {}", id_path.display()))?;
    let pass = passphrase(&a.passphrase, true)?;
    let params = BackupParams::new(
        a.memory_mib.saturating_mul(1024),
        BackupParams::RECOMMENDED.t_cost,
        BackupParams::RECOMMENDED.p_cost,
    );
    let bytes =
        backup::export(&identity, pass.as_bytes(), params).context("encrypting the identity")?;
    let text = armour(&bytes);
    let mut file = OpenOptions::new()
        .write(true)
        .mode(0o600)
        .create_new(!a.force)
        .create(true)
        .truncate(true)
        .open(&a.out)
        .with_context(|| {
            format!(
                "creating {} (an existing file is kept: pass --force to overwrite it)",
                a.out.display()
            )
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", a.out.display()))?;
    let peer = identity.peer_id().to_string();
    if json {
        crate::output::line(serde_json::json!({
            "peer_id": peer,
            "file": a.out,
            "memory_mib": a.memory_mib,
        }));
    } else {
        crate::output::line(format!(
            "wrote the identity {peer} to {} (encrypted; keep the passphrase apart from it)",
            a.out.display()
        ));
    }
    Ok(())
}

fn import(data: &DataDir, a: ImportArgs, json: bool) -> Result<()> {
    let bytes = read_backup(&a.file)?;
    let params = backup::params_of(&bytes)
        .with_context(|| format!("{} is not an ecomesh identity backup", a.file.display()))?;
    tracing::debug!(?params, "backup cost parameters");
    if std::os::unix::net::UnixStream::connect(data.socket()).is_ok() {
        bail!(
            "a node is running on {}: stop it before importing an identity",
            data.root().display()
        );
    }
    let pass = passphrase(&a.passphrase, false)?;
    let identity = backup::import(&bytes, pass.as_bytes()).map_err(|e| match e {
        ecomesh_identity::Error::DecryptFailed => {
            anyhow!("wrong passphrase, or the backup file was altered")
        }
        other => anyhow!(other),
    })?;
    let peer = identity.peer_id();
    let path = data.identity();
    let mut replaced = None;
    if path.exists() {
        let existing = Identity::load(&path).map(|i| i.peer_id()).ok();
        if existing == Some(peer) {
            report(
                json,
                &peer.to_string(),
                None,
                "already this data directory's identity",
            );
            return Ok(());
        }
        if !a.force {
            bail!(
                "{} already holds another identity ({}); pass --force to replace it \
                 (the old key is kept beside it)",
                data.root().display(),
                existing.map_or_else(|| "unreadable".to_owned(), |p| p.to_string())
            );
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = path.with_file_name(format!("identity.key.replaced-{secs}"));
        fs::rename(&path, &aside)
            .with_context(|| format!("moving the old identity to {}", aside.display()))?;
        replaced = Some(aside);
    }
    data.create()?;
    identity
        .save(&path)
        .with_context(|| format!("saving the identity to {}", path.display()))?;
    report(json, &peer.to_string(), replaced.as_deref(), "restored");
    Ok(())
}

fn report(json: bool, peer: &str, replaced: Option<&Path>, what: &str) {
    if json {
        crate::output::line(serde_json::json!({
            "peer_id": peer,
            "result": what,
            "replaced": replaced,
        }));
    } else {
        crate::output::line(format!("identity {peer}: {what}"));
        if let Some(p) = replaced {
            crate::output::line(format!("the previous identity is kept at {}", p.display()));
        }
    }
}

/// The backup bytes as text: base64 in lines of 64 between the armour lines.
fn armour(bytes: &[u8]) -> String {
    let b64 = STANDARD.encode(bytes);
    let mut text = String::from(BEGIN);
    text.push('\n');
    for chunk in b64.as_bytes().chunks(64) {
        text.push_str(&String::from_utf8_lossy(chunk));
        text.push('\n');
    }
    text.push_str(END);
    text.push('\n');
    text
}

/// The backup bytes of a file in the armoured form, or raw.
fn read_backup(path: &Path) -> Result<Vec<u8>> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut raw = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading {}", path.display()))?;
    if raw.len() as u64 > MAX_FILE {
        bail!(
            "{} is larger than {MAX_FILE} bytes: not an identity backup",
            path.display()
        );
    }
    dearmour(&raw).with_context(|| format!("reading the backup in {}", path.display()))
}

fn dearmour(raw: &[u8]) -> Result<Vec<u8>> {
    let Ok(text) = std::str::from_utf8(raw) else {
        return Ok(raw.to_vec());
    };
    let Some(start) = text.find(BEGIN) else {
        return Ok(raw.to_vec());
    };
    let body = &text[start + BEGIN.len()..];
    let end = body
        .find(END)
        .ok_or_else(|| anyhow!("the backup has no end line ({END})"))?;
    let b64: String = body[..end].split_whitespace().collect();
    STANDARD
        .decode(b64)
        .map_err(|e| anyhow!("the backup's base64 is damaged: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn armour_round_trips_and_raw_bytes_pass_through() {
        let bytes: Vec<u8> = (0..=133).collect();
        let text = armour(&bytes);
        assert!(text.starts_with(BEGIN) && text.trim_end().ends_with(END));
        assert!(
            text.lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----"))
        );
        assert_eq!(dearmour(text.as_bytes()).unwrap(), bytes);
        assert_eq!(dearmour(&bytes).unwrap(), bytes);
        let cut = &text[..text.len() - END.len() - 2];
        assert!(dearmour(cut.as_bytes()).is_err());
        let mut lines: Vec<&str> = text.lines().collect();
        let damaged = format!("*{}", &lines[1][1..]);
        lines[1] = &damaged;
        assert!(dearmour(lines.join("\n").as_bytes()).is_err());
    }
}
