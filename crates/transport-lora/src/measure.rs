//! Bytes on air and airtime of real protocol engines on a lossless line of radios in
//! virtual time (no radio needed). The `airtime` example and the benches' compare report
//! (area `lora`) both measure through this module, so they agree.
//!
//! The line's radios hear only their neighbours; every unicast packet reaches its next
//! hop and the radio acknowledges it at once. There are no collisions or half-duplex
//! waits, so the delivery latency is optimistic; the airtime is exact (the Semtech
//! formula over every frame that went on air).

use std::collections::HashMap;
use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Priority, Signature};

use crate::airtime::{LoraParams, MAX_APP_PAYLOAD, phy_len_of};
use crate::engine::{Engine, EngineConfig, EngineEvent};
use crate::error::LoraError;
use crate::frame;
use crate::proto::BROADCAST;

/// One transmission on the line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OnAir {
    /// Index of the sending node.
    pub node: usize,
    /// The frame (the Meshtastic `Data.payload`).
    pub payload: Vec<u8>,
    /// Virtual time, ms.
    pub at: u64,
}

/// Engines on a line (node `i` hears `i - 1` and `i + 1`), in virtual time.
pub struct Line {
    /// The engines, in line order.
    pub nodes: Vec<Engine>,
    /// Virtual time, ms.
    pub now: u64,
    /// Every transmission so far.
    pub air: Vec<OnAir>,
    delivered: HashMap<MessageId, u64>,
}

impl std::fmt::Debug for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Line")
            .field("nodes", &self.nodes.len())
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Line {
    /// `n` engines with fresh identities and `config`, at time 0. Deterministic apart
    /// from the identities' keys (and so the frames' ciphertext, never their sizes).
    pub fn new(n: usize, config: &EngineConfig) -> Result<Line, LoraError> {
        let nodes = (0..n)
            .map(|i| {
                Ok(Engine::new(
                    Identity::generate()?,
                    Arc::new(AccessPolicy::Open),
                    config.clone(),
                    0,
                    i as u64 * 104_729 + 3,
                ))
            })
            .collect::<Result<Vec<_>, LoraError>>()?;
        Ok(Line {
            nodes,
            now: 0,
            air: Vec::new(),
            delivered: HashMap::new(),
        })
    }

    /// Runs every engine until virtual time `until`.
    pub fn run(&mut self, until: u64) {
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
                let mut delivered = false;
                for j in [i.wrapping_sub(1), i + 1] {
                    if j < n && (t.to == BROADCAST || t.to == 100 + j as u32) {
                        delivered = true;
                        let _ = self.nodes[j].handle_radio(100 + i as u32, &t.payload, 0, now);
                    }
                }
                // The radio's acknowledgement from the next hop.
                if let Some(ticket) = t.ticket {
                    self.nodes[i].handle_hop_result(ticket, delivered, now);
                }
                self.air.push(OnAir {
                    node: i,
                    payload: t.payload,
                    at: now,
                });
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

    /// The peer id of node `i`.
    pub fn id(&self, i: usize) -> PeerId {
        self.nodes[i].peer_id()
    }

    /// When the message `id` was delivered to its destination, if it was.
    pub fn delivered_at(&self, id: &MessageId) -> Option<u64> {
        self.delivered.get(id).copied()
    }
}

/// Airtime of one Meshtastic packet carrying `app_len` bytes, ms.
pub fn packet_ms(params: &LoraParams, app_len: usize) -> f64 {
    params.airtime_us(phy_len_of(app_len)) as f64 / 1000.0
}

/// The frame floor of `payload_len` bytes over `hops` hops: the payload alone, per hop,
/// packed in full Meshtastic packets (no header, tag or envelope of ours), ms.
pub fn floor_ms(params: &LoraParams, payload_len: usize, hops: usize) -> f64 {
    let per_hop: f64 = (0..payload_len.div_ceil(MAX_APP_PAYLOAD))
        .map(|i| {
            packet_ms(
                params,
                (payload_len - i * MAX_APP_PAYLOAD).min(MAX_APP_PAYLOAD),
            )
        })
        .sum();
    per_hop * hops as f64
}

/// What one message cost on the line.
#[derive(Clone, Debug)]
pub struct DeltaReport {
    /// Payload bytes of the message.
    pub payload_len: usize,
    /// Hops it took.
    pub hops: usize,
    /// Data frames (sealed frames and parts) that went on air until it was delivered.
    pub frames: usize,
    /// Their bytes (Meshtastic `Data.payload`).
    pub bytes: usize,
    /// Their PHY bytes (with the Meshtastic header and `Data` protobuf).
    pub phy_bytes: usize,
    /// Their airtime, ms.
    pub airtime_ms: f64,
    /// The frame floor ([`floor_ms`]), ms.
    pub floor_ms: f64,
    /// Virtual ms from the send to the delivery.
    pub latency_ms: u64,
}

impl DeltaReport {
    /// Airtime over the frame floor.
    pub fn ratio(&self) -> f64 {
        self.airtime_ms / self.floor_ms
    }

    /// Bytes per data frame that are not the message's payload (frame headers, tags,
    /// routing header, envelope), averaged over the frames.
    pub fn overhead_per_frame(&self) -> f64 {
        (self.bytes - self.payload_len * self.hops) as f64 / self.frames.max(1) as f64
    }
}

/// A signed CRDT delta of `payload_len` bytes from `from` to `to` as the mesh sends it.
pub fn delta_message(from: PeerId, to: PeerId, payload_len: usize) -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4([7; 16]),
        message_type: "sync-event".into(),
        payload: vec![0x5A; payload_len],
        sender: from,
        recipient: Some(to),
        timestamp_ms: 1_790_000_000_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature([0x11; 64]),
    }
}

/// Sends `message` from the line's first node to its last and runs until it is delivered
/// (at most 600 virtual seconds); counts the data frames that went on air meanwhile.
pub fn send_along(line: &mut Line, message: &NetworkMessage) -> Result<DeltaReport, LoraError> {
    let last = line.nodes.len() - 1;
    let dest = line.id(last);
    let params = line.nodes[0].config().radio;
    let mark = line.air.len();
    let t0 = line.now;
    line.nodes[0].send_message(dest, message, Priority::Normal, t0)?;
    line.run(t0 + 600_000);
    let t1 = line
        .delivered_at(&message.id)
        .ok_or(LoraError::Timeout("delivery along the line"))?;
    let frames: Vec<&OnAir> = line.air[mark..]
        .iter()
        .filter(|f| matches!(f.payload[0], frame::K_SEALED | frame::K_SEALED_PART) && f.at <= t1)
        .collect();
    Ok(DeltaReport {
        payload_len: message.payload.len(),
        hops: last,
        frames: frames.len(),
        bytes: frames.iter().map(|f| f.payload.len()).sum(),
        phy_bytes: frames.iter().map(|f| phy_len_of(f.payload.len())).sum(),
        airtime_ms: frames
            .iter()
            .map(|f| packet_ms(&params, f.payload.len()))
            .sum(),
        floor_ms: floor_ms(&params, message.payload.len(), last),
        latency_ms: t1 - t0,
    })
}

/// A line of `hops + 1` engines with `config`, run until routes span it (400 virtual
/// seconds of beacons and handshakes).
pub fn formed_line(hops: usize, config: &EngineConfig) -> Result<Line, LoraError> {
    let mut line = Line::new(hops + 1, config)?;
    line.run(400_000);
    let last = line.id(hops);
    if !line.nodes[0].reachable(&last, line.now) {
        return Err(LoraError::Unreachable(last));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_one_kilobyte_delta_over_four_hops_is_within_1_2x_its_frame_floor() {
        let config = EngineConfig::default();
        let mut line = formed_line(4, &config).unwrap();
        let m = delta_message(line.id(0), line.id(4), 1024);
        let r = send_along(&mut line, &m).unwrap();
        assert_eq!(r.frames, 4 * 6, "{r:?}");
        assert!(r.ratio() <= 1.2, "{r:?}");
    }
}
