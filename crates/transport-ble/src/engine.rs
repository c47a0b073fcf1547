//! The sans-io BLE engine: every link of one device in both roles at once, the
//! connection policy, reconnect backoff and the rotating advertisement. Radio events
//! and time in, [`Output`]s out; a driver ([`crate::BleTransport`]) or a test moves
//! them.
//!
//! # Roles
//! The device advertises and scans, serves the GATT service and connects to others'
//! at once. The side that connected (the GATT client, [`Role::Central`]) is the Noise
//! initiator.
//!
//! # Who dials whom
//! Both sides see each other's advertisement; to avoid two links per pair, an
//! advertisement is dialled at once only when our own tag is smaller than the
//! advertised one, and by the other side only after it stayed unanswered for
//! [`EngineConfig::dial_grace_ms`] (one side may not hear the other). A peer wanted by
//! [`Engine::connect`] is dialled at once. Should two links to one peer still be
//! established, both sides keep the one whose GATT client has the smaller peer id and
//! let the other drain, then close it.
//!
//! # Which neighbours to keep
//! At most [`EngineConfig::max_links`] links (established, in handshake or being dialled).
//! - An inbound connection over the limit is refused at once.
//! - An advertisement over the limit is dialled only if its tag resolves to a known
//!   peer (a linked device or friend, [`Engine::resolver_mut`]); then the link to a
//!   peer that is neither known nor wanted, with the weakest signal, is closed for it.
//! - Advertisements weaker than [`EngineConfig::min_rssi`] are ignored.
//! - A peer disconnected by request ([`Engine::disconnect`], or whose `BYE` arrived) is
//!   not dialled again on our own until [`Engine::connect`] names it; a link that is
//!   dialled on chance and turns out to be such a peer is refused before our identity
//!   is revealed. Its own dials are still accepted.
//! - An address whose connection failed, or whose link ended without being
//!   established, waits `reconnect_base_ms * 2^failures` (capped at
//!   `reconnect_max_ms`) before the next dial.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{NetworkMessage, PeerId, Priority};

use crate::error::BleError;
use crate::frag::Channel;
use crate::gatt::Advertisement;
use crate::link::{BleLink, LinkConfig, LinkEvent, check_policy};
use crate::presence::{PresenceKey, PresenceResolver, PresenceTag};

/// A connection handle, chosen by the radio.
pub type ConnId = u64;

/// A radio address (48 bits; a resolvable private address on a real radio).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceAddr(pub [u8; 6]);

impl std::fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02X}:{b:02X}:{c:02X}:{d:02X}:{e:02X}:{g:02X}")
    }
}

/// Which side of a connection this device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// We connected: GATT client, Noise initiator; we write, the peer notifies.
    Central,
    /// The peer connected: GATT server, Noise responder; we notify, the peer writes.
    Peripheral,
}

/// Limits and timers of the engine (milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// Per-link limits and timers.
    pub link: LinkConfig,
    /// Most links at once (established, handshaking or being dialled).
    pub max_links: usize,
    /// Advertisements weaker than this (dBm) are ignored.
    pub min_rssi: i16,
    /// The side with the larger tag dials an advertisement after this long.
    pub dial_grace_ms: u64,
    /// First reconnect delay after a failure; doubles per consecutive failure.
    pub reconnect_base_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// A dial, or a [`Engine::connect`], gives up after this long.
    pub connect_timeout_ms: u64,
    /// A sighting not refreshed for this long is forgotten.
    pub sighting_ttl_ms: u64,
    /// Most sightings remembered (the stalest is forgotten first).
    pub max_sightings: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            link: LinkConfig::default(),
            max_links: 7,
            min_rssi: -95,
            dial_grace_ms: 3_000,
            reconnect_base_ms: 500,
            reconnect_max_ms: 30_000,
            connect_timeout_ms: 10_000,
            sighting_ttl_ms: 20_000,
            max_sightings: 256,
        }
    }
}

/// What the engine asks of the radio or reports to its owner.
#[derive(Debug)]
#[non_exhaustive]
pub enum Output {
    /// Connect to this address as GATT client (report with [`Engine::on_connected`] or
    /// [`Engine::on_connect_failed`]).
    Connect(DeviceAddr),
    /// Close this connection.
    Disconnect(ConnId),
    /// Send one fragment on this connection (write if Central, notify if Peripheral).
    Transmit {
        /// The connection.
        conn: ConnId,
        /// One fragment, at most MTU - 3 bytes.
        bytes: Vec<u8>,
    },
    /// Advertise this from now on (a new epoch).
    Advertise(Advertisement),
    /// A peer became reachable (authenticated by Noise XX).
    PeerUp {
        /// The peer.
        peer: PeerId,
        /// Its proved key.
        key: PublicKey,
        /// Signal of its last advertisement seen, if any.
        rssi: Option<i16>,
    },
    /// A peer is no longer reachable.
    PeerDown(PeerId),
    /// A message arrived from a linked peer.
    Message {
        /// The neighbour.
        from: PeerId,
        /// The message.
        message: NetworkMessage,
    },
    /// An authenticated peer sent input that broke the link protocol (see
    /// [`BleError::is_peer_fault`]); its link was closed. Input before the handshake
    /// finished names no peer: its address is backed off instead.
    Misbehaved {
        /// The peer.
        peer: PeerId,
        /// What it did.
        error: String,
    },
    /// A [`Engine::connect`] finished.
    ConnectDone {
        /// The peer asked for.
        peer: PeerId,
        /// Whether it is reachable now.
        result: Result<(), BleError>,
    },
}

struct Sighting {
    tag: PresenceTag,
    rssi: i16,
    first_seen: u64,
    last_seen: u64,
    known: Option<PeerId>,
    failures: u32,
    next_dial: u64,
}

struct Conn {
    addr: DeviceAddr,
    role: Role,
    link: BleLink,
    retiring: bool,
    /// Our dial, asked for by [`Engine::connect`].
    asked: bool,
}

/// The engine of one device. See the module documentation for its policies.
pub struct Engine {
    identity: Identity,
    me: PeerId,
    policy: Arc<AccessPolicy>,
    config: EngineConfig,
    key: PresenceKey,
    resolver: PresenceResolver,
    tag: PresenceTag,
    sightings: HashMap<DeviceAddr, Sighting>,
    conns: BTreeMap<ConnId, Conn>,
    /// Dials in progress: since when, and whether asked for by [`Engine::connect`].
    dialing: HashMap<DeviceAddr, (u64, bool)>,
    by_peer: HashMap<PeerId, ConnId>,
    addr_peer: HashMap<DeviceAddr, PeerId>,
    parted: HashSet<PeerId>,
    wanted: HashMap<PeerId, u64>,
    out: VecDeque<Output>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("me", &self.me)
            .field("links", &self.conns.len())
            .field("peers", &self.by_peer.len())
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine advertising under `key` in `epoch` (the first output is that
    /// advertisement).
    pub fn new(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: EngineConfig,
        key: PresenceKey,
        epoch: u64,
    ) -> Self {
        let me = identity.peer_id();
        let tag = key.tag(epoch, &me);
        let mut resolver = PresenceResolver::new();
        resolver.add_key(key.clone());
        resolver.set_epoch(epoch);
        let mut e = Engine {
            identity,
            me,
            policy,
            config,
            key,
            resolver,
            tag,
            sightings: HashMap::new(),
            conns: BTreeMap::new(),
            dialing: HashMap::new(),
            by_peer: HashMap::new(),
            addr_peer: HashMap::new(),
            parted: HashSet::new(),
            wanted: HashMap::new(),
            out: VecDeque::new(),
        };
        e.out.push_back(Output::Advertise(Advertisement { tag }));
        e
    }

    /// This device's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// The advertisement of the current epoch.
    pub fn advertisement(&self) -> Advertisement {
        Advertisement { tag: self.tag }
    }

    /// The resolver of presence tags: add shared keys and known peers to it.
    pub fn resolver_mut(&mut self) -> &mut PresenceResolver {
        &mut self.resolver
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Moves to `epoch` (wall time / 15 min): a new tag, advertised at once.
    pub fn set_epoch(&mut self, epoch: u64) {
        let tag = self.key.tag(epoch, &self.me);
        self.resolver.set_epoch(epoch);
        if tag != self.tag {
            self.tag = tag;
            self.out.push_back(Output::Advertise(Advertisement { tag }));
        }
    }

    /// The next output.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Peers with an established link, with their keys.
    pub fn peers(&self) -> Vec<(PeerId, PublicKey)> {
        self.by_peer
            .iter()
            .filter_map(|(p, c)| Some((*p, self.conns.get(c)?.link.peer_key()?)))
            .collect()
    }

    /// The channel of the link carrying `peer`'s traffic (GATT or L2CAP), if linked.
    pub fn link_channel(&self, peer: &PeerId) -> Option<Channel> {
        let c = self.conns.get(self.by_peer.get(peer)?)?;
        Some(c.link.framer().channel())
    }

    /// Links open or being dialled.
    pub fn link_count(&self) -> usize {
        self.conns.len() + self.dialing.len()
    }

    /// An advertisement heard from `addr` at `rssi` dBm.
    pub fn on_advertisement(&mut self, addr: DeviceAddr, rssi: i16, adv: Advertisement, now: u64) {
        if rssi < self.config.min_rssi || adv.tag == self.tag {
            return;
        }
        if !self.sightings.contains_key(&addr) && self.sightings.len() >= self.config.max_sightings
        {
            let stalest = self
                .sightings
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(a, _)| *a);
            if let Some(a) = stalest {
                self.sightings.remove(&a);
                self.addr_peer.remove(&a);
            }
        }
        let known = self.resolver.resolve(&adv.tag);
        let s = self.sightings.entry(addr).or_insert(Sighting {
            tag: adv.tag,
            rssi,
            first_seen: now,
            last_seen: now,
            known,
            failures: 0,
            next_dial: now,
        });
        if s.tag != adv.tag {
            s.tag = adv.tag;
            s.first_seen = now;
            s.known = known;
        }
        s.rssi = rssi;
        s.last_seen = now;
        self.maybe_dial(addr, now);
    }

    fn peer_at(&self, addr: &DeviceAddr) -> Option<PeerId> {
        self.sightings
            .get(addr)
            .and_then(|s| s.known)
            .or_else(|| self.addr_peer.get(addr).copied())
    }

    fn maybe_dial(&mut self, addr: DeviceAddr, now: u64) {
        if self.dialing.contains_key(&addr) || self.conns.values().any(|c| c.addr == addr) {
            return;
        }
        let peer = self.peer_at(&addr);
        let Some(s) = self.sightings.get(&addr) else {
            return;
        };
        let wanted = peer.is_some_and(|p| self.wanted.contains_key(&p));
        if let Some(p) = peer
            && (self.by_peer.contains_key(&p) || (self.parted.contains(&p) && !wanted))
        {
            return;
        }
        if now < s.next_dial {
            return;
        }
        let eager = wanted || (peer.is_none() && !self.wanted.is_empty());
        let since = s.first_seen.max(s.next_dial);
        if !eager && self.tag > s.tag && now < since + self.config.dial_grace_ms {
            return;
        }
        let friend = s.known.is_some();
        if self.link_count() >= self.config.max_links {
            if !(friend || wanted) {
                return;
            }
            let Some(victim) = self.weakest_stranger() else {
                return;
            };
            tracing::debug!(%addr, victim, "connection limit: closing a stranger's link for a known peer");
            self.close(victim, None, now, true);
        }
        self.dialing.insert(addr, (now, eager));
        self.out.push_back(Output::Connect(addr));
    }

    /// The link to a peer neither known nor wanted with the weakest signal.
    fn weakest_stranger(&self) -> Option<ConnId> {
        self.conns
            .iter()
            .filter(|(_, c)| {
                c.link
                    .peer()
                    .is_none_or(|p| !self.resolver.knows(&p) && !self.wanted.contains_key(&p))
            })
            .min_by_key(|(_, c)| self.sightings.get(&c.addr).map_or(i16::MIN, |s| s.rssi))
            .map(|(id, _)| *id)
    }

    fn backoff(&mut self, addr: &DeviceAddr, now: u64) {
        if let Some(s) = self.sightings.get_mut(addr) {
            s.failures = s.failures.saturating_add(1);
            let delay = self
                .config
                .reconnect_base_ms
                .saturating_mul(1 << s.failures.min(16))
                .min(self.config.reconnect_max_ms);
            s.next_dial = now + delay;
        }
    }

    /// A dial of `addr` failed.
    pub fn on_connect_failed(&mut self, addr: DeviceAddr, now: u64) {
        self.dialing.remove(&addr);
        self.backoff(&addr, now);
    }

    /// A connection is up (ours as [`Role::Central`] or the peer's) over `channel`: GATT
    /// at an ATT MTU (a bare `u16` converts to it) or an L2CAP channel both sides offered.
    pub fn on_connected(
        &mut self,
        conn: ConnId,
        addr: DeviceAddr,
        role: Role,
        channel: impl Into<Channel>,
        now: u64,
    ) {
        let channel = channel.into();
        let dial = self.dialing.remove(&addr);
        let dialled = dial.is_some();
        let asked = dial.is_some_and(|(_, w)| w);
        if role == Role::Peripheral && self.conns.len() >= self.config.max_links {
            tracing::debug!(%addr, "connection limit: inbound connection refused");
            self.out.push_back(Output::Disconnect(conn));
            return;
        }
        let id = self.identity.clone();
        let link = match role {
            Role::Central => {
                let expect = self
                    .peer_at(&addr)
                    .filter(|p| self.wanted.contains_key(p) && dialled);
                BleLink::initiator(
                    id,
                    self.policy.clone(),
                    expect,
                    self.config.link,
                    channel,
                    now,
                )
                .map(|mut l| {
                    let deny = self
                        .parted
                        .iter()
                        .filter(|p| !self.wanted.contains_key(p))
                        .copied()
                        .collect();
                    l.deny(deny);
                    l
                })
            }
            Role::Peripheral => {
                BleLink::responder(id, self.policy.clone(), self.config.link, channel, now).map(
                    |mut l| {
                        l.set_report_last(!self.wanted.is_empty());
                        l
                    },
                )
            }
        };
        match link {
            Ok(link) => {
                self.conns.insert(
                    conn,
                    Conn {
                        addr,
                        role,
                        link,
                        retiring: false,
                        asked,
                    },
                );
                if self.settle_crossed_dials(conn, addr, role, now) {
                    return;
                }
                self.flush(conn, now);
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "link set-up failed");
                self.out.push_back(Output::Disconnect(conn));
            }
        }
    }

    /// Two connections with one device, one dialled by each side at about the same
    /// time: both sides keep the same one, so that the side that asked for the link
    /// ([`Engine::connect`]) dials it. Our dial yields to the peer's unless we asked for
    /// it (then the peer's yields: its dial of us was not asked for, or both asked and
    /// both retry); a new connection yields to an established one. Returns whether
    /// `conn` itself was closed.
    fn settle_crossed_dials(
        &mut self,
        conn: ConnId,
        addr: DeviceAddr,
        role: Role,
        now: u64,
    ) -> bool {
        let Some((&other, o)) = self
            .conns
            .iter()
            .find(|(id, c)| **id != conn && c.addr == addr && !c.retiring)
        else {
            return false;
        };
        let loser = if o.link.is_established() || o.role == role {
            conn
        } else {
            let (central, inbound) = match role {
                Role::Central => (conn, other),
                Role::Peripheral => (other, conn),
            };
            if self.conns.get(&central).is_some_and(|c| c.asked) {
                inbound
            } else {
                central
            }
        };
        tracing::debug!(%addr, loser, "crossed dials: closing one connection");
        self.conns.remove(&loser);
        self.out.push_back(Output::Disconnect(loser));
        if loser != conn {
            self.flush(conn, now);
        }
        loser == conn
    }

    /// The ATT MTU of `conn` changed.
    pub fn on_mtu(&mut self, conn: ConnId, mtu: u16, now: u64) {
        if let Some(c) = self.conns.get_mut(&conn)
            && let Err(e) = c.link.set_mtu(mtu)
        {
            self.close(conn, Some(e), now, true);
        }
    }

    /// One fragment arrived on `conn` (a write to our characteristic or a notification).
    pub fn on_fragment(&mut self, conn: ConnId, bytes: &[u8], now: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Err(e) = c.link.receive(bytes, now) {
            self.close(conn, Some(e), now, true);
            return;
        }
        self.flush(conn, now);
    }

    /// The radio reports `conn` closed (by either side or by link loss).
    pub fn on_disconnected(&mut self, conn: ConnId, now: u64) {
        self.close(conn, None, now, false);
    }

    /// Moves the link's events, then its output, out: a peer is reported before the
    /// fragment that lets it see us established leaves.
    fn flush(&mut self, conn: ConnId, now: u64) {
        let mut events = Vec::new();
        let addr = {
            let Some(c) = self.conns.get_mut(&conn) else {
                return;
            };
            while let Some(ev) = c.link.poll_event() {
                events.push(ev);
            }
            c.addr
        };
        for ev in events {
            match ev {
                LinkEvent::Established { peer, key } => self.on_established(conn, addr, peer, key),
                LinkEvent::Message(message) => {
                    let from = self.conns.get(&conn).and_then(|c| c.link.peer());
                    if let Some(from) = from {
                        self.out.push_back(Output::Message { from, message });
                    }
                }
                LinkEvent::Bye => {
                    if let Some(p) = self.conns.get(&conn).and_then(|c| c.link.peer()) {
                        self.parted.insert(p);
                    }
                    self.close(conn, None, now, true);
                    return;
                }
            }
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        while let Some(bytes) = c.link.poll_transmit() {
            self.out.push_back(Output::Transmit { conn, bytes });
        }
        if c.retiring && c.link.is_drained() {
            self.close(conn, None, now, true);
        }
    }

    fn on_established(&mut self, conn: ConnId, addr: DeviceAddr, peer: PeerId, key: PublicKey) {
        self.addr_peer.insert(addr, peer);
        self.parted.remove(&peer);
        if let Some(s) = self.sightings.get_mut(&addr) {
            s.failures = 0;
        }
        if let Some(&other) = self.by_peer.get(&peer)
            && other != conn
        {
            // Two links to one peer: keep the one whose GATT client has the smaller id.
            let central_of = |c: &Conn| match c.role {
                Role::Central => self.me,
                Role::Peripheral => peer,
            };
            let want = self.me.min(peer);
            let new_wins = self.conns.get(&conn).is_some_and(|c| central_of(c) == want)
                && self
                    .conns
                    .get(&other)
                    .is_some_and(|c| central_of(c) != want);
            let loser = if new_wins {
                self.by_peer.insert(peer, conn);
                other
            } else {
                conn
            };
            if let Some(c) = self.conns.get_mut(&loser) {
                c.retiring = true;
            }
            return;
        }
        self.by_peer.insert(peer, conn);
        let rssi = self.sightings.get(&addr).map(|s| s.rssi);
        self.out.push_back(Output::PeerUp { peer, key, rssi });
        if self.wanted.remove(&peer).is_some() {
            self.out.push_back(Output::ConnectDone {
                peer,
                result: Ok(()),
            });
        }
    }

    /// Removes `conn`: asks the radio to close it if `ours`, reports the peer lost if
    /// no other link to it remains, fails a pending connect on a refusal.
    fn close(&mut self, conn: ConnId, error: Option<BleError>, now: u64, ours: bool) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if ours {
            self.out.push_back(Output::Disconnect(conn));
        }
        let peer = c.link.peer();
        if let Some(e) = &error {
            tracing::debug!(addr = %c.addr, ?peer, error = %e, "link closed on error");
            if let Some(p) = peer
                && c.link.is_established()
                && e.is_peer_fault()
            {
                self.out.push_back(Output::Misbehaved {
                    peer: p,
                    error: e.to_string(),
                });
            }
        }
        if !c.link.is_established() || error.is_some() {
            self.backoff(&c.addr, now);
        }
        let Some(peer) = peer else {
            return;
        };
        if self.by_peer.get(&peer) == Some(&conn) {
            self.by_peer.remove(&peer);
            let spare = self
                .conns
                .iter_mut()
                .find(|(_, o)| o.link.is_established() && o.link.peer() == Some(peer));
            if let Some((&id, o)) = spare {
                o.retiring = false;
                self.by_peer.insert(peer, id);
            } else {
                self.out.push_back(Output::PeerDown(peer));
            }
        }
        if !c.link.is_established() && self.wanted.remove(&peer).is_some() {
            let result = Err(match error {
                Some(BleError::Noise(ecomesh_identity::Error::PeerRefused(p))) => {
                    BleError::Refused(p)
                }
                _ => BleError::Refused(peer),
            });
            self.out.push_back(Output::ConnectDone { peer, result });
        }
    }

    /// Wants a link to `peer`: done at once if linked, otherwise dialled (known address)
    /// or looked for among unresolved advertisements until `connect_timeout_ms`; the
    /// outcome is an [`Output::ConnectDone`]. Clears a request disconnect.
    pub fn connect(&mut self, peer: PeerId, now: u64) {
        if self.by_peer.contains_key(&peer) {
            self.out.push_back(Output::ConnectDone {
                peer,
                result: Ok(()),
            });
            return;
        }
        self.parted.remove(&peer);
        self.wanted
            .insert(peer, now + self.config.connect_timeout_ms);
        // If the peer dials us first, we report the link only after it does.
        for c in self.conns.values_mut() {
            if c.role == Role::Peripheral && !c.link.is_established() {
                c.link.set_report_last(true);
            }
        }
        let addrs: Vec<DeviceAddr> = self.sightings.keys().copied().collect();
        for addr in addrs {
            if self.peer_at(&addr) == Some(peer)
                && let Some(s) = self.sightings.get_mut(&addr)
            {
                s.next_dial = now;
            }
            self.maybe_dial(addr, now);
        }
    }

    /// Ends the link to `peer` by request: a `BYE` goes out, the link closes once it
    /// is sent, and `peer` is not dialled again on our own until [`Engine::connect`].
    pub fn disconnect(&mut self, peer: PeerId, now: u64) {
        self.parted.insert(peer);
        self.wanted.remove(&peer);
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.link.peer() == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                if c.link.is_established() && c.link.send_bye().is_ok() {
                    c.retiring = true;
                } else {
                    self.close(id, None, now, true);
                    continue;
                }
            }
            // Report the loss now; the link closes once its BYE is out.
            if self.by_peer.get(&peer) == Some(&id) {
                self.by_peer.remove(&peer);
                self.out.push_back(Output::PeerDown(peer));
            }
            self.flush(id, now);
        }
    }

    /// Sends `message` to a linked `peer` under the payload policy.
    pub fn send(
        &mut self,
        peer: PeerId,
        message: &NetworkMessage,
        priority: Priority,
        now: u64,
    ) -> Result<(), BleError> {
        check_policy(message, priority, self.config.link.max_message_size)?;
        let conn = *self.by_peer.get(&peer).ok_or(BleError::Unreachable(peer))?;
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(BleError::Unreachable(peer))?;
        let r = c.link.send_message(message, priority);
        if c.link.is_failed() {
            self.close(conn, None, now, true);
        } else {
            self.flush(conn, now);
        }
        r
    }

    /// Sends `message` to every linked peer; refused up front by the payload policy,
    /// otherwise a peer that cannot take it is skipped (logged).
    pub fn broadcast(
        &mut self,
        message: &NetworkMessage,
        priority: Priority,
        now: u64,
    ) -> Result<(), BleError> {
        check_policy(message, priority, self.config.link.max_message_size)?;
        let peers: Vec<PeerId> = self.by_peer.keys().copied().collect();
        for p in peers {
            if let Err(e) = self.send(p, message, priority, now) {
                tracing::debug!(peer = %p, error = %e, "broadcast skipped a peer");
            }
        }
        Ok(())
    }

    /// When [`Engine::handle_timeout`] is next due.
    pub fn next_timeout(&self) -> Option<u64> {
        let links = self.conns.values().map(|c| c.link.next_timeout());
        let wanted = self.wanted.values().copied();
        let dials = self
            .dialing
            .values()
            .map(|(t, _)| t + self.config.connect_timeout_ms);
        let sightings = self
            .sightings
            .iter()
            .filter(|(a, _)| !self.conns.values().any(|c| c.addr == **a))
            .map(|(_, s)| {
                (s.first_seen.max(s.next_dial) + self.config.dial_grace_ms)
                    .min(s.last_seen + self.config.sighting_ttl_ms)
            });
        links.chain(wanted).chain(dials).chain(sightings).min()
    }

    /// Advances time: link timers, connect and dial deadlines, forgetting stale
    /// sightings, dials that became due.
    pub fn handle_timeout(&mut self, now: u64) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            let r = self.conns.get_mut(&id).map(|c| c.link.handle_timeout(now));
            match r {
                Some(Err(e)) => self.close(id, Some(e), now, true),
                Some(Ok(())) => self.flush(id, now),
                None => {}
            }
        }
        let expired: Vec<PeerId> = self
            .wanted
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in expired {
            self.wanted.remove(&peer);
            self.out.push_back(Output::ConnectDone {
                peer,
                result: Err(BleError::Timeout("connect")),
            });
        }
        let stale_dials: Vec<DeviceAddr> = self
            .dialing
            .iter()
            .filter(|(_, (t, _))| *t + self.config.connect_timeout_ms <= now)
            .map(|(a, _)| *a)
            .collect();
        for a in stale_dials {
            self.on_connect_failed(a, now);
        }
        let ttl = self.config.sighting_ttl_ms;
        let linked: HashSet<DeviceAddr> = self.conns.values().map(|c| c.addr).collect();
        self.sightings
            .retain(|a, s| linked.contains(a) || s.last_seen + ttl > now);
        let addrs: Vec<DeviceAddr> = self.sightings.keys().copied().collect();
        for a in addrs {
            self.maybe_dial(a, now);
        }
    }

    /// Drops every link and sighting (the radio is going away); reports every peer lost.
    pub fn shutdown(&mut self) {
        let peers: Vec<PeerId> = self.by_peer.drain().map(|(p, _)| p).collect();
        for p in peers {
            self.out.push_back(Output::PeerDown(p));
        }
        let conns: Vec<ConnId> = std::mem::take(&mut self.conns).into_keys().collect();
        for c in conns {
            self.out.push_back(Output::Disconnect(c));
        }
        self.dialing.clear();
        self.sightings.clear();
    }
}

#[cfg(test)]
mod tests;
