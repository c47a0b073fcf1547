//! The few Meshtastic protobuf messages the serial client needs, declared with `prost`
//! derives and the field numbers of the public Meshtastic protocol
//! (`meshtastic/protobufs`, `meshtastic/mesh.proto` and `portnums.proto`).
//!
//! Only the fields ecomesh reads or writes are declared; protobuf decoders skip unknown
//! fields, so the firmware's other fields (positions, telemetry, config, ...) are ignored.
//!
//! | message | fields used (number) |
//! |---|---|
//! | `ToRadio` | `packet` (1), `want_config_id` (3), `disconnect` (4), `heartbeat` (7) |
//! | `FromRadio` | `id` (1), `packet` (2), `my_info` (3), `node_info` (4), `config_complete_id` (7), `rebooted` (8) |
//! | `MeshPacket` | `from` (1, fixed32), `to` (2, fixed32), `channel` (3), `decoded` (4), `id` (6, fixed32), `rx_time` (7, fixed32), `rx_snr` (8, float), `hop_limit` (9), `want_ack` (10), `priority` (11), `rx_rssi` (12), `hop_start` (15) |
//! | `Data` | `portnum` (1), `payload` (2), `want_response` (3), `request_id` (6, fixed32) |
//! | `Routing` | `error_reason` (3) |
//! | `MyNodeInfo` | `my_node_num` (1) |
//! | `NodeInfo` | `num` (1), `user` (2) |
//! | `User` | `id` (1), `long_name` (2), `short_name` (3) |

/// `PortNum.PRIVATE_APP`: the port Meshtastic reserves for private applications.
pub const PRIVATE_APP: i32 = 256;
/// `PortNum.ROUTING_APP`: acknowledgements and delivery failures of `want_ack` packets.
pub const ROUTING_APP: i32 = 5;
/// `Routing.Error.NONE`: the packet was acknowledged by its destination.
pub const ROUTING_ERROR_NONE: i32 = 0;
/// `Routing.Error.MAX_RETRANSMIT`: the firmware gave up after its retransmissions.
pub const ROUTING_ERROR_MAX_RETRANSMIT: i32 = 5;
/// `PortNum.TEXT_MESSAGE_APP` (used only to recognise foreign traffic in tests).
pub const TEXT_MESSAGE_APP: i32 = 1;
/// The broadcast node number (`to` of a packet for every node).
pub const BROADCAST: u32 = 0xFFFF_FFFF;
/// `MeshPacket.Priority.RELIABLE`.
pub const PRIORITY_RELIABLE: i32 = 70;
/// `MeshPacket.Priority.DEFAULT`.
pub const PRIORITY_DEFAULT: i32 = 64;
/// `MeshPacket.Priority.BACKGROUND`.
pub const PRIORITY_BACKGROUND: i32 = 10;

/// `meshtastic.Data`: the decoded payload of a packet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Data {
    /// The application port (`PortNum`).
    #[prost(int32, tag = "1")]
    pub portnum: i32,
    /// Application bytes (at most 233 on air for Meshtastic 2.x).
    #[prost(bytes = "vec", tag = "2")]
    pub payload: Vec<u8>,
    /// Ask the recipient to reply in kind.
    #[prost(bool, tag = "3")]
    pub want_response: bool,
    /// On a `ROUTING_APP` packet: the id of the packet it acknowledges or reports as failed.
    #[prost(fixed32, tag = "6")]
    pub request_id: u32,
}

/// `meshtastic.Routing`: the payload of a `ROUTING_APP` packet. Only the error variant
/// is declared (route requests and replies are skipped as unknown fields).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Routing {
    /// `Routing.Error`: [`ROUTING_ERROR_NONE`] for an acknowledgement, otherwise why the
    /// packet was not delivered.
    #[prost(int32, tag = "3")]
    pub error_reason: i32,
}

/// `meshtastic.MeshPacket`: a packet sent or received over the mesh.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MeshPacket {
    /// Sending node number.
    #[prost(fixed32, tag = "1")]
    pub from: u32,
    /// Destination node number, or [`BROADCAST`].
    #[prost(fixed32, tag = "2")]
    pub to: u32,
    /// Channel index.
    #[prost(uint32, tag = "3")]
    pub channel: u32,
    /// The decoded payload (clients never see the encrypted variant).
    #[prost(message, optional, tag = "4")]
    pub decoded: Option<Data>,
    /// Packet id, unique per sender for a few minutes.
    #[prost(fixed32, tag = "6")]
    pub id: u32,
    /// Reception time, seconds since 1970 (set by the receiving radio).
    #[prost(fixed32, tag = "7")]
    pub rx_time: u32,
    /// Reception SNR in dB.
    #[prost(float, tag = "8")]
    pub rx_snr: f32,
    /// Hops the packet may still take (0: neighbours only).
    #[prost(uint32, tag = "9")]
    pub hop_limit: u32,
    /// Ask for a link-level acknowledgement.
    #[prost(bool, tag = "10")]
    pub want_ack: bool,
    /// Transmit-queue priority inside the radio (`MeshPacket.Priority`).
    #[prost(int32, tag = "11")]
    pub priority: i32,
    /// Reception RSSI.
    #[prost(int32, tag = "12")]
    pub rx_rssi: i32,
    /// The `hop_limit` the packet started with; hops taken = `hop_start - hop_limit`.
    #[prost(uint32, tag = "15")]
    pub hop_start: u32,
}

/// `meshtastic.MyNodeInfo`: the attached radio's own node number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MyNodeInfo {
    /// Our node number on the mesh.
    #[prost(uint32, tag = "1")]
    pub my_node_num: u32,
}

/// `meshtastic.User`: a node's names.
#[derive(Clone, PartialEq, prost::Message)]
pub struct User {
    /// `!xxxxxxxx` id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Long name.
    #[prost(string, tag = "2")]
    pub long_name: String,
    /// Short name (about 4 characters).
    #[prost(string, tag = "3")]
    pub short_name: String,
}

/// `meshtastic.NodeInfo`: one entry of the radio's node database.
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeInfo {
    /// Node number.
    #[prost(uint32, tag = "1")]
    pub num: u32,
    /// Its user record.
    #[prost(message, optional, tag = "2")]
    pub user: Option<User>,
}

/// `meshtastic.Heartbeat`: keeps the serial API session of the radio alive.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {}

/// `ToRadio.payload_variant`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ToRadioVariant {
    /// Send this packet on the mesh.
    #[prost(message, tag = "1")]
    Packet(MeshPacket),
    /// Start the config download; echoed back in `config_complete_id`.
    #[prost(uint32, tag = "3")]
    WantConfigId(u32),
    /// The client disconnects.
    #[prost(bool, tag = "4")]
    Disconnect(bool),
    /// Keep-alive.
    #[prost(message, tag = "7")]
    Heartbeat(Heartbeat),
}

/// `meshtastic.ToRadio`: client → radio.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ToRadio {
    /// What is sent.
    #[prost(oneof = "ToRadioVariant", tags = "1, 3, 4, 7")]
    pub payload_variant: Option<ToRadioVariant>,
}

/// `FromRadio.payload_variant` (only the variants ecomesh uses).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum FromRadioVariant {
    /// A received packet (or the echo of one we sent).
    #[prost(message, tag = "2")]
    Packet(MeshPacket),
    /// The radio's own node number.
    #[prost(message, tag = "3")]
    MyInfo(MyNodeInfo),
    /// One node of the radio's database.
    #[prost(message, tag = "4")]
    NodeInfo(NodeInfo),
    /// End of the config download started by `want_config_id`.
    #[prost(uint32, tag = "7")]
    ConfigCompleteId(u32),
    /// The radio rebooted.
    #[prost(bool, tag = "8")]
    Rebooted(bool),
}

/// `meshtastic.FromRadio`: radio → client.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FromRadio {
    /// Sequence number of this record.
    #[prost(uint32, tag = "1")]
    pub id: u32,
    /// What was received; `None` for variants ecomesh does not use.
    #[prost(oneof = "FromRadioVariant", tags = "2, 3, 4, 7, 8")]
    pub payload_variant: Option<FromRadioVariant>,
}
