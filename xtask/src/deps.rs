//! `cargo xtask deps`: install what a fresh Debian machine lacks for `cargo xtask ci`.
//!
//! Two lists, each entry with the reason it is there: [`APT_PACKAGES`] (system
//! packages, installed with apt-get after `apt-get update`, only when one is
//! missing) and [`CARGO_TOOLS`] (cargo subcommands, `cargo install --locked`, only
//! when `cargo <sub> --version` fails). A crate that needs a system library adds
//! its `-dev` package to [`APT_PACKAGES`] with a probe that detects it.

use std::path::Path;

use anyhow::{Result, bail};

use crate::cmd::{Cmd, has_cargo_subcommand};

pub(crate) const HELP: &str = "\
cargo xtask deps [--dry-run]

Installs what `cargo xtask ci` needs and a fresh Debian machine lacks:
  - apt packages (listed in xtask/src/deps.rs with the reason for each), only when
    one is missing: `apt-get update` then `apt-get install -y --no-install-recommends`
    (through sudo when not root);
  - cargo tools cargo-deny, cargo-fuzz and cargo-nextest, each only when
    `cargo <tool> --version` fails: `cargo install --locked <crate>`;
  - the js-libp2p peer of the internet transport's interop test and @ipld/car
    for the CAR interop test of ecomesh-wire, each when its node_modules is
    missing: `npm ci` in crates/transport-internet/interop and crates/wire/interop
    (versions pinned by their package-lock.json).
Does nothing when everything is present. --dry-run only reports what is missing.";

/// The npm projects of the interop tests, with what each is for.
const INTEROP_DIRS: [(&str, &str); 2] = [
    (
        "crates/transport-internet/interop",
        "the js-libp2p peer of the internet transport's interop test",
    ),
    (
        "crates/wire/interop",
        "@ipld/car, the reference CAR implementation of ecomesh-wire's interop test",
    ),
];

/// How to tell whether an apt package's contents are present.
#[derive(Debug, Clone, Copy)]
enum Probe {
    /// A command on `PATH` that the package provides (any provider will do).
    Command(&'static str),
    /// A `pkg-config` module the package provides (for `-dev` packages).
    #[allow(dead_code)] // used once a transport needs a system library (e.g. dbus-1)
    PkgConfig(&'static str),
    /// A file the package installs (for packages without a command, e.g. Python
    /// modules of Debian's /usr/bin/python3).
    File(&'static str),
}

/// A Debian package `cargo xtask ci` needs.
#[derive(Debug, Clone, Copy)]
struct AptPackage {
    package: &'static str,
    probe: Probe,
    why: &'static str,
}

/// Debian packages, installed only when their probe fails. A crate that links a
/// system library adds its `-dev` package with a `PkgConfig` probe (the BLE backend
/// needs none: libdbus is built vendored; only its test stand-in needs packages).
const APT_PACKAGES: &[AptPackage] = &[
    AptPackage {
        package: "g++",
        probe: Probe::Command("c++"),
        why: "cargo-fuzz targets link libFuzzer, which libfuzzer-sys compiles from C++",
    },
    AptPackage {
        package: "npm",
        probe: Probe::Command("npm"),
        why: "installs the js-libp2p peer of the internet transport's interop test (with nodejs)",
    },
    AptPackage {
        package: "iproute2",
        probe: Probe::Command("ip"),
        why: "network tests run in namespaces they create (`ip netns`), e.g. the mDNS test",
    },
    AptPackage {
        package: "faketime",
        probe: Probe::Command("faketime"),
        why: "the node CLI test of a peer whose clock is 2 h off runs it under `faketime -f '+2h'`",
    },
    AptPackage {
        package: "curl",
        probe: Probe::Command("curl"),
        why: "the node's API tests, and the docs/api.md examples they run, call the API with curl",
    },
    AptPackage {
        package: "jq",
        probe: Probe::Command("jq"),
        why: "docs/api.md examples pick values (a version CID, a blob id) out of earlier answers",
    },
    AptPackage {
        package: "chromium",
        probe: Probe::Command("chromium"),
        why: "the headless browser the node's dashboard test (crates/node/tests/dashboard.rs) drives",
    },
    AptPackage {
        package: "chromium-driver",
        probe: Probe::Command("chromedriver"),
        why: "chromedriver: the WebDriver server through which the dashboard test drives chromium",
    },
    AptPackage {
        package: "dbus-daemon",
        probe: Probe::Command("dbus-daemon"),
        why: "the private bus of the stand-in BlueZ (crates/transport-ble/standin) in the BLE tests",
    },
    AptPackage {
        package: "python3-dbus",
        probe: Probe::File("/usr/lib/python3/dist-packages/dbus/__init__.py"),
        why: "the stand-in BlueZ of the BLE tests is a dbus-python service run by /usr/bin/python3",
    },
    AptPackage {
        package: "python3-gi",
        probe: Probe::File("/usr/lib/python3/dist-packages/gi/__init__.py"),
        why: "the GLib main loop of the stand-in BlueZ (crates/transport-ble/standin)",
    },
];

/// A cargo subcommand and the crate that provides it.
#[derive(Debug, Clone, Copy)]
struct CargoTool {
    subcommand: &'static str,
    krate: &'static str,
    why: &'static str,
}

const CARGO_TOOLS: &[CargoTool] = &[
    CargoTool {
        subcommand: "deny",
        krate: "cargo-deny",
        why: "advisories, bans, licenses and sources check in `cargo xtask ci`",
    },
    CargoTool {
        subcommand: "fuzz",
        krate: "cargo-fuzz",
        why: "`cargo xtask fuzz` and the fuzz step of `cargo xtask ci`",
    },
    CargoTool {
        subcommand: "nextest",
        krate: "cargo-nextest",
        why: "the test runner of `cargo xtask ci`; cargo test without it",
    },
];

fn is_present(probe: Probe) -> bool {
    match probe {
        Probe::Command(command) => Cmd::new("sh")
            .args(["-c", &format!("command -v {command}")])
            .succeeds_quietly(),
        Probe::PkgConfig(module) => Cmd::new("pkg-config")
            .args(["--exists", module])
            .succeeds_quietly(),
        Probe::File(path) => Path::new(path).exists(),
    }
}

fn is_root() -> bool {
    Cmd::new("id")
        .arg("-u")
        .read()
        .is_ok_and(|uid| uid.trim() == "0")
}

/// Installs the missing apt packages and cargo tools (or only reports them).
pub(crate) fn run(root: &Path, dry_run: bool) -> Result<()> {
    let missing_apt: Vec<&AptPackage> = APT_PACKAGES
        .iter()
        .filter(|p| !is_present(p.probe))
        .collect();
    let missing_tools: Vec<&CargoTool> = CARGO_TOOLS
        .iter()
        .filter(|t| !has_cargo_subcommand(t.subcommand))
        .collect();

    for p in APT_PACKAGES {
        let state = if missing_apt.iter().any(|m| m.package == p.package) {
            "missing"
        } else {
            "present"
        };
        println!("deps: apt   {:<14} {state:<8} {}", p.package, p.why);
    }
    for t in CARGO_TOOLS {
        let state = if missing_tools.iter().any(|m| m.krate == t.krate) {
            "missing"
        } else {
            "present"
        };
        println!("deps: cargo {:<14} {state:<8} {}", t.krate, t.why);
    }
    let mut missing_npm = Vec::new();
    for (dir, why) in INTEROP_DIRS {
        let missing = !root.join(dir).join("node_modules").is_dir();
        let state = if missing { "missing" } else { "present" };
        println!("deps: npm   {:<14} {state:<8} {why} ({dir})", "interop");
        if missing {
            missing_npm.push(root.join(dir));
        }
    }
    if dry_run || (missing_apt.is_empty() && missing_tools.is_empty() && missing_npm.is_empty()) {
        return Ok(());
    }

    if !missing_apt.is_empty() {
        if !Cmd::new("apt-get").arg("--version").succeeds_quietly() {
            bail!(
                "missing system packages and no apt-get to install them: {}",
                missing_apt
                    .iter()
                    .map(|p| p.package)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        let apt = || {
            let cmd = if is_root() {
                Cmd::new("apt-get")
            } else {
                Cmd::new("sudo").arg("apt-get")
            };
            cmd.env("DEBIAN_FRONTEND", "noninteractive")
        };
        apt().arg("update").run()?;
        apt()
            .args(["install", "-y", "--no-install-recommends"])
            .args(missing_apt.iter().map(|p| p.package))
            .run()?;
    }
    for tool in missing_tools {
        Cmd::cargo()
            .args(["install", "--locked", tool.krate])
            .current_dir(root)
            .run()?;
    }
    for interop in missing_npm {
        Cmd::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&interop)
            .run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_detect_present_and_absent_commands() {
        assert!(is_present(Probe::Command("sh")));
        assert!(!is_present(Probe::Command("ecomesh-no-such-command")));
        assert!(!is_present(Probe::PkgConfig("ecomesh-no-such-module")));
    }
}
