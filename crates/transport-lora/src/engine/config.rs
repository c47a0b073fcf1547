//! [`EngineConfig`]: the engine's (and so the transport's) settings and their defaults.

use crate::airtime::{DutyBudget, EU868_LONG_FAST_HZ, LoraParams, Region};
use crate::frag::ReassemblyLimits;
use crate::sched::SchedulerConfig;

/// Settings of the engine (and so of the transport).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Secret shared by every node of the network; authenticates broadcast frames.
    pub network_secret: Vec<u8>,
    /// Modem settings (for airtime).
    pub radio: LoraParams,
    /// Duty-cycle budget.
    pub duty: DutyBudget,
    /// Widening of the duty window: at least the longest packet's airtime plus the
    /// latency between our decision and the radio's transmission.
    pub duty_guard_ms: u64,
    /// Channel access.
    pub scheduler: SchedulerConfig,
    /// Relays a frame may take (seed: 5).
    pub ttl: u8,
    /// Presence beacon period (seed 4.1: 30 s).
    pub beacon_interval_ms: u64,
    /// Every this many beacons an announce (public key) goes out too.
    pub announce_every: u32,
    /// A neighbour not heard for this long is lost.
    pub peer_timeout_ms: u64,
    /// A handshake that does not finish in this time fails.
    pub handshake_timeout_ms: u64,
    /// Handshake messages are resent after this long without an answer.
    pub handshake_retry_ms: u64,
    /// Largest message accepted, in bytes of its full `ecomesh_wire::encode_message` form
    /// (what `TransportCapabilities::max_message_size` reports).
    pub max_message_size: usize,
    /// Reassembly limits (fragments per message, bytes, timeouts).
    pub reassembly: ReassemblyLimits,
    /// Routes kept.
    pub route_capacity: usize,
    /// A route lives this long after it was last confirmed.
    pub route_ttl_ms: u64,
    /// Frame keys remembered for duplicate suppression.
    pub seen_capacity: usize,
    /// Frames held for a next hop that is not there yet (store-and-forward).
    pub held_capacity: usize,
    /// How long a held frame waits.
    pub held_timeout_ms: u64,
    /// Meshtastic `hop_limit` of our packets (0: the firmware does not rebroadcast them;
    /// ecomesh relays by itself).
    pub meshtastic_hop_limit: u8,
    /// Meshtastic `want_ack` on unicast packets (the firmware then retransmits lost ones
    /// and reports each packet's fate, which per-hop store-and-forward relies on).
    pub want_ack: bool,
    /// Times a data frame (message, fragment, notification, grant) that the radio reports
    /// undelivered to the next hop, or does not report on within
    /// [`hop_ack_timeout_ms`](Self::hop_ack_timeout_ms), is sent again (through the best
    /// next hop at that time) before it is held for a new route. Needs `want_ack`.
    pub hop_retries: u8,
    /// How long after a tracked frame went to the radio its verdict (acknowledged, or given
    /// up after the firmware's retransmissions) may take before the frame counts as lost.
    pub hop_ack_timeout_ms: u64,
    /// Open sessions with neighbours heard in beacons without being asked.
    pub auto_connect: bool,
    /// Least time between two announces we send on request, ms.
    pub announce_min_interval_ms: u64,
    /// Sessions (established or in handshake) kept at once; handshakes beyond are refused.
    pub max_neighbours: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let radio = LoraParams::LONG_FAST;
        EngineConfig {
            network_secret: b"ecomesh default lora network".to_vec(),
            radio,
            duty: DutyBudget::for_region(Region::Eu868, EU868_LONG_FAST_HZ),
            duty_guard_ms: radio.max_packet_airtime_ms() + 2_000,
            scheduler: SchedulerConfig {
                slot_ms: radio.max_packet_airtime_ms() / 4,
                ..SchedulerConfig::default()
            },
            ttl: 5,
            beacon_interval_ms: 30_000,
            announce_every: 10,
            peer_timeout_ms: 100_000,
            handshake_timeout_ms: 60_000,
            handshake_retry_ms: 15_000,
            max_message_size: 1536,
            reassembly: ReassemblyLimits::default(),
            route_capacity: 64,
            route_ttl_ms: 600_000,
            seen_capacity: 2048,
            held_capacity: 64,
            held_timeout_ms: 600_000,
            meshtastic_hop_limit: 0,
            want_ack: true,
            hop_retries: 4,
            // Meshtastic's three retransmissions of a long-range packet take tens of seconds.
            hop_ack_timeout_ms: 90_000,
            auto_connect: true,
            announce_min_interval_ms: 2_000,
            max_neighbours: 64,
        }
    }
}

impl EngineConfig {
    /// Settings for simulators and tests: a fast modem (SF7/500 kHz, Meshtastic
    /// ShortTurbo), no duty-cycle limit, beacons every 2 s, short timeouts. Never for a
    /// real EU868 radio (it ignores the legal duty cycle).
    pub fn for_simulation() -> Self {
        let radio = LoraParams::SHORT_TURBO;
        EngineConfig {
            radio,
            duty: DutyBudget {
                permille: 1000,
                window_ms: 3_600_000,
            },
            duty_guard_ms: radio.max_packet_airtime_ms() + 100,
            scheduler: SchedulerConfig {
                slot_ms: 10,
                max_backoff_slots: 2,
                queue_limit: 1024,
            },
            beacon_interval_ms: 2_000,
            announce_every: 5,
            peer_timeout_ms: 15_000,
            handshake_timeout_ms: 15_000,
            handshake_retry_ms: 1_000,
            announce_min_interval_ms: 300,
            hop_ack_timeout_ms: radio.max_packet_airtime_ms() * 20 + 2_000,
            ..EngineConfig::default()
        }
    }
}
