//! A headless Chromium driven over WebDriver (the W3C protocol, spoken to
//! `chromedriver` on a loopback port it picks): finding the programs, one
//! driver process, browser sessions, screenshots, and the page's script
//! errors. Debian packages `chromium` and `chromium-driver`, installed by
//! `cargo xtask deps`.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

/// Longest answer read from chromedriver (a screenshot is a few MiB of base64).
const MAX_ANSWER: u64 = 64 << 20;
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The W3C key of an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The first of `names` found on `PATH`.
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// The chromium and chromedriver programs, or `None` when they are missing
/// and `ECOMESH_SKIP_BROWSER=1` excuses it (a line says the test skipped).
///
/// Panics, naming `cargo xtask deps`, when they are missing otherwise.
pub(crate) fn programs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let chromium = on_path(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = on_path(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        (c, d) => {
            let missing: Vec<&str> = [(c.is_none(), "chromium"), (d.is_none(), "chromedriver")]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, n)| *n)
                .collect();
            if std::env::var("ECOMESH_SKIP_BROWSER").as_deref() == Ok("1") {
                println!(
                    "{test}: SKIPPED (ECOMESH_SKIP_BROWSER=1): {} not on PATH",
                    missing.join(" and ")
                );
                return None;
            }
            panic!(
                "{test} needs {} on PATH: run `cargo xtask deps` (it installs the Debian \
                 packages chromium and chromium-driver; CI does), or set \
                 ECOMESH_SKIP_BROWSER=1 to skip this test",
                missing.join(" and ")
            );
        }
    }
}

/// The workspace's `target/` directory: `CARGO_TARGET_DIR` when absolute,
/// else three levels above this test binary (`target/debug/deps/`).
pub(crate) fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from)
        && dir.is_absolute()
    {
        return dir;
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("the test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// A running chromedriver; killed on drop.
pub(crate) struct Driver {
    child: Child,
    port: u16,
    chromium: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until it says which.
    pub(crate) fn start(chromium: &Path, chromedriver: &Path) -> Driver {
        let mut child = Command::new(chromedriver)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        // Reads every line so the pipe never fills; the first that names the port is sent.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
                let mut log = sink.lock().unwrap();
                if log.len() < 1 << 20 {
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(port) => port,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "chromedriver did not report its port within 30 s:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        Driver {
            child,
            port,
            chromium: chromium.to_path_buf(),
            log,
        }
    }

    /// One WebDriver command; the `value` of the answer, or the WebDriver
    /// error (`error` and `message`) when the status is not 200 (status 0:
    /// chromedriver could not be reached or answered garbage).
    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        let body = body.map(Value::to_string).unwrap_or_default();
        let (status, raw) = self.exchange(method, path, &body).map_err(|e| WdError {
            status: 0,
            error: "io".to_owned(),
            message: format!("{method} {path}: {e}"),
        })?;
        let answer: Value = serde_json::from_slice(&raw).map_err(|e| WdError {
            status,
            error: "not json".to_owned(),
            message: format!("{e}: {}", String::from_utf8_lossy(&raw)),
        })?;
        let value = answer.get("value").cloned().unwrap_or(Value::Null);
        if status == 200 {
            Ok(value)
        } else {
            Err(WdError {
                status,
                error: value["error"].as_str().unwrap_or("unknown").to_owned(),
                message: value["message"].as_str().unwrap_or("").to_owned(),
            })
        }
    }

    /// One HTTP/1.1 request to chromedriver: its status and body.
    fn exchange(&self, method: &str, path: &str, body: &str) -> std::io::Result<(u16, Vec<u8>)> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            self.port,
            body.len()
        )?;
        let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut reader = BufReader::new(stream.take(MAX_ANSWER));
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("status line {status_line:?}")))?;
        let mut length = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(bad("the headers end early".to_owned()));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse::<u64>().ok();
            }
        }
        let mut raw = Vec::new();
        match length {
            Some(n) if n <= MAX_ANSWER => {
                raw.resize(usize::try_from(n).map_err(|e| bad(e.to_string()))?, 0);
                reader.read_exact(&mut raw)?;
            }
            Some(n) => return Err(bad(format!("an answer of {n} bytes"))),
            None => {
                reader.read_to_end(&mut raw)?;
            }
        }
        Ok((status, raw))
    }

    /// A new browser: headless Chromium with its own profile, a tall window
    /// (the screenshots show every panel), no network beyond what pages ask
    /// for, and its console kept for [`Session::browser_log`].
    pub(crate) fn session(&self, name: &str) -> Session<'_> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": self.chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,1400", "--no-first-run", "--disable-extensions",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-default-apps", "--metrics-recording-only",
                ],
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let value = self
            .command("POST", "/session", Some(&caps))
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start chromium: {e}\n{}",
                    self.log.lock().unwrap()
                )
            });
        Session {
            driver: self,
            id: value["sessionId"].as_str().unwrap().to_owned(),
            name: name.to_owned(),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An error chromedriver answered.
#[derive(Debug)]
pub(crate) struct WdError {
    pub(crate) status: u16,
    pub(crate) error: String,
    pub(crate) message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.error, self.message)
    }
}

/// A browser entry of the console (`SEVERE`, `WARNING`, `INFO`...).
#[derive(Debug)]
pub(crate) struct LogEntry {
    pub(crate) level: String,
    pub(crate) source: String,
    pub(crate) message: String,
}

/// One browser window; closed on drop.
pub(crate) struct Session<'d> {
    driver: &'d Driver,
    id: String,
    /// Names the screenshot taken when a wait times out.
    name: String,
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, WdError> {
        self.driver
            .command(method, &format!("/session/{}{path}", self.id), body)
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        self.call(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Opens `url` and waits until the page has loaded.
    pub(crate) fn goto(&self, url: &str) {
        self.ok("POST", "/url", Some(&json!({ "url": url })));
    }

    /// The page's address now.
    pub(crate) fn url(&self) -> String {
        self.ok("GET", "/url", None).as_str().unwrap().to_owned()
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page
    /// and returns what it returns.
    pub(crate) fn execute(&self, script: &str, args: &[Value]) -> Value {
        self.ok(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": args })),
        )
    }

    /// The element that `css` selects, if any.
    pub(crate) fn find(&self, css: &str) -> Option<String> {
        match self.call(
            "POST",
            "/element",
            Some(&json!({"using": "css selector", "value": css})),
        ) {
            Ok(v) => Some(v[ELEMENT_KEY].as_str().unwrap().to_owned()),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("finding {css}: {e}"),
        }
    }

    fn element(&self, css: &str) -> String {
        self.find(css)
            .unwrap_or_else(|| panic!("the page has no {css}"))
    }

    /// Empties the field `css` and types `text` into it, as a person would.
    pub(crate) fn fill(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.ok("POST", &format!("/element/{e}/clear"), Some(&json!({})));
        self.ok(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Clicks the element `css`.
    pub(crate) fn click(&self, css: &str) {
        let e = self.element(css);
        self.ok("POST", &format!("/element/{e}/click"), Some(&json!({})));
    }

    /// Polls `script` until it returns something other than null/false,
    /// failing with `what` after `limit`; returns the value and the wait.
    pub(crate) fn wait_for_script(
        &self,
        limit: Duration,
        what: &str,
        script: &str,
        args: &[Value],
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let v = self.execute(script, args);
            if !v.is_null() && v != Value::Bool(false) {
                return (v, start.elapsed());
            }
            if start.elapsed() > limit {
                let errors = self.script_errors();
                let shot = target_dir()
                    .join("dashboard-screenshots")
                    .join(format!("{}-timeout.png", self.name));
                self.screenshot(&shot);
                panic!(
                    "timed out after {limit:?} waiting for {what} on {}; page errors {errors:?}; \
                     screenshot {}; page text:\n{}",
                    self.name,
                    shot.display(),
                    self.execute("return document.body.innerText", &[])
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// What the page's own collector (`window.__ecomeshErrors`, filled by
    /// `window.onerror`, `unhandledrejection` and CSP violation listeners)
    /// caught.
    pub(crate) fn script_errors(&self) -> Vec<String> {
        let v = self.execute("return window.__ecomeshErrors || null", &[]);
        match v {
            Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().unwrap_or_default().to_owned())
                .collect(),
            _ => vec!["the page's error collector (errors.js) is not installed".to_owned()],
        }
    }

    /// The browser console since the last call (chromedriver's log endpoint).
    pub(crate) fn browser_log(&self) -> Vec<LogEntry> {
        let v = self.ok("POST", "/se/log", Some(&json!({"type": "browser"})));
        v.as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| LogEntry {
                        level: e["level"].as_str().unwrap_or_default().to_owned(),
                        source: e["source"].as_str().unwrap_or_default().to_owned(),
                        message: e["message"].as_str().unwrap_or_default().to_owned(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes a PNG of the window to `path` (creating its directory).
    pub(crate) fn screenshot(&self, path: &Path) {
        let b64 = self.ok("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "the screenshot is not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", None);
    }
}
