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
//!
//! Randomness comes from one SplitMix64 seeded by [`SimConfig::seed`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use ecomesh_types::BoxFuture;

use crate::engine::{ConnId, DeviceAddr, Role};
use crate::error::BleError;
use crate::frag::{ATT_HEADER_LEN, check_mtu};
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

struct Device {
    pos: (f64, f64),
    max_mtu: u16,
    max_conns: usize,
    on: bool,
    adv: Option<Advertisement>,
    events: Option<mpsc::Sender<RadioEvent>>,
}

struct Conn {
    owner: DeviceAddr,
    peer: DeviceAddr,
    peer_conn: ConnId,
}

struct State {
    config: SimConfig,
    rng: u64,
    devices: HashMap<DeviceAddr, Device>,
    links: HashMap<(DeviceAddr, DeviceAddr), bool>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    values: u64,
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

    /// Ends `conn` and its other end, telling both owners.
    fn drop_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        self.conns.remove(&c.peer_conn);
        let _ = self.deliver(&c.owner, RadioEvent::Disconnected { conn });
        let _ = self.deliver(&c.peer, RadioEvent::Disconnected { conn: c.peer_conn });
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
                values: 0,
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

    /// Values carried so far (every fragment on every connection).
    pub fn values_carried(&self) -> u64 {
        lock(&self.state).values
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
            let (ci, cp) = (st.next_conn, st.next_conn + 1);
            st.next_conn += 2;
            st.conns.insert(
                ci,
                Conn {
                    owner: me,
                    peer: addr,
                    peer_conn: cp,
                },
            );
            st.conns.insert(
                cp,
                Conn {
                    owner: addr,
                    peer: me,
                    peer_conn: ci,
                },
            );
            // The server learns of the connection first, so it is ready for the
            // client's first write.
            let server = RadioEvent::Connected {
                conn: cp,
                addr: me,
                role: Role::Peripheral,
                mtu,
            };
            let client = RadioEvent::Connected {
                conn: ci,
                addr,
                role: Role::Central,
                mtu,
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
            let mut st = self.state();
            let Some(c) = st.conns.get(&conn) else {
                return Err(BleError::Closed);
            };
            if c.owner != self.addr {
                return Err(BleError::Closed);
            }
            let (peer, peer_conn) = (c.peer, c.peer_conn);
            let mtu = match (st.devices.get(&self.addr), st.devices.get(&peer)) {
                (Some(a), Some(b)) => a.max_mtu.min(b.max_mtu),
                _ => return Err(BleError::Closed),
            };
            let max = usize::from(mtu) - ATT_HEADER_LEN;
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
            st.values += 1;
            let ev = RadioEvent::Received {
                conn: peer_conn,
                bytes,
            };
            if !st.deliver(&peer, ev) {
                tracing::warn!(%peer, "simulated controller queue full: connection dropped");
                st.drop_conn(conn);
                return Err(BleError::Closed);
            }
            Ok(())
        })
    }
}
