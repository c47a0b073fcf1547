//! Seed 004's ledger on two linked devices of one person.
//!
//! ```sh
//! cargo run -p ecomesh-sync --example ledger
//! ```
//!
//! Two embedded nodes (devices A and B) run a wired transport on loopback.
//! A makes a link code ([`Node::link_new`], with its address); B dials the
//! address in the code and accepts it ([`Node::link_accept`]): both are now
//! own devices of one user. The ledger is one document per user in the
//! `ledger` collection; every device keeps its own counters, `earned_<peer>`
//! and `spent_<peer>` (CRDT PN-counters, written with `increment`), and the
//! balance is the sum of earnings minus the sum of spendings over all
//! devices. Each device records some earnings and spendings at the same
//! time; the counters merge, and both must show the same balance.
//!
//! Then B sends A a **state request** (a sealed text), A answers only an own
//! device with its totals, and B waits for the answer at most the seed's
//! [`STATE_REQUEST_TIMEOUT`] (5 s). The example exits 0 when both devices
//! converged on the expected balance and the state answer agrees; otherwise
//! it prints what it was waiting for and exits 1 (also after 30 s in all).

// Printing what happens is this program's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_sync::{DEFAULT_LINK_TTL, Node, NodeConfig, PeerId, Trust, Value};
use ecomesh_transport_wired::{WiredConfig, WiredTransport};
use ecomesh_types::TransportAdapter;

/// The longest the whole example may take before it gives up.
const LIMIT: Duration = Duration::from_secs(30);
/// Seed 004: a peer's answer to a state request is awaited 5 s.
const STATE_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The ledger's collection.
const LEDGER: &str = "ledger";
const REQUEST: &str = "ledger-state-request:";
const ANSWER: &str = "ledger-state:";

type Error = Box<dyn std::error::Error>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let dirs = match (tempfile::tempdir(), tempfile::tempdir()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("ledger: could not create the data directories: {e}");
            return ExitCode::FAILURE;
        }
    };
    let step = Arc::new(std::sync::Mutex::new("starting the devices"));
    let result = tokio::time::timeout(LIMIT, run(dirs.0.path(), dirs.1.path(), step.clone())).await;
    let step = *step.lock().unwrap_or_else(|p| p.into_inner());
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("ledger: failed while {step}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("ledger: gave up after {} s while {step}", LIMIT.as_secs());
            ExitCode::FAILURE
        }
    }
}

type Step = Arc<std::sync::Mutex<&'static str>>;

fn set_step(step: &Step, now: &'static str) {
    *step.lock().unwrap_or_else(|p| p.into_inner()) = now;
}

/// One device's view of the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Totals {
    earned: i64,
    spent: i64,
}

impl Totals {
    fn balance(self) -> i64 {
        self.earned - self.spent
    }
}

/// The ledger document of this node's user.
fn ledger_doc(node: &Node) -> Result<ecomesh_sync::DocRef, Error> {
    let user = node.user_label().ok_or("the device is not linked")?;
    Ok(node.collection(LEDGER).doc(user.replace(':', "_")))
}

/// Earned and spent over every device's counters.
async fn totals(node: &Node) -> Result<Totals, Error> {
    let mut t = Totals {
        earned: 0,
        spent: 0,
    };
    if let Some(doc) = ledger_doc(node)?.get().await? {
        for (field, value) in &doc.fields {
            let Value::Integer(n) = value else { continue };
            if field.starts_with("earned_") {
                t.earned += n;
            } else if field.starts_with("spent_") {
                t.spent += n;
            }
        }
    }
    Ok(t)
}

/// Records an earning on this device's own counter.
async fn earn(node: &Node, amount: i64) -> Result<(), Error> {
    let field = format!("earned_{}", node.peer_id());
    ledger_doc(node)?.increment(field, amount).await?;
    Ok(())
}

/// Records a spending on this device's own counter.
async fn spend(node: &Node, amount: i64) -> Result<(), Error> {
    let field = format!("spent_{}", node.peer_id());
    ledger_doc(node)?.increment(field, amount).await?;
    Ok(())
}

async fn run(dir_a: &std::path::Path, dir_b: &std::path::Path, step: Step) -> Result<(), Error> {
    let (a, _wired_a, a_addr) = start_device("A", dir_a).await?;
    let (b, wired_b, _) = start_device("B", dir_b).await?;

    set_step(&step, "linking B to A with a code");
    let code = a.link_new(Some(a_addr), DEFAULT_LINK_TTL)?;
    println!("A's link code: {code}");
    let typed: ecomesh_sync::LinkCode = code.to_string().parse()?;
    let address = typed.address().ok_or("the code carries no address")?;
    wired_b.dial(address).await?;
    let (on_b, on_a) = tokio::join!(
        b.link_accept(&typed, Duration::from_secs(10)),
        a.link_wait(&code, Duration::from_secs(10)),
    );
    let (on_b, on_a) = (on_b?, on_a?);
    println!(
        "linked: B has A ({}) and A has B ({}) as own devices of {}",
        on_b.peer_id,
        on_a.peer_id,
        a.user_label().unwrap_or_default()
    );

    set_step(&step, "recording earnings and spendings on both devices");
    let (ra, rb) = tokio::join!(
        async {
            earn(&a, 50).await?;
            spend(&a, 15).await?;
            earn(&a, 20).await
        },
        async {
            earn(&b, 30).await?;
            spend(&b, 5).await?;
            spend(&b, 10).await
        },
    );
    ra?;
    rb?;
    let expected = Totals {
        earned: 100,
        spent: 30,
    };

    set_step(&step, "waiting for both devices to converge");
    let start = Instant::now();
    loop {
        let (ta, tb) = (totals(&a).await?, totals(&b).await?);
        if ta == expected && tb == expected {
            println!(
                "converged after {} ms: earned {}, spent {}, balance {} on both",
                start.elapsed().as_millis(),
                ta.earned,
                ta.spent,
                ta.balance()
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    set_step(&step, "asking A for its ledger state");
    let answer = state_request(&b, &a, a.peer_id()).await?;
    let mine = totals(&b).await?;
    if answer != mine {
        return Err(format!("A answered {answer:?}, B holds {mine:?}").into());
    }
    println!(
        "state request answered: A reports balance {}, as B computes",
        answer.balance()
    );

    set_step(&step, "shutting the devices down");
    a.shutdown().await?;
    b.shutdown().await?;
    println!("ok");
    Ok(())
}

/// Sends `to` a state request from `from` and waits up to
/// [`STATE_REQUEST_TIMEOUT`] for its answer, while `responder` (the device
/// `to`, run in this process) answers requests of own devices.
async fn state_request(from: &Node, responder: &Node, to: PeerId) -> Result<Totals, Error> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(|e| format!("no randomness: {e}"))?;
    let nonce = format!("{:016x}", u64::from_le_bytes(random));
    from.send_text(to, format!("{REQUEST}{nonce}")).await?;
    let deadline = Instant::now() + STATE_REQUEST_TIMEOUT;
    loop {
        answer_requests(responder).await?;
        for t in from.inbox()? {
            if let Some(rest) = t.text.strip_prefix(&format!("{ANSWER}{nonce}:")) {
                let mut parts = rest.split(':').map(str::parse::<i64>);
                if let (Some(Ok(earned)), Some(Ok(spent))) = (parts.next(), parts.next()) {
                    return Ok(Totals { earned, spent });
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no state answer within {} s (seed 004's timeout)",
                STATE_REQUEST_TIMEOUT.as_secs()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Answers every state request in `node`'s inbox that came from one of its
/// own devices and was not answered yet; requests from others are ignored.
async fn answer_requests(node: &Node) -> Result<(), Error> {
    let answered: Vec<String> = node.outbox()?.into_iter().map(|t| t.text).collect();
    for t in node.inbox()? {
        let Some(nonce) = t.text.strip_prefix(REQUEST) else {
            continue;
        };
        let Ok(sender) = t.from.parse::<PeerId>() else {
            continue;
        };
        if node.relationship(&sender) != Trust::OwnDevice {
            continue;
        }
        let prefix = format!("{ANSWER}{nonce}:");
        if answered.iter().any(|a| a.starts_with(&prefix)) {
            continue;
        }
        let totals = totals(node).await?;
        node.send_text(
            sender,
            format!("{prefix}{}:{}", totals.earned, totals.spent),
        )
        .await?;
    }
    Ok(())
}

/// A device on `dir` with a wired transport listening on loopback (no mDNS).
async fn start_device(
    name: &str,
    dir: &std::path::Path,
) -> Result<(Node, WiredTransport, SocketAddr), Error> {
    let identity = Identity::generate()?;
    let wired = WiredTransport::new(
        identity.clone(),
        AccessPolicy::Open,
        WiredConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..WiredConfig::default()
        },
    );
    wired.start().await?;
    let addr = wired
        .local_addr()
        .ok_or("the wired transport has no listening address")?;
    let node = Node::builder(dir)
        .identity(identity)
        .transport(Arc::new(wired.clone()))
        .config(NodeConfig::default().with_tick(Duration::from_millis(50)))
        .start()
        .await?;
    println!("device {name}: {} listening on {addr}", node.peer_id());
    Ok((node, wired, addr))
}
