//! A simulated Meshtastic network for tests (cargo feature `sim`).
//!
//! Each [`SimRadio`] plays a Meshtastic device on the far end of a pseudo-terminal pair:
//! the transport opens [`SimRadio::path`] like a USB serial device and runs its real serial
//! code; the simulator answers the want-config handshake (`my_info`, `node_info`,
//! `config_complete_id`), takes `ToRadio.packet`s and hands `FromRadio.packet`s to the
//! radios that hear them. Radios share a [`SimChannel`]:
//!
//! - a link graph ([`SimChannel::link`], with a loss probability per link);
//! - airtime by the Semtech formula for the channel's [`LoraParams`] (optionally scaled
//!   to run faster than real time), a half-duplex radio sending one packet at a time;
//! - listen-before-talk like the firmware: a radio that hears a transmission waits for
//!   its end plus a random contention delay;
//! - collisions: a receiver that hears two overlapping transmissions (or transmits
//!   itself meanwhile) gets neither (hidden terminals, simultaneous starts);
//! - the firmware's `want_ack` behaviour for unicast packets: a packet its destination did
//!   not receive is retransmitted (up to [`SimConfig::retransmissions`] times), and those
//!   retransmissions count as airtime too; the sender's client is then told the packet's
//!   fate as the firmware tells it, with a `ROUTING_APP` packet whose `request_id` names
//!   the packet: `error_reason` NONE from the destination once it received it, or
//!   MAX_RETRANSMIT from the sender's own node when the retransmissions ran out (the ack
//!   packets themselves take no airtime and are never lost);
//! - a log of every transmission ([`SimChannel::transmissions`]) with bytes and airtime.
//!
//! Packets reach the client with `hop_start = hop_limit` (the simulator never relays).

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serialport::{SerialPort, TTYPort};

use crate::airtime::LoraParams;
use crate::proto::{
    BROADCAST, Data, FromRadio, FromRadioVariant, MeshPacket, MyNodeInfo, NodeInfo, ROUTING_APP,
    ROUTING_ERROR_MAX_RETRANSMIT, ROUTING_ERROR_NONE, Routing, ToRadio, ToRadioVariant, User,
};
use crate::serial::{Decoded, FrameDecoder, encode_from_radio};
use prost::Message as _;

/// Settings of a simulated channel.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Modem settings (airtime).
    pub radio: LoraParams,
    /// Wall-clock time per unit of airtime (1.0 = real time, 0.1 = ten times faster).
    pub time_scale: f64,
    /// Whether overlapping transmissions destroy each other at a common receiver.
    pub collisions: bool,
    /// Firmware retransmissions of an unacknowledged `want_ack` unicast packet.
    pub retransmissions: u8,
    /// Seed of the loss and backoff randomness.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            radio: LoraParams::SHORT_TURBO,
            time_scale: 1.0,
            collisions: true,
            retransmissions: 3,
            seed: 1,
        }
    }
}

/// One transmission on the simulated air.
#[derive(Clone, Debug, PartialEq)]
pub struct Transmission {
    /// The transmitting node.
    pub node: u32,
    /// Destination node or broadcast.
    pub to: u32,
    /// Start, ms since the channel was created (wall clock).
    pub start_ms: u64,
    /// Airtime by the formula, ms (unscaled).
    pub airtime_ms: u64,
    /// The application payload (`Data.payload`).
    pub payload: Vec<u8>,
    /// Nodes that received it.
    pub delivered: Vec<u32>,
    /// Whether this was a firmware retransmission.
    pub retransmission: bool,
}

struct Radio {
    port: Arc<Mutex<TTYPort>>,
    busy_until: Instant,
}

struct Pending {
    id: usize,
    node: u32,
    start: Instant,
    end: Instant,
    packet: MeshPacket,
    retries_left: u8,
}

struct ChanState {
    radios: BTreeMap<u32, Radio>,
    links: HashMap<(u32, u32), f64>,
    log: Vec<Transmission>,
    /// (start, end, node) of every transmission still relevant for collisions.
    air: Vec<(Instant, Instant, u32)>,
    pending: Vec<Pending>,
    rng: u64,
    next_node: u32,
}

struct Shared {
    config: SimConfig,
    epoch: Instant,
    state: Mutex<ChanState>,
    wake: Condvar,
    closed: AtomicBool,
}

/// A simulated radio channel (see the module docs). Dropping it stops its threads.
pub struct SimChannel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimChannel").finish_non_exhaustive()
    }
}

/// One simulated Meshtastic device.
pub struct SimRadio {
    /// Its Meshtastic node number.
    pub node: u32,
    /// The pseudo-terminal to open as the radio's serial port.
    pub path: PathBuf,
    port: Arc<Mutex<TTYPort>>,
    unplugged: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    shared: Arc<Shared>,
    _slave: TTYPort,
}

impl std::fmt::Debug for SimRadio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimRadio")
            .field("node", &self.node)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SimRadio {
    /// Pulls the USB cable: the device leaves the channel and its end of the serial line
    /// closes (the client sees a hang-up).
    pub fn unplug(mut self) {
        self.unplugged.store(true, Ordering::Release);
        lock(&self.shared.state).radios.remove(&self.node);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Writes raw bytes to the client as if the device sent them (hostile-input tests).
    pub fn inject(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut p = lock(&self.port);
        p.write_all(bytes)?;
        p.flush()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn rand(x: &mut u64) -> u64 {
    *x ^= *x >> 12;
    *x ^= *x << 25;
    *x ^= *x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl SimChannel {
    /// A channel with no radios.
    pub fn new(config: SimConfig) -> Self {
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            state: Mutex::new(ChanState {
                radios: BTreeMap::new(),
                links: HashMap::new(),
                log: Vec::new(),
                air: Vec::new(),
                pending: Vec::new(),
                rng: config.seed | 1,
                next_node: 0x1000_0001,
            }),
            config,
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let s = shared.clone();
        let _ = std::thread::Builder::new()
            .name("lora-sim-air".into())
            .spawn(move || air_loop(&s));
        SimChannel { shared }
    }

    /// Adds a radio (linked to nobody yet) and starts its device thread.
    pub fn add_radio(&self) -> std::io::Result<SimRadio> {
        let (master, slave) = TTYPort::pair().map_err(std::io::Error::other)?;
        let path = slave
            .name()
            .map(PathBuf::from)
            .ok_or_else(|| std::io::Error::other("pty without a name"))?;
        let mut reader = master.try_clone_native().map_err(std::io::Error::other)?;
        reader
            .set_timeout(Duration::from_millis(50))
            .map_err(std::io::Error::other)?;
        let port = Arc::new(Mutex::new(master));
        let node = {
            let mut st = lock(&self.shared.state);
            let node = st.next_node;
            st.next_node += 1;
            st.radios.insert(
                node,
                Radio {
                    port: port.clone(),
                    busy_until: Instant::now(),
                },
            );
            node
        };
        let shared = self.shared.clone();
        let p2 = port.clone();
        let unplugged = Arc::new(AtomicBool::new(false));
        let u2 = unplugged.clone();
        let thread = std::thread::Builder::new()
            .name(format!("lora-sim-{node:x}"))
            .spawn(move || device_loop(&shared, node, reader, &p2, &u2))?;
        Ok(SimRadio {
            node,
            path,
            port,
            unplugged,
            thread: Some(thread),
            shared: self.shared.clone(),
            _slave: slave,
        })
    }

    /// Lets `a` and `b` hear each other, losing each packet with probability `loss`.
    pub fn link(&self, a: u32, b: u32, loss: f64) {
        let mut st = lock(&self.shared.state);
        st.links.insert((a, b), loss);
        st.links.insert((b, a), loss);
    }

    /// Cuts the link between `a` and `b`.
    pub fn unlink(&self, a: u32, b: u32) {
        let mut st = lock(&self.shared.state);
        st.links.remove(&(a, b));
        st.links.remove(&(b, a));
    }

    /// Every transmission so far.
    pub fn transmissions(&self) -> Vec<Transmission> {
        lock(&self.shared.state).log.clone()
    }

    /// Total airtime of `node`, ms.
    pub fn airtime_ms(&self, node: u32) -> u64 {
        self.transmissions()
            .iter()
            .filter(|t| t.node == node)
            .map(|t| t.airtime_ms)
            .sum()
    }

    /// Total payload bytes `node` put on the air.
    pub fn payload_bytes(&self, node: u32) -> usize {
        self.transmissions()
            .iter()
            .filter(|t| t.node == node)
            .map(|t| t.payload.len())
            .sum()
    }

    /// The most airtime `node` used in any window of `window_ms` (wall clock, scaled
    /// back to radio time), counting partial overlaps.
    pub fn max_window_airtime_ms(&self, node: u32, window_ms: u64) -> u64 {
        let scale = self.shared.config.time_scale.max(1e-6);
        let txs: Vec<(f64, f64)> = self
            .transmissions()
            .iter()
            .filter(|t| t.node == node)
            .map(|t| (t.start_ms as f64 / scale, t.airtime_ms as f64))
            .collect();
        let w = window_ms as f64;
        let mut worst: f64 = 0.0;
        for &(s, _) in &txs {
            for end in [s + w, s + 0.001] {
                let lo = end - w;
                let sum: f64 = txs
                    .iter()
                    .map(|&(a, d)| ((a + d).min(end) - a.max(lo)).max(0.0))
                    .sum();
                worst = worst.max(sum);
            }
        }
        worst.ceil() as u64
    }
}

impl Drop for SimChannel {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }
}

fn write_to(port: &Arc<Mutex<TTYPort>>, msg: &FromRadio) {
    let bytes = encode_from_radio(msg);
    let mut p = lock(port);
    let _ = p.write_all(&bytes);
    let _ = p.flush();
}

fn device_loop(
    shared: &Arc<Shared>,
    node: u32,
    mut reader: TTYPort,
    port: &Arc<Mutex<TTYPort>>,
    unplugged: &AtomicBool,
) {
    let mut dec = FrameDecoder::new();
    let mut buf = [0u8; 1024];
    let mut record_id = 1u32;
    while !shared.closed.load(Ordering::Acquire) && !unplugged.load(Ordering::Acquire) {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO while no client has the pty open: wait for one.
            Err(_) => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        for d in dec.push::<ToRadio>(&buf[..n]) {
            let Decoded::Message(m) = d else { continue };
            match m.payload_variant {
                Some(ToRadioVariant::WantConfigId(id)) => {
                    for v in [
                        FromRadioVariant::MyInfo(MyNodeInfo { my_node_num: node }),
                        FromRadioVariant::NodeInfo(NodeInfo {
                            num: node,
                            user: Some(User {
                                id: format!("!{node:08x}"),
                                long_name: format!("sim {node:x}"),
                                short_name: "sim".into(),
                            }),
                        }),
                        FromRadioVariant::ConfigCompleteId(id),
                    ] {
                        record_id += 1;
                        write_to(
                            port,
                            &FromRadio {
                                id: record_id,
                                payload_variant: Some(v),
                            },
                        );
                    }
                }
                Some(ToRadioVariant::Packet(p)) => transmit(shared, node, p, 0, false),
                _ => {}
            }
        }
    }
}

fn transmit(
    shared: &Arc<Shared>,
    node: u32,
    mut packet: MeshPacket,
    retries_done: u8,
    retransmission: bool,
) {
    let cfg = &shared.config;
    let len = packet.decoded.as_ref().map_or(0, |d| d.payload.len());
    let airtime = cfg.radio.packet_airtime_ms(len);
    let dur = Duration::from_secs_f64(airtime as f64 / 1000.0 * cfg.time_scale);
    let mut st = lock(&shared.state);
    let now = Instant::now();
    // The firmware listens before talking (CSMA): it waits for transmissions it hears to
    // end, then a random contention delay of 0-3 slots of 10 ms (radio time).
    let heard_busy = st
        .air
        .iter()
        .filter(|&&(_, e, n)| n != node && e > now && st.links.contains_key(&(n, node)))
        .map(|&(_, e, _)| e)
        .max();
    let contention =
        Duration::from_secs_f64((rand(&mut st.rng) % 4) as f64 * 0.010 * cfg.time_scale);
    let Some(r) = st.radios.get_mut(&node) else {
        return;
    };
    let mut start = r.busy_until.max(now);
    if let Some(e) = heard_busy {
        start = start.max(e) + contention;
    }
    r.busy_until = start + dur;
    packet.from = node;
    if packet.hop_start == 0 {
        packet.hop_start = packet.hop_limit;
    }
    let id = st.log.len();
    st.log.push(Transmission {
        node,
        to: packet.to,
        start_ms: u64::try_from(start.duration_since(shared.epoch).as_millis()).unwrap_or(u64::MAX),
        airtime_ms: airtime,
        payload: packet
            .decoded
            .as_ref()
            .map(|d| d.payload.clone())
            .unwrap_or_default(),
        delivered: Vec::new(),
        retransmission,
    });
    st.air.push((start, start + dur, node));
    let retries_left = if packet.want_ack && packet.to != BROADCAST {
        cfg.retransmissions.saturating_sub(retries_done)
    } else {
        0
    };
    st.pending.push(Pending {
        id,
        node,
        start,
        end: start + dur,
        packet,
        retries_left,
    });
    drop(st);
    shared.wake.notify_all();
}

/// The firmware's report on a `want_ack` packet, as its client receives it.
fn routing_packet(from: u32, to: u32, request_id: u32, error_reason: i32) -> FromRadio {
    FromRadio {
        id: 0,
        payload_variant: Some(FromRadioVariant::Packet(MeshPacket {
            from,
            to,
            decoded: Some(Data {
                portnum: ROUTING_APP,
                payload: Routing { error_reason }.encode_to_vec(),
                want_response: false,
                request_id,
            }),
            ..Default::default()
        })),
    }
}

fn air_loop(shared: &Arc<Shared>) {
    let mut st = lock(&shared.state);
    loop {
        if shared.closed.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let next = st.pending.iter().map(|p| p.end).min();
        match next {
            None => {
                st = shared
                    .wake
                    .wait_timeout(st, Duration::from_millis(200))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            Some(end) if end > now => {
                st = shared
                    .wake
                    .wait_timeout(st, end - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
                continue;
            }
            Some(_) => {}
        }
        let idx = st
            .pending
            .iter()
            .enumerate()
            .min_by_key(|(_, p)| p.end)
            .map(|(i, _)| i);
        let Some(idx) = idx else { continue };
        let p = st.pending.swap_remove(idx);
        let mut delivered = Vec::new();
        let receivers: Vec<u32> = st.radios.keys().copied().filter(|r| *r != p.node).collect();
        for r in receivers {
            let Some(&loss) = st.links.get(&(p.node, r)) else {
                continue;
            };
            if shared.config.collisions {
                let collided = st.air.iter().any(|&(s, e, n)| {
                    n != p.node
                        && s < p.end
                        && p.start < e
                        && (n == r || st.links.contains_key(&(n, r)))
                });
                if collided {
                    continue;
                }
            }
            let roll = (rand(&mut st.rng) >> 11) as f64 / (1u64 << 53) as f64;
            if roll < loss {
                continue;
            }
            if p.packet.to != BROADCAST && p.packet.to != r {
                // Heard, but the firmware only passes its own and broadcast packets up.
                continue;
            }
            delivered.push(r);
        }
        let mut retransmit = None;
        let mut verdict = None;
        if p.packet.want_ack && p.packet.to != BROADCAST {
            if delivered.contains(&p.packet.to) {
                verdict = Some((p.packet.to, ROUTING_ERROR_NONE));
            } else if p.retries_left > 0 {
                retransmit = Some(p.packet.clone());
            } else {
                verdict = Some((p.node, ROUTING_ERROR_MAX_RETRANSMIT));
            }
        }
        let sender_port = verdict.and_then(|_| st.radios.get(&p.node).map(|x| x.port.clone()));
        if let Some(t) = st.log.get_mut(p.id) {
            t.delivered = delivered.clone();
        }
        let ports: Vec<Arc<Mutex<TTYPort>>> = delivered
            .iter()
            .filter_map(|r| st.radios.get(r).map(|x| x.port.clone()))
            .collect();
        // Forget airtime records nobody can overlap any more.
        let horizon = now.checked_sub(Duration::from_secs(60)).unwrap_or(now);
        st.air.retain(|&(_, e, _)| e > horizon);
        let rx_time = u32::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        )
        .unwrap_or(0);
        drop(st);
        for port in ports {
            let mut pkt = p.packet.clone();
            pkt.rx_time = rx_time;
            pkt.rx_snr = 6.5;
            pkt.rx_rssi = -90;
            write_to(
                &port,
                &FromRadio {
                    id: 0,
                    payload_variant: Some(FromRadioVariant::Packet(pkt)),
                },
            );
        }
        if let (Some((from, error_reason)), Some(port)) = (verdict, sender_port) {
            write_to(
                &port,
                &routing_packet(from, p.node, p.packet.id, error_reason),
            );
        }
        if let Some(pkt) = retransmit {
            let done = shared.config.retransmissions - p.retries_left + 1;
            // Firmware-like random backoff before the retransmission.
            let backoff = {
                let mut st = lock(&shared.state);
                rand(&mut st.rng) % 5
            };
            let wait = Duration::from_secs_f64(
                (backoff + 1) as f64 * shared.config.radio.max_packet_airtime_ms() as f64 / 4000.0
                    * shared.config.time_scale,
            );
            let s = shared.clone();
            let node = p.node;
            let _ = std::thread::Builder::new()
                .name("lora-sim-retx".into())
                .spawn(move || {
                    std::thread::sleep(wait);
                    transmit(&s, node, pkt, done, true);
                });
        }
        st = lock(&shared.state);
    }
}
