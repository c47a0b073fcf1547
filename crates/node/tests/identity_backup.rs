//! `ecomesh identity export` / `import` through the CLI: the identity moves to a
//! fresh data directory under a passphrase; a wrong passphrase, a damaged file
//! and a directory holding another identity are refused with their reasons, and
//! `--force` keeps the replaced key beside the new one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::ok_json;

fn with_pass(data: &Path, pass: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecomesh"))
        .arg("--data")
        .arg(data)
        .arg("--json")
        .args(args)
        .env("ECOMESH_PASSPHRASE", pass)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn identity_moves_to_a_new_device_under_its_passphrase() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new, other) = (
        tmp.path().join("old"),
        tmp.path().join("new"),
        tmp.path().join("other"),
    );
    let peer = ok_json(&old, &["init"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let file = tmp.path().join("me.backup");
    let file_s = file.to_str().unwrap();
    let pass = "a long enough passphrase";

    let o = with_pass(
        &old,
        pass,
        &["identity", "export", "-o", file_s, "--memory-mib", "1"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("-----BEGIN ECOMESH IDENTITY BACKUP-----"),
        "{text}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    // A second export does not overwrite the file.
    let o = with_pass(
        &old,
        pass,
        &["identity", "export", "-o", file_s, "--memory-mib", "1"],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("--force"),
        "{}",
        stderr(&o)
    );

    // A wrong passphrase, and a damaged file, restore nothing.
    let o = with_pass(&new, "not the passphrase", &["identity", "import", file_s]);
    assert!(stderr(&o).contains("wrong passphrase"), "{}", stderr(&o));
    assert!(!new.join("identity.key").exists());
    let damaged = tmp.path().join("damaged.backup");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[2] = lines[2].chars().rev().collect();
    std::fs::write(&damaged, lines.join("\n")).unwrap();
    let o = with_pass(
        &new,
        pass,
        &["identity", "import", damaged.to_str().unwrap()],
    );
    assert!(!o.status.success(), "a damaged backup was accepted");
    assert!(!new.join("identity.key").exists());

    // The right passphrase restores the same identity on a fresh directory.
    let o = with_pass(&new, pass, &["identity", "import", file_s]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["peer_id"], peer.as_str());
    assert_eq!(v["result"], "restored");
    let o = with_pass(
        &new,
        pass,
        &[
            "identity",
            "export",
            "-o",
            tmp.path().join("again").to_str().unwrap(),
            "--memory-mib",
            "1",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["peer_id"],
        peer.as_str(),
        "the restored key is the exported one"
    );

    // A directory with another identity is kept unless --force, which keeps the old key aside.
    let other_peer = ok_json(&other, &["init"])["peer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let o = with_pass(&other, pass, &["identity", "import", file_s]);
    assert!(
        !o.status.success() && stderr(&o).contains(&other_peer),
        "{}",
        stderr(&o)
    );
    let o = with_pass(&other, pass, &["identity", "import", file_s, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["peer_id"], peer.as_str());
    let aside = Path::new(v["replaced"].as_str().unwrap());
    assert!(aside.exists());
    let kept = ecomesh_identity::Identity::load(aside).unwrap();
    assert_eq!(kept.peer_id().to_string(), other_peer);
}

#[test]
fn without_a_passphrase_source_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    ok_json(&d, &["init"]);
    let file = tmp.path().join("b");
    let o = Command::new(env!("CARGO_BIN_EXE_ecomesh"))
        .arg("--data")
        .arg(&d)
        .args(["identity", "export", "-o", file.to_str().unwrap()])
        .env_remove("ECOMESH_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--passphrase-file"), "{}", stderr(&o));
    assert!(!file.exists());
    let short = tmp.path().join("short");
    std::fs::write(&short, "short\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ecomesh"))
        .arg("--data")
        .arg(&d)
        .args([
            "identity",
            "export",
            "-o",
            file.to_str().unwrap(),
            "--passphrase-file",
        ])
        .arg(&short)
        .env_remove("ECOMESH_PASSPHRASE")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && stderr(&o).contains("8 bytes"),
        "{}",
        stderr(&o)
    );
}
