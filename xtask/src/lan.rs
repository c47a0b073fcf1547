//! `cargo xtask lan-test`: real `ecomesh node` processes on a virtual LAN of network namespaces.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::Cmd;
use crate::workspace::Metadata;

pub(crate) const HELP: &str = "\
cargo xtask lan-test [--nodes N] [--keep]

Builds the `ecomesh` binary and runs N (default 4) nodes, each in its own network
namespace, joined by veth pairs to a bridge that lives in a further namespace
(nothing is added to the host's own network). Checks, each under a deadline:
  1. every node discovers every other by mDNS (no addresses given);
  2. `ecomesh send` between every ordered pair arrives in the recipient's inbox
     and is acknowledged;
  3. with the last node's link down, a message to it is queued (store-and-forward)
     and arrives once the link is back up;
  4. a node killed with SIGKILL and restarted rejoins: it is rediscovered and
     sends and receives again;
  5. a document written on one node reaches every node;
  6. with the bridge cut into two halves, both halves write different and
     conflicting updates (field updates, a delete against an update); after
     healing, every node reports the same replicated root CID and holds the
     CRDT-merged documents.
Needs root and iproute2 (`cargo xtask deps` installs it); CI runs it as part of
`cargo xtask ci`. Namespaces and processes are removed however the test ends,
and leftovers of an interrupted earlier run are removed first. Node logs and
data directories are kept (and their path printed) when it fails, or always
with --keep.";

/// Prefix of every namespace this test creates; the owning pid follows it.
const PREFIX: &str = "ecomesh-lan-";
const DEADLINE: Duration = Duration::from_secs(90);

/// Everything the test created; removed on drop.
struct Lan {
    tag: String,
    hub: String,
    names: Vec<String>,
    nodes: Vec<NodeProc>,
    dir: PathBuf,
    keep: bool,
    passed: bool,
}

struct NodeProc {
    ns: String,
    data: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    peer_id: String,
}

fn ip(args: &[&str]) -> Result<()> {
    Cmd::new("ip").args(args).run()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes namespaces left by runs whose process is gone.
fn remove_leftovers() -> Result<()> {
    let list = Cmd::new("ip").args(["netns", "list"]).read()?;
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !pid_alive(p)) {
            println!("removing leftover namespace {name}");
            let _ = Command::new("ip").args(["netns", "delete", name]).status();
        }
    }
    Ok(())
}

impl Lan {
    fn create(n: usize, dir: PathBuf, keep: bool) -> Result<Lan> {
        let tag = format!("{PREFIX}{}", std::process::id());
        let mut lan = Lan {
            hub: format!("{tag}-hub"),
            names: Vec::new(),
            nodes: Vec::new(),
            tag,
            dir,
            keep,
            passed: false,
        };
        ip(&["netns", "add", &lan.hub])?;
        lan.names.push(lan.hub.clone());
        ip(&["-n", &lan.hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lan.hub, "link", "set", "br0", "up"])?;
        for i in 0..n {
            let ns = format!("{}-n{i}", lan.tag);
            ip(&["netns", "add", &ns])?;
            lan.names.push(ns.clone());
            let hub_end = format!("vh{i}");
            ip(&[
                "-n", &lan.hub, "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            ip(&["-n", &lan.hub, "link", "set", &hub_end, "master", "br0"])?;
            ip(&["-n", &lan.hub, "link", "set", &hub_end, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let addr = format!("10.77.0.{}/24", i + 1);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            lan.nodes.push(NodeProc {
                data: lan.dir.join(format!("n{i}")),
                log: lan.dir.join(format!("n{i}.log")),
                ns,
                child: None,
                peer_id: String::new(),
            });
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        for ns in self.names.iter().rev() {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
        if self.passed && !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            for n in &self.nodes {
                let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                println!("\n----- last lines of {} -----", n.log.display());
                for l in tail.iter().rev() {
                    println!("{l}");
                }
            }
            println!("\nlan-test files kept in {}", self.dir.display());
        }
    }
}

impl NodeProc {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn start(&mut self, bin: &Path) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin)
            .arg("--data")
            .arg(&self.data)
            .args(["node", "--keepalive", "2", "--redial-max", "2"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting ecomesh node")?;
        self.child = Some(child);
        Ok(())
    }

    fn cli(&self, bin: &Path, args: &[&str]) -> Result<Value> {
        let out = Command::new(bin)
            .arg("--data")
            .arg(&self.data)
            .arg("--json")
            .args(args)
            .output()
            .context("running the ecomesh CLI")?;
        if !out.status.success() {
            bail!(
                "ecomesh {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("the CLI printed invalid JSON")
    }

    fn peers(&self, bin: &Path) -> Result<Vec<String>> {
        let v = self.cli(bin, &["peers"])?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["peer_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    fn inbox(&self, bin: &Path) -> Result<Vec<(String, String)>> {
        let v = self.cli(bin, &["inbox"])?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|m| {
                        (
                            m["from"].as_str().unwrap_or_default().to_owned(),
                            m["text"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    fn outbox_status(&self, bin: &Path, id: &str) -> Result<String> {
        let v = self.cli(bin, &["outbox"])?;
        Ok(v.as_array()
            .and_then(|a| a.iter().find(|m| m["id"] == id))
            .and_then(|m| m["status"].as_str())
            .unwrap_or_default()
            .to_owned())
    }
}

/// Polls `check` every 100 ms until it returns true; errors after [`DEADLINE`].
/// Errors from `check` (a node not answering yet) count as "not yet".
fn wait(what: &str, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let start = Instant::now();
    let mut last = None;
    loop {
        match check() {
            Ok(true) => {
                println!("  ok: {what} ({:.1} s)", start.elapsed().as_secs_f64());
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => last = Some(e),
        }
        if start.elapsed() > DEADLINE {
            let why = last
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {DEADLINE:?} waiting for {what}{why}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn everyone_sees_everyone(lan: &Lan, bin: &Path) -> Result<bool> {
    for n in &lan.nodes {
        let peers = n.peers(bin)?;
        for other in &lan.nodes {
            if other.peer_id != n.peer_id && !peers.contains(&other.peer_id) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Runs the LAN test with `n` nodes.
pub(crate) fn run(metadata: &Metadata, n: usize, keep: bool) -> Result<()> {
    if n < 4 {
        bail!("--nodes must be at least 4 (got {n})");
    }
    if n > 200 {
        bail!("--nodes must be at most 200 (got {n}): the LAN is one /24");
    }
    let euid = Cmd::new("id").arg("-u").read()?;
    if euid.trim() != "0" {
        bail!(
            "lan-test creates network namespaces and needs root (run it as root, as CI does, \
             or leave it out locally with `cargo xtask ci --skip lan-test`)"
        );
    }
    if !Cmd::new("ip").arg("-V").succeeds_quietly() {
        bail!("lan-test needs `ip` from iproute2; run `cargo xtask deps`");
    }
    let root = metadata.root.as_path();
    Cmd::cargo()
        .current_dir(root)
        .args(["build", "-p", "ecomesh-node", "--bin", "ecomesh"])
        .run()?;
    let bin = metadata.target_dir.join("debug").join("ecomesh");
    remove_leftovers()?;
    let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!("lan-test: {n} nodes, files in {}", dir.display());
    let mut lan = Lan::create(n, dir, keep)?;
    let result = scenario(&mut lan, &bin).and_then(|()| partition(&mut lan, &bin));
    lan.passed = result.is_ok();
    drop(lan);
    result?;
    println!("lan-test: passed");
    Ok(())
}

fn scenario(lan: &mut Lan, bin: &Path) -> Result<()> {
    println!("\n== init and start {} nodes", lan.nodes.len());
    for node in &mut lan.nodes {
        let v = node.cli(bin, &["init"])?;
        node.peer_id = v["peer_id"].as_str().unwrap_or_default().to_owned();
        node.start(bin)?;
        println!("  {} in {}", node.peer_id, node.ns);
    }

    println!("\n== discovery by mDNS");
    wait("every node to see every other", || {
        everyone_sees_everyone(lan, bin)
    })?;

    println!("\n== send between every ordered pair");
    let mut expected: Vec<Vec<(String, String)>> = vec![Vec::new(); lan.nodes.len()];
    let mut sent_ids = Vec::new();
    for (i, from) in lan.nodes.iter().enumerate() {
        for (j, to) in lan.nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let text = format!("n{i} to n{j}");
            let r = from.cli(bin, &["send", &to.peer_id, &text])?;
            sent_ids.push((i, r["id"].as_str().unwrap_or_default().to_owned()));
            expected[j].push((from.peer_id.clone(), text));
        }
    }
    for (j, node) in lan.nodes.iter().enumerate() {
        let want = &expected[j];
        wait(&format!("n{j} to receive {} messages", want.len()), || {
            let got = node.inbox(bin)?;
            Ok(want.iter().all(|w| got.contains(w)) && got.len() == want.len())
        })?;
    }
    for (i, id) in &sent_ids {
        let node = &lan.nodes[*i];
        wait(&format!("the ACK of {id} at n{i}"), || {
            Ok(node.outbox_status(bin, id)? == "delivered")
        })?;
    }

    let last = lan.nodes.len() - 1;
    println!("\n== store-and-forward while n{last}'s link is down");
    ip(&["-n", &lan.nodes[last].ns, "link", "set", "eth0", "down"])?;
    let target = lan.nodes[last].peer_id.clone();
    wait(&format!("n0 to lose n{last}"), || {
        Ok(!lan.nodes[0].peers(bin)?.contains(&target))
    })?;
    let text = "sent while the link was down".to_owned();
    let r = lan.nodes[0].cli(bin, &["send", &target, &text])?;
    let id = r["id"].as_str().unwrap_or_default().to_owned();
    if r["outcome"] != "queued" {
        bail!("a message to an unreachable peer was not queued: {r}");
    }
    let buffered = lan.nodes[0].cli(bin, &["status"])?["buffered"].as_u64();
    if buffered.unwrap_or(0) < 1 {
        bail!("n0 reports nothing buffered after queueing a message");
    }
    if lan.nodes[last].inbox(bin)?.iter().any(|(_, t)| *t == text) {
        bail!("the message arrived while the link was down");
    }
    ip(&["-n", &lan.nodes[last].ns, "link", "set", "eth0", "up"])?;
    let from0 = lan.nodes[0].peer_id.clone();
    wait(&format!("the queued message at n{last}"), || {
        Ok(lan.nodes[last]
            .inbox(bin)?
            .contains(&(from0.clone(), text.clone())))
    })?;
    wait("its ACK at n0", || {
        Ok(lan.nodes[0].outbox_status(bin, &id)? == "delivered")
    })?;

    println!("\n== n1 is killed (SIGKILL) and restarted");
    lan.nodes[1].kill();
    let n1 = lan.nodes[1].peer_id.clone();
    wait("the others to lose n1", || {
        Ok(!lan.nodes[0].peers(bin)?.contains(&n1) && !lan.nodes[last].peers(bin)?.contains(&n1))
    })?;
    lan.nodes[1].start(bin)?;
    wait("n1 to rejoin everyone", || everyone_sees_everyone(lan, bin))?;
    for (from, to) in [(1, 0), (last, 1)] {
        let text = format!("after restart: n{from} to n{to}");
        let r = lan.nodes[from].cli(bin, &["send", &lan.nodes[to].peer_id, &text])?;
        let id = r["id"].as_str().unwrap_or_default().to_owned();
        let want = (lan.nodes[from].peer_id.clone(), text);
        wait(&format!("n{to} to receive n{from}'s message"), || {
            Ok(lan.nodes[to].inbox(bin)?.contains(&want))
        })?;
        wait("its ACK", || {
            Ok(lan.nodes[from].outbox_status(bin, &id)? == "delivered")
        })?;
    }
    Ok(())
}

fn docs(node: &NodeProc, bin: &Path, collection: &str) -> Result<Vec<(String, Value)>> {
    let v = node.cli(bin, &["doc", "list", collection])?;
    Ok(v["documents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| {
                    (
                        d["id"].as_str().unwrap_or_default().to_owned(),
                        d["fields"].clone(),
                    )
                })
                .collect()
        })
        .unwrap_or_default())
}

fn replicated_root(node: &NodeProc, bin: &Path) -> Result<String> {
    Ok(node.cli(bin, &["status"])?["replicated_root"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// Issue 6: cut the LAN in two halves, write different and conflicting
/// updates on both sides, heal, and check that every node converges to the
/// same replicated root and the CRDT-merged documents.
fn partition(lan: &mut Lan, bin: &Path) -> Result<()> {
    let n = lan.nodes.len();
    let half = n / 2;
    let (left, right) = (0, n - 1);
    println!("\n== replication: a document written on n0 reaches everyone");
    lan.nodes[left].cli(bin, &["doc", "put", "shared", "d1", r#"{"a":1}"#])?;
    lan.nodes[left].cli(bin, &["doc", "put", "shared", "d2", r#"{"keep":"old"}"#])?;
    for (i, node) in lan.nodes.iter().enumerate() {
        wait(&format!("n{i} to have shared/d1 and d2"), || {
            Ok(docs(node, bin, "shared")?.len() == 2)
        })?;
    }

    println!("\n== partition: n0..n{} | n{half}..n{}", half - 1, n - 1);
    let hub = lan.hub.clone();
    ip(&["-n", &hub, "link", "add", "br1", "type", "bridge"])?;
    ip(&["-n", &hub, "link", "set", "br1", "up"])?;
    for i in half..n {
        ip(&[
            "-n",
            &hub,
            "link",
            "set",
            &format!("vh{i}"),
            "master",
            "br1",
        ])?;
    }
    let ids: Vec<String> = lan.nodes.iter().map(|x| x.peer_id.clone()).collect();
    for i in 0..n {
        let others: Vec<&String> = if i < half {
            ids[half..].iter().collect()
        } else {
            ids[..half].iter().collect()
        };
        let node = &lan.nodes[i];
        wait(&format!("n{i} to lose the other half"), || {
            let peers = node.peers(bin)?;
            Ok(others.iter().all(|o| !peers.contains(o)))
        })?;
    }

    println!("\n== conflicting writes on both sides");
    // Left first, right a little later: the right's writes carry later HLC times.
    lan.nodes[left].cli(
        bin,
        &[
            "doc",
            "put",
            "shared",
            "d1",
            r#"{"x":"left","l":true}"#,
            "--merge",
        ],
    )?;
    lan.nodes[left].cli(
        bin,
        &["doc", "put", "shared", "only-left", r#"{"side":"left"}"#],
    )?;
    lan.nodes[left].cli(bin, &["doc", "delete", "shared", "d2"])?;
    std::thread::sleep(Duration::from_millis(50));
    lan.nodes[right].cli(
        bin,
        &[
            "doc",
            "put",
            "shared",
            "d1",
            r#"{"x":"right","r":true}"#,
            "--merge",
        ],
    )?;
    lan.nodes[right].cli(
        bin,
        &["doc", "put", "shared", "only-right", r#"{"side":"right"}"#],
    )?;
    lan.nodes[right].cli(
        bin,
        &["doc", "put", "shared", "d2", r#"{"z":1}"#, "--merge"],
    )?;
    let (rl, rr) = (
        replicated_root(&lan.nodes[left], bin)?,
        replicated_root(&lan.nodes[right], bin)?,
    );
    if rl == rr {
        bail!("the two halves report the same root after different writes");
    }

    println!("\n== heal");
    for i in half..n {
        ip(&[
            "-n",
            &hub,
            "link",
            "set",
            &format!("vh{i}"),
            "master",
            "br0",
        ])?;
    }
    wait("every node to report the same replicated root", || {
        let roots: Result<Vec<String>> =
            lan.nodes.iter().map(|x| replicated_root(x, bin)).collect();
        let roots = roots?;
        Ok(roots.iter().all(|r| !r.is_empty() && *r == roots[0]))
    })?;
    // CRDT rules: field-wise last writer wins (the right wrote x later); fields
    // written on one side only survive; a delete hides the writes before it and
    // the later write on the other side resurrects the document with only its
    // own fields.
    let want = serde_json::json!({
        "d1": {"a": 1, "x": "right", "l": true, "r": true},
        "d2": {"z": 1},
        "only-left": {"side": "left"},
        "only-right": {"side": "right"},
    });
    for (i, node) in lan.nodes.iter().enumerate() {
        let got: serde_json::Map<String, Value> = docs(node, bin, "shared")?.into_iter().collect();
        if Value::Object(got.clone()) != want {
            bail!(
                "n{i} holds {} after healing; expected {want}",
                Value::Object(got)
            );
        }
    }
    println!("  ok: every node holds the CRDT-merged documents");
    Ok(())
}
