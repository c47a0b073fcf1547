//! Bytes on air and airtime of ecomesh LoRa frames at Meshtastic LongFast under the EU868
//! budget, measured by running real protocol engines in virtual time (no radio needed):
//!
//! ```text
//! cargo run -p ecomesh-transport-lora --example airtime
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_lora::airtime::{LoraParams, phy_len_of};
use ecomesh_transport_lora::engine::{Engine, EngineConfig, EngineEvent};
use ecomesh_transport_lora::frame::{self, Body, NotificationHeader, PermissionGrant};
use ecomesh_transport_lora::proto::BROADCAST;
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Priority};

struct Line {
    nodes: Vec<Engine>,
    now: u64,
    /// (sender index, payload, virtual time) of every transmission.
    air: Vec<(usize, Vec<u8>, u64)>,
    delivered: HashMap<MessageId, u64>,
}

impl Line {
    fn new(n: usize, config: &EngineConfig) -> Line {
        let nodes = (0..n)
            .map(|i| {
                Engine::new(
                    Identity::generate().unwrap(),
                    Arc::new(AccessPolicy::Open),
                    config.clone(),
                    0,
                    i as u64 * 104_729 + 3,
                )
            })
            .collect();
        Line {
            nodes,
            now: 0,
            air: Vec::new(),
            delivered: HashMap::new(),
        }
    }

    fn run(&mut self, until: u64) {
        let n = self.nodes.len();
        while self.now < until {
            let now = self.now;
            let mut sent = Vec::new();
            for (i, e) in self.nodes.iter_mut().enumerate() {
                e.handle_timeout(now);
                while let Some(t) = e.poll_transmit(now) {
                    sent.push((i, t));
                }
            }
            for (i, t) in sent {
                self.air.push((i, t.payload.clone(), now));
                let mut delivered = false;
                for j in [i.wrapping_sub(1), i + 1] {
                    if j < n && (t.to == BROADCAST || t.to == 100 + j as u32) {
                        delivered = true;
                        let _ = self.nodes[j].handle_radio(100 + i as u32, &t.payload, 0, now);
                    }
                }
                // The radio's acknowledgement from the next hop (no loss on this line).
                if let Some(ticket) = t.ticket {
                    self.nodes[i].handle_hop_result(ticket, delivered, now);
                }
            }
            for e in &mut self.nodes {
                while let Some(ev) = e.poll_event() {
                    if let EngineEvent::Message { message, .. } = ev {
                        self.delivered.entry(message.id).or_insert(now);
                    }
                }
            }
            let next = self
                .nodes
                .iter_mut()
                .map(|e| e.next_deadline(now))
                .min()
                .unwrap_or(until);
            self.now = next.max(now + 1).min(until);
        }
    }

    fn id(&self, i: usize) -> PeerId {
        self.nodes[i].peer_id()
    }
}

fn ms(params: &LoraParams, app_len: usize) -> f64 {
    params.airtime_us(phy_len_of(app_len)) as f64 / 1000.0
}

fn main() {
    let params = LoraParams::LONG_FAST;
    let config = EngineConfig::default();
    println!(
        "LongFast: SF{} BW {} kHz CR 4/{} preamble {}; EU868 869.525 MHz budget {}% of {} s (allowance {} s); Meshtastic header {} B + Data protobuf 5-6 B per packet",
        params.spreading_factor,
        params.bandwidth_hz / 1000,
        params.coding_rate + 4,
        params.preamble,
        config.duty.permille / 10,
        config.duty.window_ms / 1000,
        config.duty.allowance_ms() / 1000,
        ecomesh_transport_lora::airtime::MESHTASTIC_HEADER_LEN,
    );

    let mut line = Line::new(5, &config);
    // Sessions and routes form in (virtual) minutes of beacons.
    line.run(400_000);
    let (a, b, e) = (line.id(0), line.id(1), line.id(4));
    assert!(
        line.nodes[0].reachable(&e, line.now),
        "no route along the line"
    );

    // Single frames between neighbours.
    let mark = line.air.len();
    line.nodes[0]
        .send_compact(
            b,
            Body::Notification(NotificationHeader {
                collection: 0xDEAD_BEEF,
                document: 0x0123_4567_89AB_CDEF,
                change: 2,
                at_secs: 1_790_000_000,
            }),
            Priority::High,
            line.now,
        )
        .unwrap();
    line.run(line.now + 20_000);
    let notif = line.air[mark..]
        .iter()
        .find(|(i, p, _)| *i == 0 && p[0] == frame::K_SEALED)
        .unwrap()
        .1
        .len();
    let mark = line.air.len();
    line.nodes[0]
        .send_compact(
            b,
            Body::Grant(PermissionGrant {
                grantee: b,
                resource: 0x0123_4567_89AB_CDEF,
                actions: 3,
                expires_secs: 1_800_000_000,
            }),
            Priority::High,
            line.now,
        )
        .unwrap();
    line.run(line.now + 20_000);
    let grant = line.air[mark..]
        .iter()
        .find(|(i, p, _)| *i == 0 && p[0] == frame::K_SEALED)
        .unwrap()
        .1
        .len();
    let presence = line
        .air
        .iter()
        .find(|(_, p, _)| p[0] == frame::K_PRESENCE)
        .unwrap()
        .1
        .len();
    let announce = line
        .air
        .iter()
        .find(|(_, p, _)| p[0] == frame::K_ANNOUNCE)
        .unwrap()
        .1
        .len();
    let hs: Vec<usize> = [frame::K_HS1, frame::K_HS2, frame::K_HS3]
        .iter()
        .map(|k| {
            line.air
                .iter()
                .find(|(_, p, _)| p[0] == *k)
                .map_or(0, |x| x.1.len())
        })
        .collect();

    println!();
    println!("| frame | budget | payload B | on-air PHY B | airtime ms |");
    println!("|---|---|---|---|---|");
    for (name, budget, len) in [
        ("presence beacon", "32", presence),
        ("notification header", "64", notif),
        ("permission grant", "96", grant),
        ("announce (key, every 10th beacon)", "-", announce),
        ("Noise IK msg 1 (once per neighbour)", "-", hs[0]),
        ("Noise IK msg 2", "-", hs[1]),
        ("Noise IK msg 3", "-", hs[2]),
    ] {
        println!(
            "| {name} | {budget} | {len} | {} | {:.1} |",
            phy_len_of(len),
            ms(&params, len)
        );
    }

    // A 1 KB CRDT delta as a signed NetworkMessage from A to E, 4 hops.
    let delta = NetworkMessage {
        id: MessageId::new_v4([7; 16]),
        message_type: "sync-event".into(),
        payload: vec![0x5A; 1024],
        sender: a,
        recipient: Some(e),
        timestamp_ms: 1_790_000_000_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: ecomesh_types::Signature([0x11; 64]),
    };
    let compact = ecomesh_wire::encode_message_compact(&delta).len();
    let full = ecomesh_wire::encode_message(&delta).len();
    let mark = line.air.len();
    let t0 = line.now;
    line.nodes[0]
        .send_message(e, &delta, Priority::Normal, line.now)
        .unwrap();
    line.run(line.now + 600_000);
    let t1 = *line.delivered.get(&delta.id).expect("delta delivered");
    let frames: Vec<&(usize, Vec<u8>, u64)> = line.air[mark..]
        .iter()
        .filter(|(_, p, t)| (p[0] == frame::K_SEALED || p[0] == frame::K_SEALED_PART) && *t <= t1)
        .collect();
    if std::env::var_os("AIRTIME_DEBUG").is_some() {
        for f in &frames {
            println!("{} {:x} {} {}", f.0, f.1[0], f.1.len(), f.2);
        }
    }
    let bytes: usize = frames.iter().map(|f| f.1.len()).sum();
    let phy: usize = frames.iter().map(|f| phy_len_of(f.1.len())).sum();
    let air: f64 = frames.iter().map(|f| ms(&params, f.1.len())).sum();
    // Floor: the 1024 payload bytes alone, per hop, packed in full Meshtastic packets.
    let floor_bytes = 1024 * 4;
    let per_hop_packets: Vec<usize> = (0..1024usize.div_ceil(233))
        .map(|i| (1024 - i * 233).min(233))
        .collect();
    let floor_air: f64 = 4.0 * per_hop_packets.iter().map(|l| ms(&params, *l)).sum::<f64>();
    println!();
    println!(
        "1 KB CRDT delta A->E over 4 hops (signed NetworkMessage: {full} B full encoding, {compact} B compact, {} frames per hop):",
        frames.len() / 4
    );
    println!("| | payload B on air | PHY B on air | airtime s | ratio to floor (airtime) |");
    println!("|---|---|---|---|---|");
    println!(
        "| ecomesh frames (4 hops) | {bytes} | {phy} | {:.2} | {:.2} |",
        air / 1000.0,
        air / floor_air
    );
    println!(
        "| floor: 1024 B payload x 4 hops in full packets | {floor_bytes} | {} | {:.2} | 1.00 |",
        4 * per_hop_packets
            .iter()
            .map(|l| phy_len_of(*l))
            .sum::<usize>(),
        floor_air / 1000.0
    );
    println!(
        "delivery latency in this harness (no loss, no half-duplex or collisions, hops pipelined): {:.1} s; with one transmitter at a time on the channel at least the total airtime, {:.1} s; per-hop airtime {:.1} s = {:.1}% of the 10% band's hourly allowance ({:.0}% of the 1% bands')",
        (t1 - t0) as f64 / 1000.0,
        air / 1000.0,
        air / 4000.0,
        air / 4.0 / config.duty.allowance_ms() as f64 * 100.0,
        air / 4.0 / 36_000.0 * 100.0,
    );
    println!(
        "deltas of 1 KB one node can send per hour within the budget: {:.0} (10% band), {:.0} (1% bands)",
        config.duty.allowance_ms() as f64 / (air / 4.0),
        36_000.0 / (air / 4.0)
    );
}
