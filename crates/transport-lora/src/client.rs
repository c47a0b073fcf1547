//! The Meshtastic serial API client, sans-io: the want-config handshake, heartbeats,
//! turning our frames into `ToRadio` packets and `FromRadio` packets into frames.

use crate::engine::Transmit;
#[cfg(doc)]
use crate::proto::ROUTING_ERROR_NONE;
use crate::proto::{
    Data, FromRadio, FromRadioVariant, Heartbeat, MeshPacket, PRIORITY_BACKGROUND,
    PRIORITY_DEFAULT, PRIORITY_RELIABLE, PRIVATE_APP, ROUTING_APP, Routing, ToRadio,
    ToRadioVariant,
};
use crate::serial::{Decoded, FrameDecoder, encode_to_radio};
use ecomesh_types::Priority;
use prost::Message as _;

/// What the radio told us.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The config download finished: the radio is ready and this is its node number.
    Ready {
        /// Our node number.
        node: u32,
    },
    /// A packet on the private application port from another node.
    Packet {
        /// Sender node number.
        from: u32,
        /// Destination (ours or broadcast).
        to: u32,
        /// The frame.
        payload: Vec<u8>,
        /// Hops the firmware relayed it (`hop_start - hop_limit`).
        hops: u8,
    },
    /// The firmware's verdict on one of our `want_ack` packets (a `ROUTING_APP` packet
    /// whose `request_id` names it): acknowledged by its destination
    /// (`error_reason` [`ROUTING_ERROR_NONE`]) or given up (any other `Routing.Error`,
    /// typically `MAX_RETRANSMIT`).
    Routing {
        /// The packet id [`RadioClient::packet`] returned.
        request_id: u32,
        /// `Routing.Error`.
        error_reason: i32,
    },
    /// The radio rebooted: the config handshake starts over.
    Rebooted,
    /// A serial frame was dropped (garbage, oversized, undecodable).
    Dropped(&'static str),
}

/// The client state.
#[derive(Debug)]
pub struct RadioClient {
    decoder: FrameDecoder,
    config_id: u32,
    my_node: Option<u32>,
    ready: bool,
    heartbeat_ms: u64,
    last_write: u64,
    next_packet_id: u32,
}

impl RadioClient {
    /// A client that sends a heartbeat after `heartbeat_ms` of silence; `nonce` is the
    /// `want_config_id` (random, non-zero) and seeds packet ids.
    pub fn new(heartbeat_ms: u64, nonce: u32) -> Self {
        RadioClient {
            decoder: FrameDecoder::new(),
            config_id: nonce.max(1),
            my_node: None,
            ready: false,
            heartbeat_ms,
            last_write: 0,
            next_packet_id: nonce.rotate_left(16).max(1),
        }
    }

    /// Whether the config handshake finished.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Our node number once known.
    pub fn node(&self) -> Option<u32> {
        self.my_node
    }

    /// Bytes skipped on the line so far (not part of any frame).
    pub fn skipped(&self) -> u64 {
        self.decoder.skipped()
    }

    /// The bytes that start the session: `want_config_id`.
    pub fn start(&mut self, now: u64) -> Vec<u8> {
        self.ready = false;
        self.last_write = now;
        encode_to_radio(&ToRadio {
            payload_variant: Some(ToRadioVariant::WantConfigId(self.config_id)),
        })
    }

    /// The bytes that tell the radio we leave.
    pub fn disconnect(&mut self) -> Vec<u8> {
        encode_to_radio(&ToRadio {
            payload_variant: Some(ToRadioVariant::Disconnect(true)),
        })
    }

    /// A heartbeat if the line was quiet for the heartbeat period.
    pub fn poll_heartbeat(&mut self, now: u64) -> Option<Vec<u8>> {
        if now < self.last_write.saturating_add(self.heartbeat_ms) {
            return None;
        }
        self.last_write = now;
        Some(encode_to_radio(&ToRadio {
            payload_variant: Some(ToRadioVariant::Heartbeat(Heartbeat {})),
        }))
    }

    /// When the next heartbeat is due.
    pub fn next_heartbeat(&self) -> u64 {
        self.last_write.saturating_add(self.heartbeat_ms)
    }

    /// The serial bytes that send `t`, with the packet id they carry (a later
    /// [`ClientEvent::Routing`] names it when `t.want_ack` is set).
    pub fn packet(&mut self, t: &Transmit, now: u64) -> (u32, Vec<u8>) {
        self.last_write = now;
        self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
        let priority = match t.priority {
            Priority::Critical | Priority::High => PRIORITY_RELIABLE,
            Priority::Normal => PRIORITY_DEFAULT,
            _ => PRIORITY_BACKGROUND,
        };
        let id = self.next_packet_id;
        let bytes = encode_to_radio(&ToRadio {
            payload_variant: Some(ToRadioVariant::Packet(MeshPacket {
                to: t.to,
                decoded: Some(Data {
                    portnum: PRIVATE_APP,
                    payload: t.payload.clone(),
                    want_response: false,
                    request_id: 0,
                }),
                id: self.next_packet_id,
                hop_limit: u32::from(t.hop_limit),
                want_ack: t.want_ack,
                priority,
                ..Default::default()
            })),
        });
        (id, bytes)
    }

    /// Feeds bytes read from the serial line.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<ClientEvent> {
        let mut out = Vec::new();
        for d in self.decoder.push::<FromRadio>(bytes) {
            match d {
                Decoded::Dropped { reason } => out.push(ClientEvent::Dropped(reason)),
                Decoded::Message(m) => match m.payload_variant {
                    Some(FromRadioVariant::MyInfo(i)) => self.my_node = Some(i.my_node_num),
                    Some(FromRadioVariant::ConfigCompleteId(id)) if id == self.config_id => {
                        if let Some(node) = self.my_node {
                            self.ready = true;
                            out.push(ClientEvent::Ready { node });
                        }
                    }
                    Some(FromRadioVariant::Rebooted(_)) => {
                        self.ready = false;
                        out.push(ClientEvent::Rebooted);
                    }
                    Some(FromRadioVariant::Packet(p)) => {
                        let Some(data) = p.decoded else { continue };
                        if data.portnum == ROUTING_APP {
                            // Acks come from the destination, failures from our own radio.
                            if data.request_id != 0 && Some(p.to) == self.my_node {
                                match Routing::decode(data.payload.as_slice()) {
                                    Ok(r) => out.push(ClientEvent::Routing {
                                        request_id: data.request_id,
                                        error_reason: r.error_reason,
                                    }),
                                    Err(_) => out.push(ClientEvent::Dropped("undecodable routing")),
                                }
                            }
                            continue;
                        }
                        if data.portnum != PRIVATE_APP || Some(p.from) == self.my_node {
                            continue;
                        }
                        let hops = u8::try_from(p.hop_start.saturating_sub(p.hop_limit))
                            .unwrap_or(u8::MAX);
                        out.push(ClientEvent::Packet {
                            from: p.from,
                            to: p.to,
                            payload: data.payload,
                            hops,
                        });
                    }
                    _ => {}
                },
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BROADCAST, MyNodeInfo, NodeInfo, User};
    use crate::serial::encode_from_radio;

    fn fr(v: FromRadioVariant) -> Vec<u8> {
        encode_from_radio(&FromRadio {
            id: 1,
            payload_variant: Some(v),
        })
    }

    #[test]
    fn handshake_packets_and_hops() {
        let mut c = RadioClient::new(1000, 77);
        let start = c.start(0);
        assert_eq!(&start[4..], &[0x18, 77]);
        let mut line = fr(FromRadioVariant::MyInfo(MyNodeInfo { my_node_num: 5 }));
        line.extend(fr(FromRadioVariant::NodeInfo(NodeInfo {
            num: 5,
            user: Some(User {
                id: "!00000005".into(),
                long_name: "x".into(),
                short_name: "x".into(),
            }),
        })));
        line.extend(fr(FromRadioVariant::ConfigCompleteId(76)));
        assert!(c.receive(&line).is_empty(), "a stale config id is ignored");
        let ev = c.receive(&fr(FromRadioVariant::ConfigCompleteId(77)));
        assert_eq!(ev, vec![ClientEvent::Ready { node: 5 }]);
        let pkt = |from, port, hop_start, hop_limit| {
            fr(FromRadioVariant::Packet(MeshPacket {
                from,
                to: BROADCAST,
                decoded: Some(Data {
                    portnum: port,
                    payload: vec![0xE1],
                    want_response: false,
                    request_id: 0,
                }),
                hop_start,
                hop_limit,
                ..Default::default()
            }))
        };
        let ev = c.receive(
            &[
                pkt(9, PRIVATE_APP, 3, 1),
                pkt(9, 1, 3, 3),
                pkt(5, PRIVATE_APP, 0, 0),
            ]
            .concat(),
        );
        assert_eq!(
            ev,
            vec![ClientEvent::Packet {
                from: 9,
                to: BROADCAST,
                payload: vec![0xE1],
                hops: 2
            }]
        );
        assert!(c.poll_heartbeat(999).is_none());
        assert_eq!(c.poll_heartbeat(1000).unwrap(), [0x94, 0xC3, 0, 2, 0x3A, 0]);
    }

    #[test]
    fn routing_acks_and_failures_name_our_packets() {
        let mut c = RadioClient::new(1000, 7);
        c.start(0);
        let mut line = fr(FromRadioVariant::MyInfo(MyNodeInfo { my_node_num: 5 }));
        line.extend(fr(FromRadioVariant::ConfigCompleteId(7)));
        c.receive(&line);
        let t = Transmit {
            to: 9,
            payload: vec![1, 2],
            want_ack: true,
            hop_limit: 0,
            priority: Priority::Normal,
            ticket: Some(1),
        };
        let (id, _) = c.packet(&t, 0);
        let (id2, _) = c.packet(&t, 0);
        assert_ne!(id, id2, "every packet gets its own id");
        let routing = |from, to, request_id, payload: Vec<u8>| {
            fr(FromRadioVariant::Packet(MeshPacket {
                from,
                to,
                decoded: Some(Data {
                    portnum: ROUTING_APP,
                    payload,
                    want_response: false,
                    request_id,
                }),
                ..Default::default()
            }))
        };
        let nak = Routing {
            error_reason: crate::proto::ROUTING_ERROR_MAX_RETRANSMIT,
        }
        .encode_to_vec();
        let ev = c.receive(
            &[
                // The destination's ack, our radio's own failure report.
                routing(9, 5, id, Routing { error_reason: 0 }.encode_to_vec()),
                routing(5, 5, id2, nak.clone()),
                // Someone else's ack, and one naming no packet: not ours.
                routing(9, 6, id, nak.clone()),
                routing(9, 5, 0, nak),
                // Garbage where the Routing message should be.
                routing(9, 5, id, vec![0xFF, 0xFF, 0xFF]),
            ]
            .concat(),
        );
        assert_eq!(
            ev,
            vec![
                ClientEvent::Routing {
                    request_id: id,
                    error_reason: 0
                },
                ClientEvent::Routing {
                    request_id: id2,
                    error_reason: 5
                },
                ClientEvent::Dropped("undecodable routing"),
            ]
        );
    }
}
