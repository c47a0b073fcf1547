//! The engine on a simulated channel in virtual time (`Net`), and its unit tests.

use super::*;
use crate::airtime::{DutyBudget, LoraParams};
use crate::frag::ReassemblyLimits;
use crate::frame::{NotificationHeader, PermissionGrant};
use crate::sched::SchedulerConfig;
use ecomesh_types::{MessageId, Signature};

pub(crate) fn fast_config() -> EngineConfig {
    let radio = LoraParams::SHORT_TURBO;
    EngineConfig {
        radio,
        duty: DutyBudget {
            permille: 1000,
            window_ms: 3_600_000,
        },
        duty_guard_ms: radio.max_packet_airtime_ms(),
        scheduler: SchedulerConfig {
            slot_ms: 20,
            max_backoff_slots: 2,
            queue_limit: 512,
        },
        handshake_retry_ms: 2_000,
        handshake_timeout_ms: 20_000,
        ..EngineConfig::default()
    }
}

/// Engines on a lossless simulated channel with a link graph, in virtual time.
pub(crate) struct Net {
    pub(crate) nodes: Vec<Engine>,
    pub(crate) links: HashSet<(usize, usize)>,
    pub(crate) now: u64,
    pub(crate) events: Vec<Vec<EngineEvent>>,
    pub(crate) on_air: Vec<(usize, Vec<u8>)>,
    /// Tracked (data) unicast packets still to lose on a link `(from, to)`, as if
    /// every firmware retransmission of each collided; the sender's radio then
    /// reports the packet undelivered.
    pub(crate) lose: HashMap<(usize, usize), u32>,
}

impl Net {
    pub(crate) fn new(n: usize, config: EngineConfig) -> Net {
        let nodes = (0..n)
            .map(|i| {
                Engine::new(
                    Identity::generate().unwrap(),
                    Arc::new(AccessPolicy::Open),
                    config.clone(),
                    0,
                    i as u64 * 7919 + 1,
                )
            })
            .collect();
        Net {
            nodes,
            links: HashSet::new(),
            now: 0,
            events: vec![Vec::new(); n],
            on_air: Vec::new(),
            lose: HashMap::new(),
        }
    }

    pub(crate) fn link(&mut self, a: usize, b: usize) {
        self.links.insert((a, b));
        self.links.insert((b, a));
    }

    fn node_num(i: usize) -> u32 {
        100 + i as u32
    }

    /// Runs until `until` (virtual ms).
    pub(crate) fn run(&mut self, until: u64) {
        while self.now < until {
            let next = self
                .nodes
                .iter_mut()
                .map(|n| n.next_deadline(0))
                .min()
                .unwrap_or(until)
                .max(self.now)
                .min(until);
            self.now = next;
            let now = self.now;
            let mut sent = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                n.handle_timeout(now);
                while let Some(t) = n.poll_transmit(now) {
                    sent.push((i, t));
                }
            }
            for (i, t) in sent {
                let payload = t.payload.clone();
                self.on_air.push((i, payload.clone()));
                let mut delivered = false;
                for j in 0..self.nodes.len() {
                    if self.links.contains(&(i, j))
                        && (t.to == BROADCAST || t.to == Self::node_num(j))
                    {
                        if t.ticket.is_some()
                            && let Some(n) = self.lose.get_mut(&(i, j)).filter(|n| **n > 0)
                        {
                            *n -= 1;
                            continue;
                        }
                        delivered = true;
                        let _ = self.nodes[j].handle_radio(Self::node_num(i), &payload, 0, now);
                    }
                }
                if let Some(ticket) = t.ticket {
                    self.nodes[i].handle_hop_result(ticket, delivered, now);
                }
            }
            for (i, n) in self.nodes.iter_mut().enumerate() {
                while let Some(e) = n.poll_event() {
                    self.events[i].push(e);
                }
            }
            if self.now < until && self.nodes.iter_mut().all(|n| n.next_deadline(now) > until) {
                self.now = until;
            }
        }
    }

    pub(crate) fn id(&self, i: usize) -> PeerId {
        self.nodes[i].peer_id()
    }
}

pub(crate) fn message(
    sender: PeerId,
    recipient: Option<PeerId>,
    payload: Vec<u8>,
) -> NetworkMessage {
    NetworkMessage {
        id: MessageId::new_v4([9; 16]),
        message_type: "sync-event".into(),
        payload,
        sender,
        recipient,
        timestamp_ms: 1_790_000_000_000,
        ttl_secs: NetworkMessage::DEFAULT_TTL_SECS,
        hop_count: 0,
        max_hops: NetworkMessage::DEFAULT_MAX_HOPS,
        signature: Signature([0x5A; 64]),
    }
}

fn up(net: &Net, i: usize, peer: PeerId) -> bool {
    net.events[i]
        .iter()
        .any(|e| matches!(e, EngineEvent::PeerUp { peer: p, .. } if *p == peer))
}

/// Messages node `i` received; link-authenticated ones with their signature put back
/// from `sent` (they travel without it), so tests compare them with what was sent.
fn got(net: &Net, i: usize) -> Vec<NetworkMessage> {
    net.events[i]
        .iter()
        .filter_map(|e| match e {
            EngineEvent::Message {
                message,
                link_authenticated,
                from,
                ..
            } => {
                if *link_authenticated {
                    assert_eq!(message.sender, *from, "link-authenticated: from its sender");
                    assert_eq!(message.signature, ecomesh_types::Signature::UNSIGNED);
                }
                Some(message.clone())
            }
            _ => None,
        })
        .collect()
}

/// `m` as a direct neighbour receives it: without its signature.
fn unsigned(m: &NetworkMessage) -> NetworkMessage {
    NetworkMessage {
        signature: ecomesh_types::Signature::UNSIGNED,
        ..m.clone()
    }
}

#[test]
fn neighbours_connect_by_themselves_and_exchange_messages() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(10_000);
    let (a, b) = (net.id(0), net.id(1));
    assert!(up(&net, 0, b) && up(&net, 1, a));
    let m = message(a, Some(b), vec![1; 40]);
    net.nodes[0]
        .send_message(b, &m, Priority::Normal, net.now)
        .unwrap();
    let big = message(a, Some(b), vec![2; 1000]);
    net.nodes[0]
        .send_message(b, &big, Priority::Normal, net.now)
        .unwrap();
    net.run(20_000);
    assert_eq!(got(&net, 1), vec![unsigned(&m), unsigned(&big)]);
    // Bulk and oversize are refused with typed errors.
    assert!(matches!(
        net.nodes[0].send_message(b, &message(a, None, vec![0; 10]), Priority::Bulk, net.now),
        Err(LoraError::BulkRefused)
    ));
    assert!(matches!(
        net.nodes[0].send_message(
            b,
            &message(a, None, vec![0; 1500]),
            Priority::Normal,
            net.now
        ),
        Err(LoraError::TooLarge { max: 1536, .. })
    ));
}

#[test]
fn the_largest_accepted_message_always_fits_the_fragment_cap() {
    // Every optional field present: the envelope is at its largest relative to the
    // full encoding that `max_message_size` limits.
    let (s, r) = (
        PeerId::from_digest([0xFF; 32]),
        PeerId::from_digest([0xEE; 32]),
    );
    let cap = unit_envelope_capacity(ReassemblyLimits::default().max_fragments);
    for type_len in [1, 20, 200] {
        let mut m = message(s, Some(r), Vec::new());
        m.message_type = "t".repeat(type_len);
        m.ttl_secs = u32::MAX;
        m.hop_count = 200;
        m.max_hops = 255;
        m.timestamp_ms = u64::MAX;
        let base = encode_message(&m).len();
        let mut len = 1536 - base;
        while encode_message(&NetworkMessage {
            payload: vec![0; len],
            ..m.clone()
        })
        .len()
            > 1536
        {
            len -= 1;
        }
        m.payload = vec![0; len];
        // Addressed to another node than the frame's destination: the recipient is written.
        let envelope = encode_envelope(&m, &PeerId::from_digest([0xDD; 32])).unwrap();
        assert!(envelope.len() <= cap, "type {type_len}");
    }
}

#[test]
fn five_node_line_delivers_over_four_hops() {
    let mut net = Net::new(5, fast_config());
    for i in 0..4 {
        net.link(i, i + 1);
    }
    // Sessions form, then beacons flood routes across the line.
    net.run(100_000);
    let (a, e) = (net.id(0), net.id(4));
    assert!(
        net.nodes[0].reachable(&e, net.now),
        "routes: {:?}",
        net.nodes[0].routes(net.now)
    );
    let m = message(a, Some(e), vec![3; 500]);
    net.nodes[0]
        .send_message(e, &m, Priority::Normal, net.now)
        .unwrap();
    net.run(120_000);
    let at_e: Vec<_> = net.events[4]
        .iter()
        .filter_map(|ev| match ev {
            EngineEvent::Message {
                message,
                hops,
                from,
                link_authenticated,
            } => Some((message.clone(), *hops, *from, *link_authenticated)),
            _ => None,
        })
        .collect();
    // Relayed: the signed form, never the link-authenticated one.
    assert_eq!(at_e, vec![(m, 3, net.id(3), false)]);
    // Nobody else got it as its destination.
    for i in 1..4 {
        assert!(got(&net, i).is_empty());
    }
}

#[test]
fn a_frame_lost_on_a_hop_is_sent_again_until_the_next_hop_has_it() {
    let mut net = Net::new(3, fast_config());
    net.link(0, 1);
    net.link(1, 2);
    net.run(60_000);
    let (a, c) = (net.id(0), net.id(2));
    assert!(net.nodes[0].reachable(&c, net.now));
    // Every fragment's first sends are lost on both hops: the radios report them
    // undelivered and the engines send them again.
    net.lose.insert((0, 1), 3);
    net.lose.insert((1, 2), 2);
    let m = message(a, Some(c), vec![5; 500]);
    net.nodes[0]
        .send_message(c, &m, Priority::Normal, net.now)
        .unwrap();
    let until = net.now + 30_000;
    net.run(until);
    assert_eq!(got(&net, 2), vec![m]);
    assert_eq!(net.lose[&(0, 1)], 0);
    assert_eq!(net.lose[&(1, 2)], 0);
    for n in &net.nodes {
        assert_eq!(n.unconfirmed(), 0, "every frame settled");
    }
}

#[test]
fn a_frame_no_next_hop_takes_is_held_then_sent_when_a_route_appears() {
    let mut config = fast_config();
    config.hop_retries = 2;
    let mut net = Net::new(3, config);
    net.link(0, 1);
    // Just after B's second beacon (~30.3 s), so no beacon of B flushes the held frame
    // again within the next 10 s.
    net.run(31_000);
    let (a, b) = (net.id(0), net.id(1));
    // B's radio never gets it through: 1 + hop_retries sends, then held.
    net.lose.insert((0, 1), u32::MAX);
    let m = message(a, Some(b), vec![1; 40]);
    net.nodes[0]
        .send_message(b, &m, Priority::Normal, net.now)
        .unwrap();
    let until = net.now + 10_000;
    net.run(until);
    assert!(got(&net, 1).is_empty());
    let frames = net.nodes[0].held();
    assert!(frames >= 1, "kept, not dropped");
    assert_eq!(
        u32::MAX - net.lose[&(0, 1)],
        3 * frames as u32,
        "one send and two retries of each frame"
    );
    assert_eq!(net.nodes[0].unconfirmed(), 0);
    // B moves out of A's range and times out; the frames stay held.
    net.lose.clear();
    net.links.remove(&(0, 1));
    net.links.remove(&(1, 0));
    let until = net.now + fast_config().peer_timeout_ms + 10_000;
    net.run(until);
    assert!(!net.nodes[0].reachable(&b, net.now));
    assert_eq!(net.nodes[0].held(), frames, "held while nobody is in range");
    // A new neighbour C appears (with a link to B): its session flushes the held
    // frames, flooded to C as A knows no route to B, and the first copy sent to C is
    // lost too, and sent again.
    net.lose.insert((0, 2), 1);
    net.link(0, 2);
    net.link(2, 1);
    let until = net.now + 30_000;
    net.run(until);
    assert_eq!(got(&net, 1), vec![m]);
    assert_eq!(net.lose[&(0, 2)], 0, "the copy for C was tracked and lost");
    assert_eq!(net.nodes[0].held(), 0);
    assert_eq!(net.nodes[0].unconfirmed(), 0);
}

#[test]
fn tampered_and_replayed_frames_are_rejected() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(10_000);
    let (a, b) = (net.id(0), net.id(1));
    let start = net.on_air.len();
    net.nodes[0]
        .send_compact(
            b,
            Body::Notification(NotificationHeader {
                collection: 1,
                document: 2,
                change: 3,
                at_secs: 4,
            }),
            Priority::High,
            net.now,
        )
        .unwrap();
    net.run(12_000);
    let sealed: Vec<Vec<u8>> = net.on_air[start..]
        .iter()
        .filter(|(i, p)| *i == 0 && p[0] == crate::frame::K_SEALED)
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(sealed.len(), 1);
    let frame = &sealed[0];
    assert!(matches!(
        net.events[1].last(),
        Some(EngineEvent::Compact {
            body: Body::Notification(_),
            ..
        })
    ));
    // Replay of the exact frame.
    assert!(matches!(
        net.nodes[1].handle_radio(100, frame, 0, net.now),
        Err(LoraError::Rejected("replayed"))
    ));
    // Any flipped bit.
    for i in 0..frame.len() {
        let mut t = frame.clone();
        t[i] ^= 0x10;
        assert!(
            net.nodes[1].handle_radio(100, &t, 0, net.now).is_err(),
            "byte {i}"
        );
    }
    // A truncated tag.
    assert!(
        net.nodes[1]
            .handle_radio(100, &frame[..frame.len() - 1], 0, net.now)
            .is_err()
    );
    let _ = a;
}

#[test]
fn frame_sizes_meet_the_seed_budgets() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(10_000);
    let b = net.id(1);
    let presence = net
        .on_air
        .iter()
        .find(|(_, p)| p[0] == crate::frame::K_PRESENCE)
        .map(|(_, p)| p.len())
        .unwrap();
    assert!(presence <= 32, "presence {presence}");
    let start = net.on_air.len();
    net.nodes[0]
        .send_compact(
            b,
            Body::Notification(NotificationHeader {
                collection: u32::MAX,
                document: u64::MAX,
                change: 255,
                at_secs: u32::MAX,
            }),
            Priority::High,
            net.now,
        )
        .unwrap();
    net.nodes[0]
        .send_compact(
            b,
            Body::Grant(PermissionGrant {
                grantee: b,
                resource: u64::MAX,
                actions: 255,
                expires_secs: u32::MAX,
            }),
            Priority::High,
            net.now,
        )
        .unwrap();
    net.run(12_000);
    let sizes: Vec<usize> = net.on_air[start..]
        .iter()
        .filter(|(i, p)| *i == 0 && p[0] == crate::frame::K_SEALED)
        .map(|(_, p)| p.len())
        .collect();
    assert_eq!(sizes.len(), 2);
    assert!(sizes[0] <= 64, "notification {}", sizes[0]);
    assert!(sizes[1] <= 96, "grant {}", sizes[1]);
    // Every frame fits one Meshtastic payload.
    assert!(net.on_air.iter().all(|(_, p)| p.len() <= MAX_APP_PAYLOAD));
}

#[test]
fn close_restart_and_policy() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(10_000);
    let (a, b) = (net.id(0), net.id(1));
    net.nodes[0].disconnect(b);
    net.run(12_000);
    assert!(net.events[1].contains(&EngineEvent::PeerDown(a)));
    assert!(net.events[0].contains(&EngineEvent::PeerDown(b)));
    net.run(80_000);
    assert!(
        net.nodes[0].neighbours().is_empty() && net.nodes[1].neighbours().is_empty(),
        "no automatic reconnect after a close"
    );
    assert!(!net.nodes[1].connect(a, net.now).unwrap());
    net.run(90_000);
    assert_eq!(net.nodes[1].neighbours().len(), 1);
    // A node blocking the other never establishes a session with it.
    let mut net = Net::new(2, fast_config());
    let b = net.id(1);
    net.nodes[0].policy = Arc::new(AccessPolicy::block([b]));
    net.link(0, 1);
    net.run(60_000);
    assert!(net.nodes[0].neighbours().is_empty() && net.nodes[1].neighbours().is_empty());
}

#[test]
fn messages_either_side_of_the_one_frame_limit_all_arrive_in_order() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(10_000);
    let (a, b) = (net.id(0), net.id(1));
    // Straight to the recipient: the link-authenticated envelope of 36 + payload bytes;
    // the ciphertext crosses a sealed frame's capacity (226) and one part's (227)
    // within this range.
    let sent: Vec<NetworkMessage> = (136..=206)
        .map(|n| {
            let mut m = message(a, Some(b), vec![n as u8; n]);
            m.id = MessageId::new_v4([n as u8; 16]);
            m
        })
        .collect();
    for m in &sent {
        net.nodes[0]
            .send_message(b, m, Priority::Normal, net.now)
            .unwrap();
    }
    net.run(60_000);
    assert_eq!(got(&net, 1), sent.iter().map(unsigned).collect::<Vec<_>>());
    assert_eq!(net.nodes[0].unconfirmed(), 0);
}

#[test]
fn a_one_kilobyte_delta_takes_six_frames_per_hop() {
    let mut net = Net::new(3, fast_config());
    net.link(0, 1);
    net.link(1, 2);
    net.run(60_000);
    let (a, c) = (net.id(0), net.id(2));
    let start = net.on_air.len();
    let m = message(a, Some(c), vec![7; 1024]);
    net.nodes[0]
        .send_message(c, &m, Priority::Normal, net.now)
        .unwrap();
    net.run(net.now + 30_000);
    assert_eq!(got(&net, 2), vec![m]);
    for hop in 0..2 {
        let parts: Vec<usize> = net.on_air[start..]
            .iter()
            .filter(|(i, p)| *i == hop && p[0] == crate::frame::K_SEALED_PART)
            .map(|(_, p)| p.len())
            .collect();
        // 1024 B payload + 132 B envelope + 12 B inner header + 16 B tag, in parts of
        // at most 233 bytes with a 6-byte header each.
        assert_eq!(parts, vec![233, 233, 233, 233, 233, 55], "hop {hop}");
    }
}

#[test]
fn a_unit_with_a_forged_part_is_dropped_and_later_units_still_arrive() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(10_000);
    let (a, b) = (net.id(0), net.id(1));
    // Capture a multi-part unit on its way, without letting B see it.
    net.links.remove(&(0, 1));
    let start = net.on_air.len();
    let m = message(a, Some(b), vec![4; 600]);
    net.nodes[0]
        .send_message(b, &m, Priority::Normal, net.now)
        .unwrap();
    net.run(net.now + 1_000);
    // The first send of each part (A's radio, finding no B, sends them again).
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for (i, p) in &net.on_air[start..] {
        if *i == 0 && p[0] == crate::frame::K_SEALED_PART && !parts.iter().any(|q| q[..6] == p[..6])
        {
            parts.push(p.clone());
        }
    }
    assert!(parts.len() >= 3, "{} parts", parts.len());
    // B gets every part, one with a flipped ciphertext bit: the unit fails its tag.
    let mut results = Vec::new();
    for (k, p) in parts.iter().enumerate() {
        let mut p = p.clone();
        if k == 1 {
            p[10] ^= 1;
        }
        results.push(net.nodes[1].handle_radio(100, &p, 0, net.now));
    }
    assert!(results[..parts.len() - 1].iter().all(Result::is_ok));
    assert!(matches!(results.last(), Some(Err(LoraError::Rejected(_)))));
    assert!(got(&net, 1).is_empty());
    // The link comes back: A's radio never confirmed the unit, so A sends its parts
    // again (the same bytes, the unit that failed is not remembered as done) and B
    // delivers the message once.
    net.link(0, 1);
    let until = net.now + 60_000;
    net.run(until);
    assert_eq!(got(&net, 1), vec![unsigned(&m)]);
}

#[test]
fn a_message_straight_to_its_recipient_travels_without_sender_and_signature() {
    let mut net = Net::new(2, fast_config());
    net.link(0, 1);
    net.run(60_000);
    let (a, b) = (net.id(0), net.id(1));
    let mut m = message(a, Some(b), vec![1; 100]);
    m.signature = ecomesh_types::Signature([7; 64]);
    net.nodes[0]
        .send_message(b, &m, Priority::Normal, net.now)
        .unwrap();
    net.run(net.now + 30_000);
    let at_b: Vec<_> = net.events[1]
        .iter()
        .filter_map(|ev| match ev {
            EngineEvent::Message {
                message,
                from,
                link_authenticated,
                ..
            } => Some((message.clone(), *from, *link_authenticated)),
            _ => None,
        })
        .collect();
    let unsigned = NetworkMessage {
        signature: ecomesh_types::Signature::UNSIGNED,
        ..m.clone()
    };
    assert_eq!(at_b, vec![(unsigned, a, true)]);
}
