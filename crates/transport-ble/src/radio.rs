//! The small radio interface the driver runs over, shaped after BlueZ's model so a
//! `bluer` backend is thin:
//!
//! | here | BlueZ (D-Bus, through `bluer`) |
//! |---|---|
//! | [`Radio::start`] | `Adapter1` powered; `GattManager1.RegisterApplication` with the service of [`crate::gatt`]; `Adapter1.SetDiscoveryFilter` (UUIDs = the service, LE) and `StartDiscovery` |
//! | [`Radio::advertise`] | `LEAdvertisingManager1.RegisterAdvertisement` (service UUID, `ManufacturerData[0xFFFF]` = tag), replacing the previous one |
//! | [`RadioEvent::Advertisement`] | `Device1` added/changed with `RSSI`, `UUIDs`, `ManufacturerData` |
//! | [`Radio::connect`] | `Device1.Connect`, then the service's characteristics, `AcquireNotify` / `StartNotify` on the notify characteristic, MTU from `AcquireWrite` |
//! | [`Radio::transmit`] as [`Role::Central`] | write without response to the write characteristic |
//! | [`Radio::transmit`] as [`Role::Peripheral`] | a notification on the notify characteristic (the local GATT application); the BlueZ backend writes to the central's notify characteristic instead, see the `bluez` module (feature `bluez`) |
//! | [`RadioEvent::Received`] | a write to our write characteristic, or a notification of the peer's |
//! | [`Radio::disconnect`] / [`RadioEvent::Disconnected`] | `Device1.Disconnect` / `Connected` becoming false |
//!
//! | [`Channel::Coc`] in [`RadioEvent::Connected`] | both sides offer an L2CAP channel (the peer's PSM read from its [`crate::gatt::PSM_CHAR_UUID`]): an `AF_BLUETOOTH` `SOCK_SEQPACKET` socket on [`crate::gatt::L2CAP_PSM`], one fragment per SDU |
//!
//! The radio picks the channel of a connection: an L2CAP connection-oriented channel
//! where both sides offer one (and one can be opened), GATT otherwise. The engine and
//! the link only size their fragments to it ([`Channel::max_fragment_len`]).

use tokio::sync::mpsc;

use ecomesh_types::BoxFuture;

use crate::engine::{ConnId, DeviceAddr, Role};
use crate::error::BleError;
use crate::frag::Channel;
use crate::gatt::Advertisement;

/// Something the radio observed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RadioEvent {
    /// An ecomesh advertisement was heard.
    Advertisement {
        /// Its sender's (rotating) address.
        addr: DeviceAddr,
        /// Received signal strength, dBm.
        rssi: i16,
        /// What it carried.
        adv: Advertisement,
    },
    /// A connection is up, over GATT with its ATT MTU negotiated, or over an L2CAP
    /// channel when both sides offer one.
    Connected {
        /// Handle for later calls.
        conn: ConnId,
        /// The other device.
        addr: DeviceAddr,
        /// Our side of it.
        role: Role,
        /// What the fragments travel over, and its size.
        channel: Channel,
    },
    /// A [`Radio::connect`] failed (out of range, limit, refused).
    ConnectFailed {
        /// The address dialled.
        addr: DeviceAddr,
    },
    /// One value arrived on a connection (a write or a notification).
    Received {
        /// The connection.
        conn: ConnId,
        /// The value: one fragment.
        bytes: Vec<u8>,
    },
    /// A connection ended (either side, or link loss).
    Disconnected {
        /// The connection.
        conn: ConnId,
    },
}

/// A BLE radio in both roles. Calls return once the radio took the request; outcomes
/// arrive as [`RadioEvent`]s on the channel given to [`Radio::start`], in order.
pub trait Radio: Send + Sync + 'static {
    /// Powers up, serves the GATT service, starts scanning; events go to `events`
    /// (bounded: a radio that cannot deliver an event drops the connection it belongs
    /// to rather than buffer without bound).
    fn start(&self, events: mpsc::Sender<RadioEvent>) -> BoxFuture<'_, Result<(), BleError>>;

    /// Stops advertising, scanning and serving; closes every connection.
    fn stop(&self) -> BoxFuture<'_, Result<(), BleError>>;

    /// Advertises `adv` from now on, replacing the previous advertisement.
    fn advertise(&self, adv: Advertisement) -> BoxFuture<'_, Result<(), BleError>>;

    /// Connects to `addr` as GATT client.
    fn connect(&self, addr: DeviceAddr) -> BoxFuture<'_, Result<(), BleError>>;

    /// Closes `conn`.
    fn disconnect(&self, conn: ConnId) -> BoxFuture<'_, Result<(), BleError>>;

    /// Sends one fragment on `conn` (write or notification by role, or one SDU on an
    /// L2CAP channel).
    fn transmit(&self, conn: ConnId, bytes: Vec<u8>) -> BoxFuture<'_, Result<(), BleError>>;
}
