//! The harness of the node's real-process tests: the `ecomesh` binary run on
//! loopback, driven through its CLI, waited on under deadlines, its log
//! printed when a test fails.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stderr
)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The wall clock in Unix milliseconds.
pub(crate) fn wall_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

/// The longest [`wait_for`] waits.
pub(crate) const DEADLINE: Duration = Duration::from_secs(60);

pub(crate) fn ecomesh(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ecomesh"))
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

pub(crate) fn ok_json(data: &Path, args: &[&str]) -> Value {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = ecomesh(data, &a);
    assert!(
        o.status.success(),
        "ecomesh {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

pub(crate) fn try_json(data: &Path, args: &[&str]) -> Option<Value> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = ecomesh(data, &a);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

/// Polls `f` until it returns `Some`, failing with `what` after [`DEADLINE`].
pub(crate) fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_within(DEADLINE, what, f).0
}

/// Polls `f` until it returns `Some`, failing with `what` after `limit`;
/// returns the value and how long it took.
pub(crate) fn wait_within<T>(
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An `ecomesh node` process over a data directory, its log kept in a file
/// (printed when the test fails).
pub(crate) struct Node {
    pub(crate) data: PathBuf,
    pub(crate) log: PathBuf,
    child: Option<Child>,
    runs: u32,
    /// The node runs under a wrapper (faketime) that forks it: signals go to
    /// the wrapper's child, the node itself.
    wrapped: bool,
    /// The `--api` address of the next start (`127.0.0.1:0` unless a test
    /// restarts a node where it was, as a primary must be).
    pub(crate) api: String,
}

impl Node {
    pub(crate) fn init(dir: &Path, name: &str) -> (Node, String) {
        let data = dir.join(name);
        let v = ok_json(&data, &["init"]);
        let id = v["peer_id"].as_str().unwrap().to_owned();
        (
            Node {
                log: dir.join(format!("{name}.log")),
                data,
                child: None,
                runs: 0,
                wrapped: false,
                api: "127.0.0.1:0".to_owned(),
            },
            id,
        )
    }

    /// A node over `dir/name` that nobody initialised: `ecomesh node` makes
    /// its data directory and identity on its first start.
    pub(crate) fn fresh(dir: &Path, name: &str) -> Node {
        Node {
            log: dir.join(format!("{name}.log")),
            data: dir.join(name),
            child: None,
            runs: 0,
            wrapped: false,
            api: "127.0.0.1:0".to_owned(),
        }
    }

    /// Starts `ecomesh node` and waits until its control socket answers; returns its
    /// wired address (empty when it runs no wired transport).
    pub(crate) fn start(&mut self, extra: &[&str]) -> String {
        self.start_with_env(extra, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub(crate) fn start_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> String {
        self.start_under(&[], extra, env)
    }

    /// [`start_with_env`](Self::start_with_env), the binary run by `wrapper`
    /// (a command and its arguments, e.g. `faketime -f +2h`) when not empty.
    pub(crate) fn start_under(
        &mut self,
        wrapper: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> String {
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        writeln!(&log, "---- run {} ----", self.runs).unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_ecomesh"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ecomesh")),
        };
        let child = command
            .arg("--data")
            .arg(&self.data)
            .args(["node", "--no-mdns", "--keepalive", "1", "--redial-max", "1"])
            .args(["--api", &self.api])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wrapped = !wrapper.is_empty();
        let data = self.data.clone();
        wait_for("the node's control socket", || {
            try_json(&data, &["status"]).map(|s| s["listen"].as_str().unwrap_or("").to_owned())
        })
    }

    /// [`start`](Self::start) inside the network namespace `ns` (`ip netns
    /// exec` execs the node itself, so signals reach it directly).
    #[allow(dead_code)]
    pub(crate) fn start_in_netns(&mut self, ns: &str, extra: &[&str]) -> String {
        let listen = self.start_under(&["ip", "netns", "exec", ns], extra, &[]);
        self.wrapped = false;
        listen
    }

    /// The running node's API address (`HOST:PORT`), from `api.addr`.
    pub(crate) fn api_addr(&self) -> String {
        let path = self.data.join("api.addr");
        wait_for("the node's api.addr", || {
            std::fs::read_to_string(&path)
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        })
    }

    /// The API's bearer token.
    pub(crate) fn api_token(&self) -> String {
        std::fs::read_to_string(self.data.join("api-token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The pid of the node process: the child, or the wrapper's child.
    fn node_pid(&self, child: &Child) -> String {
        let pid = child.id();
        if !self.wrapped {
            return pid.to_string();
        }
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("wrapper {pid} has no child"))
            .to_owned()
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.wrapped {
                let pid = self.node_pid(&c);
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub(crate) fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = self.node_pid(&c);
            assert!(
                Command::new("kill")
                    .args(["-TERM", &pid])
                    .status()
                    .unwrap()
                    .success()
            );
            let status = c.wait().unwrap();
            assert!(status.success(), "clean shutdown exits 0, got {status}");
        }
    }

    pub(crate) fn status(&self) -> Value {
        ok_json(&self.data, &["status"])
    }

    /// Peer ids reachable over `transport`.
    pub(crate) fn peers_on(&self, transport: &str) -> Vec<String> {
        ok_json(&self.data, &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["transports"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == transport))
            })
            .map(|p| p["peer_id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub(crate) fn doc_fields(&self, collection: &str, id: &str) -> Option<Value> {
        try_json(&self.data, &["doc", "get", collection, id])
            .map(|d| d["documents"][0]["fields"].clone())
    }

    pub(crate) fn peers(&self) -> Vec<String> {
        ok_json(&self.data, &["peers"])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["peer_id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub(crate) fn inbox_texts(&self) -> Vec<(String, String)> {
        ok_json(&self.data, &["inbox"])
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["from"].as_str().unwrap().to_owned(),
                    m["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    pub(crate) fn outbox_status(&self, id: &str) -> String {
        ok_json(&self.data, &["outbox"])
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .map(|m| m["status"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }
    /// The fields of `collection`/`id` as held locally (`doc list` never
    /// fetches from peers, unlike `doc get`).
    pub(crate) fn local_fields(&self, collection: &str, id: &str) -> Option<Value> {
        let listed = try_json(&self.data, &["doc", "list", collection])?;
        listed["documents"]
            .as_array()?
            .iter()
            .find(|d| d["id"] == id)
            .map(|d| d["fields"].clone())
    }

    /// The pid of the running node process (the wrapper's child when wrapped).
    pub(crate) fn pid(&self) -> Option<String> {
        self.child.as_ref().map(|c| self.node_pid(c))
    }

    /// Whether the node process is still running (it did not exit or crash).
    pub(crate) fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The log of the latest run.
    pub(crate) fn last_run_log(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let marker = format!("---- run {} ----", self.runs);
        log.rsplit_once(&marker)
            .map(|(_, run)| run.to_owned())
            .unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("===== log of {} =====\n{log}", self.data.display());
        }
    }
}

/// An HTTP answer as curl saw it.
#[allow(dead_code)]
pub(crate) struct Http {
    pub(crate) status: u16,
    pub(crate) body: String,
}

#[allow(dead_code)]
impl Http {
    /// The body as JSON (panics with the body when it is not).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Runs curl with `args` (plus `-s`, a 30 s limit, and the status code
/// appended) and returns the status and body.
#[allow(dead_code)]
pub(crate) fn curl(args: &[&str]) -> Http {
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (cargo xtask deps installs it)");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Http {
        status: code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {args:?} gave no status: {text:?} {}",
                String::from_utf8_lossy(&o.stderr)
            )
        }),
        body: body.to_owned(),
    }
}
