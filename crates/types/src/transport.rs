//! The transport abstraction (seed 3.1): every physical network implements [`TransportAdapter`].

use std::fmt;
use std::str::FromStr;

use crate::{BoxFuture, Error, Listener, NetworkMessage, PeerId, PeerInfo, Subscription};

/// The physical networks ecomesh runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum TransportType {
    /// libp2p over TCP/QUIC: global reach.
    Internet,
    /// Bluetooth Low Energy.
    Bluetooth,
    /// Wi-Fi Direct (Wi-Fi P2P).
    WifiDirect,
    /// LoRa radios (Meshtastic).
    Lora,
    /// Wired LAN.
    Wired,
}

impl TransportType {
    /// Every transport type.
    pub const ALL: [TransportType; 5] = [
        TransportType::Internet,
        TransportType::Bluetooth,
        TransportType::WifiDirect,
        TransportType::Lora,
        TransportType::Wired,
    ];

    /// The seed's name: `internet`, `bluetooth`, `wifi-direct`, `lora` or `wired`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransportType::Internet => "internet",
            TransportType::Bluetooth => "bluetooth",
            TransportType::WifiDirect => "wifi-direct",
            TransportType::Lora => "lora",
            TransportType::Wired => "wired",
        }
    }
}

impl fmt::Display for TransportType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TransportType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        TransportType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| Error::UnknownName {
                kind: "transport type",
                name: s.to_owned(),
            })
    }
}

/// Power drawn by a transport while active.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum PowerConsumption {
    /// Battery-friendly (BLE, LoRa).
    Low,
    /// Noticeable drain (Wi-Fi Direct, internet on mobile).
    Medium,
    /// Heavy drain.
    High,
    /// Wall-powered; not a concern.
    NotApplicable,
}

/// What a transport can carry (seed 3.1), used by the mesh manager to route.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TransportCapabilities {
    /// Largest message the transport sends, in bytes.
    pub max_message_size: usize,
    /// Typical throughput, bytes per second.
    pub average_bandwidth: u64,
    /// Typical one-way latency, milliseconds.
    pub average_latency_ms: u32,
    /// Whether large payloads can be streamed.
    pub supports_streaming: bool,
    /// Whether one send reaches every neighbour.
    pub supports_broadcast: bool,
    /// Human-readable range, e.g. `"~100m"` or `"global"`.
    pub estimated_range: String,
    /// Power drawn while active.
    pub power_consumption: PowerConsumption,
}

impl TransportCapabilities {
    /// The figures of the seed's characteristics tables for `transport`, as a
    /// starting point an implementation adjusts to what it measures.
    pub fn seed_defaults(transport: TransportType) -> Self {
        let (max, bandwidth, latency, streaming, broadcast, range, power) = match transport {
            TransportType::Internet => (
                16 << 20,
                1_250_000,
                100,
                true,
                true,
                "global",
                PowerConsumption::Medium,
            ),
            TransportType::Bluetooth => (
                64 << 10,
                12_500,
                30,
                false,
                true,
                "~100m",
                PowerConsumption::Low,
            ),
            TransportType::WifiDirect => (
                16 << 20,
                31_250_000,
                10,
                true,
                true,
                "~200m",
                PowerConsumption::Medium,
            ),
            TransportType::Lora => (
                233,
                150,
                2_000,
                false,
                true,
                "1-15km",
                PowerConsumption::Low,
            ),
            TransportType::Wired => (
                16 << 20,
                125_000_000,
                1,
                true,
                true,
                "local network",
                PowerConsumption::NotApplicable,
            ),
        };
        TransportCapabilities {
            max_message_size: max,
            average_bandwidth: bandwidth,
            average_latency_ms: latency,
            supports_streaming: streaming,
            supports_broadcast: broadcast,
            estimated_range: range.to_owned(),
            power_consumption: power,
        }
    }
}

/// Something that happened on a transport.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A message arrived from a directly connected peer (which may have relayed it).
    Message {
        /// The neighbour that handed us the message.
        from: PeerId,
        /// The message as received; its signature is not yet checked.
        message: NetworkMessage,
    },
    /// A message its sender handed straight to this node over their own authenticated
    /// session (no relay carried it), in a form without the sender's signature: the
    /// link proved that `from` sent it and that it was not changed. Its
    /// `message.sender` is `from`, its signature [`Signature::UNSIGNED`](crate::Signature::UNSIGNED),
    /// its recipient this node. A receiver delivers it and never relays it (no one
    /// else could verify it). Transports with small frames (LoRa) use it to save the
    /// 96 bytes of sender and signature.
    LinkMessage {
        /// The neighbour that sent the message, authenticated by the link.
        from: PeerId,
        /// The message, unsigned.
        message: NetworkMessage,
    },
    /// A peer became reachable, or its info changed.
    PeerDiscovered(PeerInfo),
    /// A peer is no longer reachable on this transport.
    PeerLost(PeerId),
    /// An authenticated neighbour broke the transport's protocol (malformed or
    /// oversized frames, floods past the flow control): the transport refused the
    /// input and closed the link; the mesh charges the peer's reputation.
    /// Input from a device not yet authenticated cannot name a peer; transports
    /// penalise its address themselves.
    Misbehaved {
        /// The neighbour, authenticated by the link.
        peer: PeerId,
        /// What it did.
        reason: String,
    },
}

/// One physical network (seed 3.1). Object-safe: a manager holds `Arc<dyn TransportAdapter>`.
///
/// Async methods return [`BoxFuture`]s so the trait needs no async runtime.
/// Implementations promise:
/// - `send` resolves `Ok` only once the message was handed to a connection to
///   that peer; a message larger than `capabilities().max_message_size` is
///   [`Error::MessageTooLarge`], an unknown peer [`Error::Unreachable`].
/// - Events reach every subscriber in the order the transport observed them;
///   listeners must not block (forward to a bounded channel).
/// - `stop` ends every connection and background task; `start` after `stop` works again.
pub trait TransportAdapter: Send + Sync {
    /// Which physical network this is.
    fn transport_type(&self) -> TransportType;

    /// What it can carry.
    fn capabilities(&self) -> TransportCapabilities;

    /// Starts listening, discovery and background tasks.
    fn start(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Stops everything `start` began.
    fn stop(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// True between a successful `start` and `stop`.
    fn is_active(&self) -> bool;

    /// Peers currently reachable on this transport.
    fn peers(&self) -> Vec<PeerInfo>;

    /// Opens (or confirms) a connection to `peer`.
    fn connect_to_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>>;

    /// Closes connections to `peer`.
    fn disconnect_from_peer(&self, peer: PeerId) -> BoxFuture<'_, Result<(), Error>>;

    /// Sends `message` to one directly reachable peer.
    fn send(&self, peer: PeerId, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>>;

    /// Sends `message` to every directly reachable peer.
    fn broadcast(&self, message: NetworkMessage) -> BoxFuture<'_, Result<(), Error>>;

    /// Registers a listener for messages, discoveries and losses until the
    /// returned [`Subscription`] is dropped.
    fn subscribe(&self, listener: Listener<TransportEvent>) -> Subscription;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in TransportType::ALL {
            assert_eq!(t.as_str().parse::<TransportType>().unwrap(), t);
        }
        assert!(matches!(
            "wifi".parse::<TransportType>(),
            Err(Error::UnknownName {
                kind: "transport type",
                ..
            })
        ));
    }

    #[test]
    fn lora_carries_one_meshtastic_payload() {
        assert_eq!(
            TransportCapabilities::seed_defaults(TransportType::Lora).max_message_size,
            233
        );
    }

    #[test]
    fn trait_is_object_safe() {
        fn _takes(_: std::sync::Arc<dyn TransportAdapter>) {}
    }
}
