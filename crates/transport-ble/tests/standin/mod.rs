//! Starts the stand-in BlueZ (`crates/transport-ble/standin/bluez_standin.py`) for a
//! test and stops it when dropped. Needs Debian's python3-dbus, python3-gi and
//! dbus-daemon (`cargo xtask deps` installs them).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running stand-in BlueZ with its private bus.
pub(crate) struct Standin {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The bus address to give as `DBUS_SYSTEM_BUS_ADDRESS`.
    pub(crate) address: String,
}

/// The stand-in script (this file is shared by the tests of transport-ble and of the
/// node, both crates under `crates/`).
pub(crate) fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../transport-ble/standin/bluez_standin.py")
}

impl Standin {
    /// `adapters` stand-in adapters (`hci0`..), every pair in range except `out_of_range`.
    pub(crate) fn start(adapters: usize, out_of_range: &[(usize, usize)]) -> Standin {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script())
            .args(["--adapters", &adapters.to_string()]);
        for (a, b) in out_of_range {
            cmd.args(["--out-of-range", &format!("{a}-{b}")]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the stand-in BlueZ (/usr/bin/python3 with python3-dbus, python3-gi; cargo xtask deps)");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("stand-in BlueZ did not print its bus address within 20 s");
        let address = line
            .trim()
            .strip_prefix("DBUS_SYSTEM_BUS_ADDRESS=")
            .unwrap_or_else(|| panic!("stand-in BlueZ printed {line:?}"))
            .to_owned();
        Standin {
            child,
            stdin: Some(stdin),
            address,
        }
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        // Closing stdin ends it (it stops its dbus-daemon); kill if it lingers.
        drop(self.stdin.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
