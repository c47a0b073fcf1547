//! mDNS discovery (seed 3.2): announce and browse [`SERVICE_TYPE`] with `mdns-sd`.
//!
//! Each node registers one instance named by its base58 [`PeerId`] on its listening
//! port, with TXT properties ([`Announcement`]):
//! - `id`: the base58 peer id (checked against the instance name),
//! - `v`: the link protocol version ([`crate::PROTOCOL_VERSION`]),
//! - `c`: the collections it replicates, comma-separated,
//! - `n`: an announcement counter.
//!
//! It re-announces every [`ANNOUNCE_INTERVAL`] with `n` incremented, so every browser
//! sees a fresh resolution; [`PeerTable`] (sans-io) reports a peer lost when it
//! withdraws (mDNS goodbye) or stays silent for [`SILENCE_LIMIT`]. Of two nodes that
//! discover each other, the one with the smaller peer id dials, so they open one link.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ecomesh_types::{PeerId, TransportAdapter};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};

use crate::error::WiredError;
use crate::link::PROTOCOL_VERSION;
use crate::transport::WiredTransport;

/// The DNS-SD service type of ecomesh nodes.
pub const SERVICE_TYPE: &str = "_ecomesh._tcp.local.";
/// Time between announcements.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_secs(10);
/// A peer not heard from for this long is lost.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(35);
/// Most bytes of one TXT entry (`key=value`), as DNS allows.
pub const MAX_TXT_ENTRY: usize = 255;
/// Most peers tracked at once (untrusted announcements beyond are ignored).
pub const MAX_PEERS: usize = 1024;

/// What a node announces in its TXT record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcement {
    /// The announcing node.
    pub peer: PeerId,
    /// Its link protocol version.
    pub version: u8,
    /// The collections it replicates.
    pub collections: Vec<String>,
    /// Announcement counter (wraps).
    pub counter: u32,
}

impl Announcement {
    /// The TXT properties, or [`WiredError::Malformed`] if a collection name is empty or
    /// contains a comma, or the list does not fit one TXT entry.
    pub fn to_txt(&self) -> Result<Vec<(String, String)>, WiredError> {
        if self
            .collections
            .iter()
            .any(|c| c.is_empty() || c.contains(','))
        {
            return Err(WiredError::Malformed(
                "collection name empty or containing ','",
            ));
        }
        let c = self.collections.join(",");
        if c.len() + 2 > MAX_TXT_ENTRY {
            return Err(WiredError::Malformed(
                "collection list longer than one TXT entry",
            ));
        }
        Ok(vec![
            ("id".to_owned(), self.peer.to_base58()),
            ("v".to_owned(), self.version.to_string()),
            ("c".to_owned(), c),
            ("n".to_owned(), self.counter.to_string()),
        ])
    }

    /// Parses TXT properties looked up by key; unknown keys are ignored.
    pub fn from_txt<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<Self, WiredError> {
        let id = get("id").ok_or(WiredError::Malformed("TXT without id"))?;
        let peer: PeerId = id
            .parse()
            .map_err(|_| WiredError::Malformed("TXT id is not a peer id"))?;
        let version = get("v")
            .ok_or(WiredError::Malformed("TXT without v"))?
            .parse::<u8>()
            .map_err(|_| WiredError::Malformed("TXT v is not a version"))?;
        let collections = match get("c") {
            None | Some("") => Vec::new(),
            Some(c) if c.len() > MAX_TXT_ENTRY => {
                return Err(WiredError::Malformed("TXT c too long"));
            }
            Some(c) => c.split(',').map(str::to_owned).collect(),
        };
        let counter = get("n").and_then(|n| n.parse().ok()).unwrap_or(0);
        Ok(Announcement {
            peer,
            version,
            collections,
            counter,
        })
    }
}

/// A change in the set of discovered peers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryChange {
    /// A peer appeared, or its address changed.
    Found {
        /// The peer.
        peer: PeerId,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// A peer withdrew or went silent.
    Lost {
        /// The peer.
        peer: PeerId,
        /// Where it listened.
        addr: SocketAddr,
    },
}

#[derive(Clone, Debug)]
struct Seen {
    peer: PeerId,
    addr: SocketAddr,
    last_ms: u64,
}

/// Sans-io table of discovered peers, keyed by mDNS instance name; time passed in (ms).
#[derive(Debug, Default)]
pub struct PeerTable {
    by_name: HashMap<String, Seen>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of peers tracked.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Records a resolution of `name`; `Found` when it is new or moved.
    pub fn observe(
        &mut self,
        name: &str,
        peer: PeerId,
        addr: SocketAddr,
        now_ms: u64,
    ) -> Vec<DiscoveryChange> {
        let mut out = Vec::new();
        let full = self.by_name.len() >= MAX_PEERS;
        match self.by_name.get_mut(name) {
            Some(s) if s.peer == peer && s.addr == addr => s.last_ms = now_ms,
            Some(s) => {
                out.push(DiscoveryChange::Lost {
                    peer: s.peer,
                    addr: s.addr,
                });
                *s = Seen {
                    peer,
                    addr,
                    last_ms: now_ms,
                };
                out.push(DiscoveryChange::Found { peer, addr });
            }
            None if full => {}
            None => {
                self.by_name.insert(
                    name.to_owned(),
                    Seen {
                        peer,
                        addr,
                        last_ms: now_ms,
                    },
                );
                out.push(DiscoveryChange::Found { peer, addr });
            }
        }
        out
    }

    /// `name` withdrew.
    pub fn withdraw(&mut self, name: &str) -> Option<DiscoveryChange> {
        self.by_name.remove(name).map(|s| DiscoveryChange::Lost {
            peer: s.peer,
            addr: s.addr,
        })
    }

    /// Removes peers silent for `silence_ms` or more.
    pub fn expire(&mut self, now_ms: u64, silence_ms: u64) -> Vec<DiscoveryChange> {
        let mut lost = Vec::new();
        self.by_name.retain(|_, s| {
            let keep = now_ms.saturating_sub(s.last_ms) < silence_ms;
            if !keep {
                lost.push(DiscoveryChange::Lost {
                    peer: s.peer,
                    addr: s.addr,
                });
            }
            keep
        });
        lost
    }
}

/// Runs mDNS discovery for a started [`WiredTransport`] until dropped: announces it,
/// dials discovered peers whose id is larger than ours, forgets the addresses of lost ones.
pub struct MdnsDiscovery {
    daemon: ServiceDaemon,
    fullname: String,
    task: tokio::task::AbortHandle,
}

impl std::fmt::Debug for MdnsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MdnsDiscovery")
            .field("fullname", &self.fullname)
            .finish_non_exhaustive()
    }
}

impl MdnsDiscovery {
    /// Starts announcing `transport` with `collections`, and browsing for peers: on the
    /// interface of `ip` only (the loopback interface for a loopback address), or on every
    /// interface if `None`.
    pub fn start(
        transport: WiredTransport,
        ip: Option<IpAddr>,
        collections: Vec<String>,
    ) -> Result<Self, WiredError> {
        let port = transport
            .local_addr()
            .ok_or(WiredError::Malformed("transport not started"))?
            .port();
        let me = transport.peer_id();
        let mut ann = Announcement {
            peer: me,
            version: PROTOCOL_VERSION,
            collections,
            counter: 0,
        };
        let daemon = ServiceDaemon::new()?;
        if let Some(ip) = ip {
            daemon.disable_interface(IfKind::All)?;
            if ip.is_loopback() {
                daemon.enable_interface(if ip.is_ipv4() {
                    IfKind::LoopbackV4
                } else {
                    IfKind::LoopbackV6
                })?;
            } else {
                daemon.enable_interface(IfKind::Addr(ip))?;
            }
        }
        let name = me.to_base58();
        let host = format!("{name}.local.");
        let info = move |ann: &Announcement| -> Result<ServiceInfo, WiredError> {
            let props = ann.to_txt()?;
            let addrs: Vec<IpAddr> = ip.into_iter().collect();
            let info = ServiceInfo::new(SERVICE_TYPE, &name, &host, &addrs[..], port, &props[..])?;
            Ok(if ip.is_none() {
                info.enable_addr_auto()
            } else {
                info
            })
        };
        let first = info(&ann)?;
        let fullname = first.get_fullname().to_owned();
        daemon.register(first)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let d2 = daemon.clone();
        let task = tokio::spawn(async move {
            let epoch = Instant::now();
            let now = || u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            let silence = u64::try_from(SILENCE_LIMIT.as_millis()).unwrap_or(u64::MAX);
            let mut table = PeerTable::new();
            let mut tick = tokio::time::interval(ANNOUNCE_INTERVAL);
            tick.tick().await;
            loop {
                let changes = tokio::select! {
                    ev = events.recv_async() => match ev {
                        Ok(ServiceEvent::ServiceResolved(r)) => {
                            match Announcement::from_txt(|k| r.txt_properties.get_property_val_str(k)) {
                                Ok(a) if a.peer == me => Vec::new(),
                                Ok(a) if a.version != PROTOCOL_VERSION => {
                                    tracing::debug!(peer = %a.peer, v = a.version, "incompatible protocol version");
                                    Vec::new()
                                }
                                Ok(a) => match pick_addr(r.addresses.iter().map(|s| s.to_ip_addr()), ip) {
                                    Some(addr) => table.observe(&r.fullname, a.peer, SocketAddr::new(addr, r.port), now()),
                                    None => Vec::new(),
                                },
                                Err(e) => {
                                    tracing::debug!(name = %r.fullname, error = %e, "ignoring announcement");
                                    Vec::new()
                                }
                            }
                        }
                        Ok(ServiceEvent::ServiceRemoved(_, name)) => table.withdraw(&name).into_iter().collect(),
                        Ok(_) => Vec::new(),
                        Err(_) => return,
                    },
                    _ = tick.tick() => {
                        ann.counter = ann.counter.wrapping_add(1);
                        match info(&ann) {
                            Ok(i) => {
                                if let Err(e) = d2.register(i) {
                                    tracing::warn!(error = %e, "mDNS re-announce failed");
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "mDNS announcement invalid"),
                        }
                        table.expire(now(), silence)
                    }
                };
                for c in changes {
                    apply(&transport, me, c);
                }
            }
        });
        Ok(MdnsDiscovery {
            daemon,
            fullname,
            task: task.abort_handle(),
        })
    }
}

fn pick_addr(addrs: impl Iterator<Item = IpAddr>, prefer: Option<IpAddr>) -> Option<IpAddr> {
    let all: Vec<IpAddr> = addrs.collect();
    if let Some(p) = prefer.filter(|p| all.contains(p)) {
        return Some(p);
    }
    // A peer's loopback address names this host, not the peer: only as a last resort.
    let routable = |ip: &IpAddr| !ip.is_loopback();
    all.iter()
        .copied()
        .find(|ip| ip.is_ipv4() && routable(ip))
        .or_else(|| all.iter().copied().find(routable))
        .or_else(|| all.first().copied())
}

fn apply(transport: &WiredTransport, me: PeerId, change: DiscoveryChange) {
    match change {
        DiscoveryChange::Found { peer, addr } => {
            tracing::info!(%peer, %addr, "discovered by mDNS");
            if me < peer && transport.is_active() {
                let t = transport.clone();
                tokio::spawn(async move {
                    if let Err(e) = t.dial(addr).await {
                        tracing::debug!(%peer, %addr, error = %e, "dial after discovery failed");
                    }
                });
            }
        }
        DiscoveryChange::Lost { peer, addr } => {
            tracing::info!(%peer, %addr, "lost by mDNS");
            transport.forget(addr);
        }
    }
}

impl Drop for MdnsDiscovery {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.daemon.unregister(&self.fullname);
        let _ = self.daemon.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pid(b: u8) -> PeerId {
        PeerId::from_digest([b; 32])
    }

    fn decode(props: &[(String, String)]) -> Result<Announcement, WiredError> {
        Announcement::from_txt(|k| {
            props
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        })
    }

    #[test]
    fn txt_roundtrip_and_refusals() {
        let a = Announcement {
            peer: pid(3),
            version: PROTOCOL_VERSION,
            collections: vec!["notes".into(), "todos".into()],
            counter: 7,
        };
        assert_eq!(decode(&a.to_txt().unwrap()).unwrap(), a);
        let none = Announcement {
            collections: vec![],
            ..a.clone()
        };
        assert_eq!(decode(&none.to_txt().unwrap()).unwrap(), none);
        let bad = Announcement {
            collections: vec!["a,b".into()],
            ..a.clone()
        };
        assert!(bad.to_txt().is_err());
        let long = Announcement {
            collections: vec!["x".repeat(254)],
            ..a.clone()
        };
        assert!(long.to_txt().is_err());
        assert!(decode(&[("v".into(), "1".into())]).is_err());
        assert!(decode(&[("id".into(), "nope".into()), ("v".into(), "1".into())]).is_err());
        assert!(decode(&[("id".into(), pid(1).to_base58()), ("v".into(), "x".into())]).is_err());
    }

    proptest! {
        #[test]
        fn prop_txt_roundtrip(b in any::<u8>(), v in any::<u8>(), n in any::<u32>(),
                              cs in proptest::collection::vec("[a-z0-9_-]{1,20}", 0..8)) {
            let a = Announcement { peer: pid(b), version: v, collections: cs, counter: n };
            prop_assert_eq!(decode(&a.to_txt().unwrap()).unwrap(), a);
        }

        #[test]
        fn prop_txt_decode_never_panics(id in ".{0,60}", v in ".{0,5}", c in ".{0,300}", n in ".{0,12}") {
            let props = vec![("id".to_owned(), id), ("v".to_owned(), v), ("c".to_owned(), c), ("n".to_owned(), n)];
            let _ = decode(&props);
        }
    }

    #[test]
    fn table_found_refresh_move_withdraw_expire() {
        let mut t = PeerTable::new();
        let a1: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let a2: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_eq!(
            t.observe("p", pid(1), a1, 0),
            vec![DiscoveryChange::Found {
                peer: pid(1),
                addr: a1
            }]
        );
        assert!(t.observe("p", pid(1), a1, 10_000).is_empty());
        assert!(t.expire(44_999, 35_000).is_empty());
        assert_eq!(
            t.observe("p", pid(1), a2, 20_000),
            vec![
                DiscoveryChange::Lost {
                    peer: pid(1),
                    addr: a1
                },
                DiscoveryChange::Found {
                    peer: pid(1),
                    addr: a2
                }
            ]
        );
        t.observe("q", pid(2), a1, 20_000);
        assert_eq!(
            t.withdraw("q"),
            Some(DiscoveryChange::Lost {
                peer: pid(2),
                addr: a1
            })
        );
        assert_eq!(t.withdraw("q"), None);
        assert_eq!(
            t.expire(55_000, 35_000),
            vec![DiscoveryChange::Lost {
                peer: pid(1),
                addr: a2
            }]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn table_is_bounded() {
        let mut t = PeerTable::new();
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        for i in 0..MAX_PEERS + 10 {
            t.observe(&format!("n{i}"), pid((i % 251) as u8), a, 0);
        }
        assert_eq!(t.len(), MAX_PEERS);
    }

    #[test]
    fn picks_preferred_then_ipv4() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fe80::1".parse().unwrap();
        assert_eq!(pick_addr([v6, v4].into_iter(), None), Some(v4));
        assert_eq!(pick_addr([v6, v4].into_iter(), Some(v6)), Some(v6));
        assert_eq!(pick_addr([v6].into_iter(), None), Some(v6));
        assert_eq!(pick_addr(std::iter::empty(), None), None);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(pick_addr([lo, v6, v4].into_iter(), None), Some(v4));
        assert_eq!(pick_addr([lo, v6].into_iter(), None), Some(v6));
        assert_eq!(pick_addr([lo].into_iter(), None), Some(lo));
        assert_eq!(pick_addr([v4, lo].into_iter(), Some(lo)), Some(lo));
    }
}
