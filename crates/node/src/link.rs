//! `ecomesh link`: device linking through the control socket.
//!
//! `link new` asks the node for a one-time code ([`Node::link_new`]), prints
//! it (a [`Response::LinkCode`] stream item) and waits, at most `--wait`
//! seconds, until another device used it ([`Response::Linked`]) or it
//! expired. `link accept CODE` on the other device dials the address the
//! code carries over the wired transport, then runs the exchange
//! ([`Node::link_accept`]). `link list` shows the own devices and the user
//! label they share.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ecomesh_sync::{LinkCode, Node, OwnDevice};
use ecomesh_transport_wired::WiredTransport;
use serde::{Deserialize, Serialize};

use crate::control::{self, Request, Response};
use crate::paths::DataDir;

/// Longest code lifetime and longest wait a request may ask for: one day.
pub const MAX_LINK_WAIT: Duration = Duration::from_secs(24 * 3600);

/// `ecomesh link` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LinkCommand {
    /// Make a one-time code for another device of yours, print it, and wait
    /// until that device used it (`ecomesh link accept CODE` there).
    New {
        /// How long the code is accepted, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        ttl: u64,
        /// The lifetime in milliseconds instead (tests).
        #[arg(long, hide = true, value_name = "MS", conflicts_with = "ttl")]
        ttl_ms: Option<u64>,
        /// Longest wait for the other device, in seconds [default: the code's lifetime, plus 30 s].
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(0..=86_400))]
        wait: Option<u64>,
        /// The address to put in the code, where the other device dials this
        /// node [default: the wired transport's listen address, unless it is 0.0.0.0/::].
        #[arg(long, value_name = "HOST:PORT")]
        address: Option<SocketAddr>,
    },
    /// Link this node with the device that printed CODE.
    Accept {
        /// The code `ecomesh link new` printed on the other device.
        code: String,
        /// Longest wait for the other device, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
    },
    /// List this node's own devices.
    List,
}

/// One own device, as `link list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnDeviceRow {
    /// Its peer id.
    pub peer_id: String,
    /// When it was linked, Unix ms.
    pub linked_at_ms: u64,
    /// Whether it is reachable now.
    pub reachable: bool,
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `ecomesh link ...` on the CLI side.
pub fn link_command(data: &DataDir, cmd: LinkCommand, json_out: bool) -> Result<()> {
    let socket = data.checked_socket()?;
    match cmd {
        LinkCommand::New {
            ttl,
            ttl_ms,
            wait,
            address,
        } => {
            let ttl_ms = ttl_ms.unwrap_or(ttl.saturating_mul(1000)).max(1);
            let wait_ms = wait.map_or(ttl_ms.saturating_add(30_000), |w| w * 1000);
            let req = Request::LinkNew {
                ttl_ms,
                wait_ms,
                address: address.map(|a| a.to_string()),
            };
            let answer = control::call_stream(&socket, &req, |item| {
                if let Response::LinkCode {
                    code,
                    expires_in_ms,
                } = &item
                {
                    if json_out {
                        crate::output::line(serde_json::to_string(&item)?);
                    } else {
                        crate::output::line(format!(
                            "link code: {code}\n(valid {} s; on your other device run: ecomesh link accept {code})",
                            expires_in_ms / 1000
                        ));
                    }
                }
                Ok(())
            })?;
            print_linked(&answer, json_out)
        }
        LinkCommand::Accept { code, timeout } => {
            code.parse::<LinkCode>()?;
            let req = Request::LinkAccept {
                code,
                timeout_ms: timeout * 1000,
            };
            let answer = control::call_stream(&socket, &req, |_| Ok(()))?;
            print_linked(&answer, json_out)
        }
        LinkCommand::List => match control::call(&socket, &Request::LinkList)? {
            r @ Response::OwnDevices { .. } if json_out => {
                crate::output::line(serde_json::to_string_pretty(&r)?);
                Ok(())
            }
            Response::OwnDevices { user, devices } => {
                crate::output::line(format!(
                    "user: {}",
                    user.as_deref().unwrap_or("(not linked)")
                ));
                for d in devices {
                    let state = if d.reachable { "reachable" } else { "away" };
                    crate::output::line(format!("{}  {state}", d.peer_id));
                }
                Ok(())
            }
            other => bail!("the node answered something unexpected: {other:?}"),
        },
    }
}

fn print_linked(answer: &Response, json_out: bool) -> Result<()> {
    match answer {
        r @ Response::Linked { .. } if json_out => {
            crate::output::line(serde_json::to_string(r)?);
            Ok(())
        }
        Response::Linked { peer_id, user } => {
            crate::output::line(format!("linked with {peer_id} (own device of {user})"));
            Ok(())
        }
        other => bail!("the node answered something unexpected: {other:?}"),
    }
}

/// The address put in a new code: the one asked for, else the wired
/// transport's listen address when it is a specific one.
fn code_address(asked: Option<&str>, wired: Option<&WiredTransport>) -> Result<Option<SocketAddr>> {
    if let Some(a) = asked {
        return a
            .parse()
            .map(Some)
            .map_err(|e| anyhow!("address {a:?}: {e}"));
    }
    Ok(wired
        .and_then(WiredTransport::local_addr)
        .filter(|a| !a.ip().is_unspecified()))
}

fn linked(node: &Node, d: &OwnDevice) -> Response {
    Response::Linked {
        peer_id: d.peer_id.to_string(),
        user: node.user_label().unwrap_or_default(),
    }
}

/// `link new` on the node: the code as a stream item, then the outcome.
pub(crate) async fn serve_new<W>(
    node: &Node,
    wired: Option<&WiredTransport>,
    ttl_ms: u64,
    wait_ms: u64,
    address: Option<&str>,
    wr: &mut W,
) -> Result<Option<Response>>
where
    W: tokio::io::AsyncWrite + Unpin,
{
    let ttl = Duration::from_millis(ttl_ms.max(1)).min(MAX_LINK_WAIT);
    let wait = Duration::from_millis(wait_ms).min(MAX_LINK_WAIT);
    let address = code_address(address, wired)?;
    let code = node.link_new(address, ttl)?;
    let item = Response::LinkCode {
        code: code.to_string(),
        expires_in_ms: ms(ttl),
    };
    if crate::serve_stream::send_line(wr, &item).await.is_err() {
        return Ok(None);
    }
    let device = node
        .link_wait(&code, wait)
        .await
        .context("waiting for the other device")?;
    Ok(Some(linked(node, &device)))
}

/// `link accept` on the node.
pub(crate) async fn serve_accept(
    node: &Node,
    wired: Option<&WiredTransport>,
    code: &str,
    timeout_ms: u64,
) -> Result<Response> {
    let code: LinkCode = code.parse()?;
    let timeout = Duration::from_millis(timeout_ms).min(MAX_LINK_WAIT);
    if let (Some(addr), Some(w)) = (code.address(), wired) {
        let reached = tokio::time::timeout(timeout, w.dial(addr)).await;
        match reached {
            Ok(Ok(peer)) => tracing::info!(%addr, %peer, "dialled the device that made the code"),
            Ok(Err(e)) => tracing::warn!(%addr, error = %e, "dialling the code's address failed"),
            Err(_) => tracing::warn!(%addr, "dialling the code's address timed out"),
        }
    }
    let device = node.link_accept(&code, timeout).await?;
    Ok(linked(node, &device))
}

/// `link list` on the node.
pub(crate) fn serve_list(node: &Node) -> Response {
    let reachable: Vec<_> = node.peers().into_iter().map(|p| p.peer_id).collect();
    Response::OwnDevices {
        user: node.user_label(),
        devices: node
            .own_devices()
            .into_iter()
            .map(|d| OwnDeviceRow {
                peer_id: d.peer_id.to_string(),
                linked_at_ms: d.linked_at_ms,
                reachable: reachable.contains(&d.peer_id),
            })
            .collect(),
    }
}
