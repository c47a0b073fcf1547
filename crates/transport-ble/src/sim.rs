//! An in-memory BLE radio simulator: [`SimAir`] holds radios at positions, [`SimRadio`]
//! is one device's [`Radio`].
//!
//! Link model:
//! - **Range and RSSI by position**: two radios hear each other when their distance is
//!   at most [`SimConfig::range_m`], unless a pair override says otherwise
//!   ([`SimAir::set_link`], which puts a forced pair at most 10 m apart for its RSSI);
//!   RSSI follows log-distance path loss,
//!   `tx_power_1m - 10 * n * log10(d)` (`-59 dBm` at 1 m, `n = 2`).
//! - **Advertising**: each started radio's advertisement reaches every radio in range
//!   every [`SimConfig::adv_interval`], each copy lost with probability
//!   [`SimConfig::adv_loss`] (a scan window missed).
//! - **Connections**: a dial succeeds if the target is on and in range and neither side
//!   is at its connection limit; the ATT MTU is the smaller of both sides' maxima.
//!   Values arrive in order, once (the link layer retransmits); a connection drops
//!   when its ends move out of range, with probability [`SimConfig::drop_per_value`]
//!   per value (supervision timeout), or when an event cannot be delivered.
//! - **L2CAP channels**: a radio given a [`SimCoc`] ([`SimAir::offer_coc`]) offers an
//!   LE connection-oriented channel. A dial between two offering radios, each with a
//!   free channel, is a [`Channel::Coc`] connection (the target's PSM, the smaller SDU
//!   MTU); any other dial is GATT, so mixed neighbourhoods work. An SDU (one fragment,
//!   at most the SDU MTU) is cut into K-frames of at most the MPS plus the 2-byte SDU
//!   length; each direction has the receiver's credits in SDUs: the sender's SDUs
//!   queue behind them and move on as the receiving host takes its events (credits
//!   return), loss-free and in order, and the channel's end arrives after its
//!   last SDU. A full receiver queue never drops an L2CAP channel (credits pace the
//!   sender instead), unlike a GATT connection.
//!
//! Randomness comes from one SplitMix64 seeded by [`SimConfig::seed`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use ecomesh_types::BoxFuture;

use crate::engine::{ConnId, DeviceAddr, Role};
use crate::error::BleError;
use crate::frag::{ATT_HEADER_LEN, Channel, MIN_COC_MTU, check_mtu};
use crate::gatt::Advertisement;
use crate::radio::{Radio, RadioEvent};

/// Parameters of the simulated air.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimConfig {
    /// Hearing distance, metres.
    pub range_m: f64,
    /// Advertising period.
    pub adv_interval: Duration,
    /// Probability that one advertisement copy is missed.
    pub adv_loss: f64,
    /// Probability that a connection drops at a value.
    pub drop_per_value: f64,
    /// Seed of the random draws.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            range_m: 100.0,
            adv_interval: Duration::from_millis(100),
            adv_loss: 0.0,
            drop_per_value: 0.0,
            seed: 1,
        }
    }
}

/// RSSI at `d` metres: `-59 - 20 log10(d)` dBm (`d` at least 0.1 m).
pub fn rssi_at(d: f64) -> i16 {
    let d = d.max(0.1);
    (-59.0 - 20.0 * d.log10()).round().clamp(-127.0, 20.0) as i16
}

/// An L2CAP LE connection-oriented channel a simulated radio offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimCoc {
    /// The PSM it listens on.
    pub psm: u16,
    /// Its SDU MTU (at least 23).
    pub mtu: u16,
    /// Its maximum PDU payload (K-frame), at least 23.
    pub mps: u16,
    /// SDUs it lets a sender have in flight towards it (its credits).
    pub credits: usize,
    /// Most L2CAP channels at once; a dial beyond falls back to GATT.
    pub max_channels: usize,
}

impl Default for SimCoc {
    /// PSM [`crate::gatt::L2CAP_PSM`], SDU MTU 4099 (one whole unit), MPS 247 (a
    /// 251-byte LE data PDU less the 4-byte L2CAP header), 16 SDU credits, 7 channels.
    fn default() -> Self {
        SimCoc {
            psm: crate::gatt::L2CAP_PSM,
            mtu: 4099,
            mps: 247,
            credits: 16,
            max_channels: 7,
        }
    }
}

/// What the simulated air carried so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// GATT values (writes and notifications).
    pub gatt_values: u64,
    /// SDUs on L2CAP channels.
    pub coc_sdus: u64,
    /// K-frames those SDUs took (each SDU plus its 2-byte length, cut at the MPS).
    pub coc_kframes: u64,
}

struct Device {
    pos: (f64, f64),
    max_mtu: u16,
    max_conns: usize,
    coc: Option<SimCoc>,
    on: bool,
    adv: Option<Advertisement>,
    events: Option<mpsc::Sender<RadioEvent>>,
}

struct Conn {
    owner: DeviceAddr,
    peer: DeviceAddr,
    peer_conn: ConnId,
    channel: Channel,
    /// On an L2CAP channel: the peer's MPS.
    peer_mps: u16,
    /// On an L2CAP channel: the SDUs towards the peer, behind its credits.
    sdus: Option<mpsc::Sender<RadioEvent>>,
}

/// One direction of an L2CAP channel: a queue of `credits` SDUs whose task hands them
/// to the receiving host in order, waiting while its event queue is full (credits
/// return only as the host takes events).
fn coc_queue(credits: usize, to: mpsc::Sender<RadioEvent>) -> mpsc::Sender<RadioEvent> {
    let (tx, mut rx) = mpsc::channel::<RadioEvent>(credits.max(1));
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if to.send(ev).await.is_err() {
                return;
            }
        }
    });
    tx
}

struct State {
    config: SimConfig,
    rng: u64,
    devices: HashMap<DeviceAddr, Device>,
    links: HashMap<(DeviceAddr, DeviceAddr), bool>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    stats: SimStats,
}

impl State {
    fn draw(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn distance(&self, a: &DeviceAddr, b: &DeviceAddr) -> Option<f64> {
        let (da, db) = (self.devices.get(a)?, self.devices.get(b)?);
        Some(((da.pos.0 - db.pos.0).powi(2) + (da.pos.1 - db.pos.1).powi(2)).sqrt())
    }

    fn in_range(&self, a: &DeviceAddr, b: &DeviceAddr) -> bool {
        let key = if a < b { (*a, *b) } else { (*b, *a) };
        if let Some(&forced) = self.links.get(&key) {
            return forced;
        }
        self.distance(a, b)
            .is_some_and(|d| d <= self.config.range_m)
    }

    /// The distance the RSSI is computed at: a pair forced in range counts as 10 m apart.
    fn signal_distance(&self, a: &DeviceAddr, b: &DeviceAddr) -> f64 {
        let key = if a < b { (*a, *b) } else { (*b, *a) };
        let d = self.distance(a, b).unwrap_or(1.0);
        if self.links.get(&key) == Some(&true) {
            d.min(10.0)
        } else {
            d
        }
    }

    fn conns_of(&self, a: &DeviceAddr) -> usize {
        self.conns.values().filter(|c| c.owner == *a).count()
    }

    fn channels_of(&self, a: &DeviceAddr) -> usize {
        self.conns
            .values()
            .filter(|c| c.owner == *a && c.channel.is_coc())
            .count()
    }

    /// The L2CAP channel a dial from `a` to `b` opens, if both offer one and have one
    /// free: `b`'s PSM, the smaller SDU MTU, and the credits each side grants.
    fn coc_between(&self, a: &DeviceAddr, b: &DeviceAddr) -> Option<(Channel, SimCoc, SimCoc)> {
        let ca = self.devices.get(a)?.coc?;
        let cb = self.devices.get(b)?.coc?;
        if self.channels_of(a) >= ca.max_channels || self.channels_of(b) >= cb.max_channels {
            return None;
        }
        let channel = Channel::Coc {
            psm: cb.psm,
            sdu_mtu: ca.mtu.min(cb.mtu),
        };
        Some((channel, ca, cb))
    }

    /// Delivers an event; false if the device is off or its queue is full.
    fn deliver(&self, to: &DeviceAddr, ev: RadioEvent) -> bool {
        let Some(d) = self.devices.get(to) else {
            return false;
        };
        match (&d.events, d.on) {
            (Some(tx), true) => tx.try_send(ev).is_ok(),
            _ => false,
        }
    }

    /// Ends `conn` and its other end, telling both owners (on an L2CAP channel, after
    /// the SDUs still on their way to each).
    fn drop_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let other = self.conns.remove(&c.peer_conn);
        let to_peer = RadioEvent::Disconnected { conn: c.peer_conn };
        match &c.sdus {
            Some(q) => {
                if let Err(e) = q.try_send(to_peer) {
                    let _ = self.deliver(&c.peer, e.into_inner());
                }
            }
            None => {
                let _ = self.deliver(&c.peer, to_peer);
            }
        }
        let to_owner = RadioEvent::Disconnected { conn };
        match other.as_ref().and_then(|o| o.sdus.as_ref()) {
            Some(q) => {
                if let Err(e) = q.try_send(to_owner) {
                    let _ = self.deliver(&c.owner, e.into_inner());
                }
            }
            None => {
                let _ = self.deliver(&c.owner, to_owner);
            }
        }
    }

    fn drop_out_of_range(&mut self) {
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !self.in_range(&c.owner, &c.peer))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.drop_conn(id);
        }
    }
}

/// The shared air of simulated radios.
#[derive(Clone)]
pub struct SimAir {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimAir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAir").finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimAir {
    /// An empty air.
    pub fn new(config: SimConfig) -> Self {
        SimAir {
            state: Arc::new(Mutex::new(State {
                config,
                rng: config.seed,
                devices: HashMap::new(),
                links: HashMap::new(),
                conns: HashMap::new(),
                next_conn: 1,
                stats: SimStats::default(),
            })),
        }
    }

    /// A radio at `pos` (metres) offering ATT MTU up to `max_mtu` and at most
    /// `max_conns` connections.
    pub fn radio(
        &self,
        addr: DeviceAddr,
        pos: (f64, f64),
        max_mtu: u16,
        max_conns: usize,
    ) -> Result<SimRadio, BleError> {
        check_mtu(max_mtu)?;
        lock(&self.state).devices.insert(
            addr,
            Device {
                pos,
                max_mtu,
                max_conns,
                coc: None,
                on: false,
                adv: None,
                events: None,
            },
        );
        Ok(SimRadio {
            air: self.clone(),
            addr,
        })
    }

    /// Moves a radio; connections whose ends are now out of range drop.
    pub fn set_position(&self, addr: DeviceAddr, pos: (f64, f64)) {
        let mut st = lock(&self.state);
        if let Some(d) = st.devices.get_mut(&addr) {
            d.pos = pos;
        }
        st.drop_out_of_range();
    }

    /// Forces a pair in range (`Some(true)`), out of range (`Some(false)`) or back to
    /// positions (`None`).
    pub fn set_link(&self, a: DeviceAddr, b: DeviceAddr, forced: Option<bool>) {
        let mut st = lock(&self.state);
        let key = if a < b { (a, b) } else { (b, a) };
        match forced {
            Some(f) => st.links.insert(key, f),
            None => st.links.remove(&key),
        };
        st.drop_out_of_range();
    }

    /// Offers (`Some`) or withdraws (`None`) an L2CAP channel on `addr`, for later
    /// dials; an invalid offer (MTU or MPS under 23, no credits) is refused.
    pub fn offer_coc(&self, addr: DeviceAddr, coc: Option<SimCoc>) -> Result<(), BleError> {
        if let Some(c) = coc
            && (c.mtu < MIN_COC_MTU || c.mps < MIN_COC_MTU || c.credits == 0)
        {
            return Err(BleError::MtuOutOfRange(c.mtu.min(c.mps)));
        }
        let mut st = lock(&self.state);
        let d = st
            .devices
            .get_mut(&addr)
            .ok_or(BleError::Radio("unknown simulated radio".into()))?;
        d.coc = coc;
        Ok(())
    }

    /// Values carried so far (every fragment on every connection, GATT or L2CAP).
    pub fn values_carried(&self) -> u64 {
        let s = lock(&self.state).stats;
        s.gatt_values + s.coc_sdus
    }

    /// What was carried so far, by channel kind.
    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats
    }

    /// The channels of `addr`'s open connections, by connection.
    pub fn channels(&self, addr: DeviceAddr) -> Vec<(ConnId, Channel)> {
        let st = lock(&self.state);
        let mut v: Vec<(ConnId, Channel)> = st
            .conns
            .iter()
            .filter(|(_, c)| c.owner == addr)
            .map(|(id, c)| (*id, c.channel))
            .collect();
        v.sort_by_key(|(id, _)| *id);
        v
    }

    /// One advertising round of `addr`: its advertisement to every radio in range.
    fn advertise_round(&self, addr: DeviceAddr) -> bool {
        let mut st = lock(&self.state);
        let Some(d) = st.devices.get(&addr) else {
            return false;
        };
        if !d.on {
            return false;
        }
        let Some(adv) = d.adv else {
            return true;
        };
        let others: Vec<DeviceAddr> = st.devices.keys().filter(|a| **a != addr).copied().collect();
        for o in others {
            if !st.in_range(&addr, &o) {
                continue;
            }
            let loss = st.config.adv_loss;
            if loss > 0.0 && st.draw() < loss {
                continue;
            }
            let rssi = rssi_at(st.signal_distance(&addr, &o));
            // A full scan queue just misses this advertisement.
            let _ = st.deliver(&o, RadioEvent::Advertisement { addr, rssi, adv });
        }
        true
    }
}

/// One simulated radio ([`Radio`]).
#[derive(Clone)]
pub struct SimRadio {
    air: SimAir,
    addr: DeviceAddr,
}

impl std::fmt::Debug for SimRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimRadio({})", self.addr)
    }
}

impl SimRadio {
    /// This radio's address.
    pub fn addr(&self) -> DeviceAddr {
        self.addr
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.air.state)
    }
}

impl Radio for SimRadio {
    fn start(&self, events: mpsc::Sender<RadioEvent>) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(async move {
            let interval = {
                let mut st = self.state();
                let interval = st.config.adv_interval;
                let d = st
                    .devices
                    .get_mut(&self.addr)
                    .ok_or(BleError::Radio("unknown simulated radio".into()))?;
                if d.on {
                    return Ok(());
                }
                d.on = true;
                d.events = Some(events);
                interval
            };
            let air = self.air.clone();
            let addr = self.addr;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                loop {
                    tick.tick().await;
                    if !air.advertise_round(addr) {
                        return;
                    }
                }
            });
            Ok(())
        })
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(async move {
            let mut st = self.state();
            let mine: Vec<ConnId> = st
                .conns
                .iter()
                .filter(|(_, c)| c.owner == self.addr)
                .map(|(id, _)| *id)
                .collect();
            for id in mine {
                st.drop_conn(id);
            }
            if let Some(d) = st.devices.get_mut(&self.addr) {
                d.on = false;
                d.adv = None;
                d.events = None;
            }
            Ok(())
        })
    }

    fn advertise(&self, adv: Advertisement) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(async move {
            if let Some(d) = self.state().devices.get_mut(&self.addr) {
                d.adv = Some(adv);
            }
            Ok(())
        })
    }

    fn connect(&self, addr: DeviceAddr) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(async move {
            let mut st = self.state();
            let me = self.addr;
            let ok = st.devices.get(&addr).is_some_and(|d| d.on)
                && st.in_range(&me, &addr)
                && st
                    .devices
                    .get(&me)
                    .is_some_and(|d| st.conns_of(&me) < d.max_conns)
                && st
                    .devices
                    .get(&addr)
                    .is_some_and(|d| st.conns_of(&addr) < d.max_conns);
            if !ok {
                let _ = st.deliver(&me, RadioEvent::ConnectFailed { addr });
                return Ok(());
            }
            let mtu = match (st.devices.get(&me), st.devices.get(&addr)) {
                (Some(a), Some(b)) => a.max_mtu.min(b.max_mtu),
                _ => return Ok(()),
            };
            let (channel, to_peer, to_me) = match st.coc_between(&me, &addr) {
                Some((channel, mine, theirs)) => {
                    let peer_events = st.devices.get(&addr).and_then(|d| d.events.clone());
                    let my_events = st.devices.get(&me).and_then(|d| d.events.clone());
                    let (Some(pe), Some(me_ev)) = (peer_events, my_events) else {
                        let _ = st.deliver(&me, RadioEvent::ConnectFailed { addr });
                        return Ok(());
                    };
                    (
                        channel,
                        Some((coc_queue(theirs.credits, pe), theirs.mps)),
                        Some((coc_queue(mine.credits, me_ev), mine.mps)),
                    )
                }
                None => (Channel::Gatt { mtu }, None, None),
            };
            let (ci, cp) = (st.next_conn, st.next_conn + 1);
            st.next_conn += 2;
            st.conns.insert(
                ci,
                Conn {
                    owner: me,
                    peer: addr,
                    peer_conn: cp,
                    channel,
                    peer_mps: to_peer.as_ref().map_or(0, |(_, m)| *m),
                    sdus: to_peer.map(|(q, _)| q),
                },
            );
            st.conns.insert(
                cp,
                Conn {
                    owner: addr,
                    peer: me,
                    peer_conn: ci,
                    channel,
                    peer_mps: to_me.as_ref().map_or(0, |(_, m)| *m),
                    sdus: to_me.map(|(q, _)| q),
                },
            );
            // The server learns of the connection first, so it is ready for the
            // client's first write.
            let server = RadioEvent::Connected {
                conn: cp,
                addr: me,
                role: Role::Peripheral,
                channel,
            };
            let client = RadioEvent::Connected {
                conn: ci,
                addr,
                role: Role::Central,
                channel,
            };
            if !(st.deliver(&addr, server) && st.deliver(&me, client)) {
                st.drop_conn(ci);
            }
            Ok(())
        })
    }

    fn disconnect(&self, conn: ConnId) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(async move {
            let mut st = self.state();
            if st.conns.get(&conn).is_some_and(|c| c.owner == self.addr) {
                st.drop_conn(conn);
            }
            Ok(())
        })
    }

    fn transmit(&self, conn: ConnId, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), BleError>> {
        Box::pin(async move {
            let queue = {
                let mut st = self.state();
                let Some(c) = st.conns.get(&conn) else {
                    return Err(BleError::Closed);
                };
                if c.owner != self.addr {
                    return Err(BleError::Closed);
                }
                let (peer, peer_conn, channel) = (c.peer, c.peer_conn, c.channel);
                let (sdus, peer_mps) = (c.sdus.clone(), c.peer_mps);
                let max = match channel {
                    Channel::Coc { .. } => channel.max_fragment_len(),
                    Channel::Gatt { .. } => {
                        let mtu = match (st.devices.get(&self.addr), st.devices.get(&peer)) {
                            (Some(a), Some(b)) => a.max_mtu.min(b.max_mtu),
                            _ => return Err(BleError::Closed),
                        };
                        usize::from(mtu) - ATT_HEADER_LEN
                    }
                };
                if bytes.len() > max {
                    return Err(BleError::FragmentTooLarge {
                        len: bytes.len(),
                        max,
                    });
                }
                let drop = st.config.drop_per_value;
                if !st.in_range(&self.addr, &peer) || (drop > 0.0 && st.draw() < drop) {
                    st.drop_conn(conn);
                    return Err(BleError::Closed);
                }
                let len = bytes.len();
                let ev = RadioEvent::Received {
                    conn: peer_conn,
                    bytes,
                };
                match sdus {
                    Some(q) => {
                        st.stats.coc_sdus += 1;
                        let mps = usize::from(peer_mps.max(MIN_COC_MTU));
                        let kframes = (len + 2).div_ceil(mps);
                        st.stats.coc_kframes += kframes as u64;
                        (q, ev)
                    }
                    None => {
                        st.stats.gatt_values += 1;
                        if !st.deliver(&peer, ev) {
                            tracing::warn!(%peer, "simulated controller queue full: connection dropped");
                            st.drop_conn(conn);
                            return Err(BleError::Closed);
                        }
                        return Ok(());
                    }
                }
            };
            // An L2CAP SDU waits for a credit (a free place towards the peer).
            let (q, ev) = queue;
            q.send(ev).await.map_err(|_| BleError::Closed)
        })
    }
}
