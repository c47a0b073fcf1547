//! One BLE link, sans-io: Noise XX over the units of [`crate::frag`], then records
//! carrying messages, with keepalive; fragments and time in, fragments and events out.
//!
//! # Protocol
//! 1. The GATT client (the side that connected) is the Noise XX initiator; each
//!    handshake message is one unit.
//! 2. Then every unit is one Noise transport message (ordered delivery: GATT writes and
//!    notifications on one connection arrive in order or the connection drops) holding
//!    one *record* `kind (1 byte) || body`, as on the wired transport:
//!    - `HELLO` (`0x00`): `version (1) || max_message_size (u32 BE) || flags (1)`, sent
//!      by the initiator when its handshake ends (flags 0) and by the responder in
//!      answer to it; a side is *established* once the peer's HELLO arrived, so the
//!      responder is before the initiator, unless the responder sets [`record::HELLO_WAIT`]
//!      (its owner asked for the link and wants to be the last to report it): then the
//!      initiator answers with `READY` (`0x06`, empty) and the responder is established
//!      when that arrives. Either way, the side that asked for the link reports it
//!      only once the other side has;
//!    - `MORE` (`0x01`) / `END` (`0x02`): a piece of an encoded
//!      [`NetworkMessage`] (full form of `ecomesh-wire`); `END` completes it;
//!    - `PING` (`0x03`) / `PONG` (`0x04`): keepalive, empty body;
//!    - `BYE` (`0x05`): the sender ends the link by request, empty body.
//!
//! # Payload policy (seed 3.3, 3.2 "BluetoothTransport")
//! BLE carries compact payloads only: [`Priority::Bulk`] is refused with
//! [`BleError::BulkRefused`] and a message whose encoding is over the link's limit
//! ([`BLE_MAX_MESSAGE_SIZE`] by default) with [`BleError::TooLarge`], before anything is
//! queued.
//!
//! # Bounds
//! Any error on input is final (the caller disconnects). Memory per link: the framer's
//! bounds plus one message being reassembled (at most `max_message_size`).

use std::collections::VecDeque;
use std::sync::Arc;

use ecomesh_identity::noise::{Handshake, Session, SessionConfig, TAG_LEN};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{NetworkMessage, PeerId, Priority};
use ecomesh_wire::{Limits, decode_message_with, encode_message};

use crate::error::BleError;
use crate::frag::{Channel, Framer, FramerConfig};

/// Version byte of the HELLO record.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest encoded message BLE carries by default: 64 KiB (the seed's upper bound for
/// Bluetooth in the routing table).
pub const BLE_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// Record kinds.
pub mod record {
    /// Version and limit, first record of each side.
    pub const HELLO: u8 = 0x00;
    /// A piece of a message, more follow.
    pub const MORE: u8 = 0x01;
    /// The last piece of a message.
    pub const END: u8 = 0x02;
    /// Keepalive request.
    pub const PING: u8 = 0x03;
    /// Keepalive answer.
    pub const PONG: u8 = 0x04;
    /// The sender ends the link by request and will not dial again on its own;
    /// empty body.
    pub const BYE: u8 = 0x05;
    /// The initiator's answer to a responder HELLO with [`HELLO_WAIT`]; empty body.
    pub const READY: u8 = 0x06;
    /// HELLO flag (responder only): the responder reports the link after `READY`.
    pub const HELLO_WAIT: u8 = 0x01;
}
use record::{BYE, END, HELLO, HELLO_WAIT, MORE, PING, PONG, READY};

/// Limits and timers of a link (milliseconds, bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Largest encoded message sent or accepted.
    pub max_message_size: usize,
    /// Framing limits (unit length, window, send queue).
    pub framer: FramerConfig,
    /// The handshake and HELLO exchange must finish within this time.
    pub handshake_timeout_ms: u64,
    /// A PING is sent after this long without receiving anything.
    pub keepalive_interval_ms: u64,
    /// The link fails if nothing arrives this long after a PING.
    pub keepalive_timeout_ms: u64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            max_message_size: BLE_MAX_MESSAGE_SIZE,
            framer: FramerConfig::default(),
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

/// Something the link produced.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// The peer is authenticated and its HELLO arrived: the link carries messages.
    Established {
        /// The peer.
        peer: PeerId,
        /// Its Ed25519 key, proved by the handshake.
        key: PublicKey,
    },
    /// A complete message arrived.
    Message(NetworkMessage),
    /// The peer ended the link by request ([`BleLink::send_bye`]).
    Bye,
}

enum State {
    Handshaking(Box<Handshake>),
    Open(Box<Session>),
    Failed,
}

/// One end of a BLE link. Feed it received fragments ([`BleLink::receive`]) and time
/// ([`BleLink::handle_timeout`]); transmit [`BleLink::poll_transmit`]; react to
/// [`BleLink::poll_event`]. After an error the link is dead.
pub struct BleLink {
    config: LinkConfig,
    framer: Framer,
    state: State,
    events: VecDeque<LinkEvent>,
    reassembly: Vec<u8>,
    peer: Option<PeerId>,
    peer_key: Option<PublicKey>,
    peer_max: Option<usize>,
    deny: Vec<PeerId>,
    initiator: bool,
    report_last: bool,
    awaiting_ready: bool,
    started_ms: u64,
    last_rx_ms: u64,
    ping_sent_ms: Option<u64>,
}

impl std::fmt::Debug for BleLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BleLink")
            .field("peer", &self.peer)
            .field("established", &self.is_established())
            .field("framer", &self.framer)
            .finish_non_exhaustive()
    }
}

impl BleLink {
    /// The GATT client's end (Noise initiator); `expect` requires a given peer.
    /// `channel` is what the fragments travel over (an ATT MTU means GATT).
    pub fn initiator(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        expect: Option<PeerId>,
        config: LinkConfig,
        channel: impl Into<Channel>,
        now_ms: u64,
    ) -> Result<Self, BleError> {
        let mut hs = Handshake::xx_initiator(identity, policy, SessionConfig::default())?;
        if let Some(p) = expect {
            hs = hs.expect_peer(p);
        }
        let mut link = Self::new(hs, config, channel.into(), now_ms)?;
        link.drive_handshake()?;
        Ok(link)
    }

    /// The GATT server's end (Noise responder), over `channel` (an ATT MTU means GATT).
    pub fn responder(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: LinkConfig,
        channel: impl Into<Channel>,
        now_ms: u64,
    ) -> Result<Self, BleError> {
        let hs = Handshake::xx_responder(identity, policy, SessionConfig::default())?;
        Self::new(hs, config, channel.into(), now_ms)
    }

    fn new(
        hs: Handshake,
        config: LinkConfig,
        channel: Channel,
        now_ms: u64,
    ) -> Result<Self, BleError> {
        let initiator = hs.is_initiator();
        Ok(BleLink {
            config,
            framer: Framer::new(config.framer, channel)?,
            state: State::Handshaking(Box::new(hs)),
            events: VecDeque::new(),
            reassembly: Vec::new(),
            peer: None,
            peer_key: None,
            peer_max: None,
            deny: Vec::new(),
            initiator,
            report_last: false,
            awaiting_ready: false,
            started_ms: now_ms,
            last_rx_ms: now_ms,
            ping_sent_ms: None,
        })
    }

    /// The authenticated peer, once the handshake proved it.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// The authenticated peer's key, once the handshake finished.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.peer_key
    }

    /// Whether the peer's HELLO arrived.
    pub fn is_established(&self) -> bool {
        self.peer_max.is_some() && !self.awaiting_ready
    }

    /// Whether an error ended the link.
    pub fn is_failed(&self) -> bool {
        matches!(self.state, State::Failed)
    }

    /// The largest encoded message this link sends: the smaller of both limits.
    pub fn send_limit(&self) -> usize {
        self.peer_max.map_or(self.config.max_message_size, |p| {
            p.min(self.config.max_message_size)
        })
    }

    /// Refuses the handshake with any of `peers` as soon as their identity is known
    /// (the initiator learns it from the second message, before revealing its own), with
    /// [`BleError::Refused`]. Used for links dialled on the chance that an unresolved
    /// advertisement is someone new.
    pub fn deny(&mut self, peers: Vec<PeerId>) {
        self.deny = peers;
    }

    /// Queues a `BYE` record: the peer learns the link ends by request.
    pub fn send_bye(&mut self) -> Result<(), BleError> {
        self.write_record(&[BYE])
    }

    /// Whether nothing waits to be transmitted.
    pub fn is_drained(&self) -> bool {
        self.framer.pending_fragments() == 0 && self.framer.queued_units() == 0
    }

    /// Sets the ATT MTU after an exchange.
    pub fn set_mtu(&mut self, mtu: u16) -> Result<(), BleError> {
        self.framer.set_mtu(mtu)
    }

    /// The framing state (credits, queue).
    pub fn framer(&self) -> &Framer {
        &self.framer
    }

    /// The next fragment to transmit, in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.framer.poll_transmit()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn fail<T>(&mut self, e: BleError) -> Result<T, BleError> {
        self.state = State::Failed;
        Err(e)
    }

    /// Processes one received fragment.
    pub fn receive(&mut self, fragment: &[u8], now_ms: u64) -> Result<(), BleError> {
        if self.is_failed() {
            return Err(BleError::Closed);
        }
        self.last_rx_ms = now_ms;
        self.ping_sent_ms = None;
        if let Err(e) = self.framer.receive(fragment) {
            return self.fail(e);
        }
        while let Some(unit) = self.framer.next_unit() {
            if let Err(e) = self.on_unit(&unit) {
                return self.fail(e);
            }
        }
        Ok(())
    }

    fn on_unit(&mut self, unit: &[u8]) -> Result<(), BleError> {
        match &mut self.state {
            State::Handshaking(hs) => {
                hs.read_message(unit)?;
                if let Some(k) = hs.remote_public_key() {
                    let peer = k.peer_id();
                    self.peer = Some(peer);
                    if self.deny.contains(&peer) {
                        return Err(BleError::Refused(peer));
                    }
                }
                self.drive_handshake()
            }
            State::Open(session) => {
                let plain = session.decrypt(unit)?;
                let Some((&kind, body)) = plain.split_first() else {
                    return Err(BleError::Malformed("empty record"));
                };
                self.on_record(kind, body)
            }
            State::Failed => Err(BleError::Closed),
        }
    }

    fn on_record(&mut self, kind: u8, body: &[u8]) -> Result<(), BleError> {
        if kind == HELLO {
            return self.on_hello(body);
        }
        if kind == READY {
            if !(self.awaiting_ready && body.is_empty()) {
                return Err(BleError::Malformed("unexpected READY"));
            }
            self.awaiting_ready = false;
            return self.report_established();
        }
        if self.awaiting_ready {
            return Err(BleError::Malformed("record before READY"));
        }
        if self.peer_max.is_none() {
            return Err(BleError::Malformed("record before HELLO"));
        }
        match kind {
            MORE | END => {
                let size = self.reassembly.len() + body.len();
                if size > self.config.max_message_size {
                    return Err(BleError::TooLarge {
                        size,
                        max: self.config.max_message_size,
                    });
                }
                self.reassembly.extend_from_slice(body);
                if kind == END {
                    let limits = Limits {
                        max_len: self.config.max_message_size as u64,
                        ..Limits::DEFAULT
                    };
                    let bytes = std::mem::take(&mut self.reassembly);
                    let msg = decode_message_with(&bytes, &limits)?;
                    self.events.push_back(LinkEvent::Message(msg));
                }
                Ok(())
            }
            PING if body.is_empty() => self.write_record(&[PONG]),
            BYE if body.is_empty() => {
                self.events.push_back(LinkEvent::Bye);
                Ok(())
            }
            PONG if body.is_empty() => Ok(()),
            _ => Err(BleError::Malformed("unknown record")),
        }
    }

    fn on_hello(&mut self, body: &[u8]) -> Result<(), BleError> {
        if self.peer_max.is_some() {
            return Err(BleError::Malformed("second HELLO"));
        }
        let [version, a, b, c, d, flags] = body else {
            return Err(BleError::Malformed("HELLO length"));
        };
        if *version != PROTOCOL_VERSION {
            return Err(BleError::Malformed("unsupported protocol version"));
        }
        if flags & !HELLO_WAIT != 0 || (!self.initiator && *flags != 0) {
            return Err(BleError::Malformed("HELLO flags"));
        }
        let max = u32::from_be_bytes([*a, *b, *c, *d]);
        self.peer_max = Some(usize::try_from(max).unwrap_or(usize::MAX));
        if self.initiator {
            self.report_established()?;
            if flags & HELLO_WAIT != 0 {
                self.write_record(&[READY])?;
            }
            return Ok(());
        }
        // The responder answers the initiator's HELLO, so the initiator establishes
        // only once the responder has, unless the responder asked to report last.
        let wait = self.report_last;
        self.write_record(&hello_record(
            self.config.max_message_size,
            if wait { HELLO_WAIT } else { 0 },
        ))?;
        if wait {
            self.awaiting_ready = true;
            Ok(())
        } else {
            self.report_established()
        }
    }

    fn report_established(&mut self) -> Result<(), BleError> {
        let (Some(peer), Some(key)) = (self.peer, self.peer_key) else {
            return Err(BleError::Malformed("HELLO before identity"));
        };
        self.events.push_back(LinkEvent::Established { peer, key });
        Ok(())
    }

    /// A responder that should report the link after the initiator does (its owner
    /// asked for a link, and the peer happened to dial first): its HELLO then asks for
    /// a `READY`, and it reports the link when that arrives. No effect once the
    /// initiator's HELLO arrived.
    pub fn set_report_last(&mut self, last: bool) {
        self.report_last = last;
    }

    fn drive_handshake(&mut self) -> Result<(), BleError> {
        let State::Handshaking(hs) = &mut self.state else {
            return Ok(());
        };
        while hs.wants_write() {
            let m = hs.write_message()?;
            self.framer.send_unit(m)?;
        }
        if hs.is_finished() {
            let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Failed) else {
                return Err(BleError::Closed);
            };
            let session = hs.into_session()?;
            self.peer = Some(session.remote_peer_id());
            self.peer_key = Some(*session.remote_public_key());
            self.state = State::Open(Box::new(session));
            if self.initiator {
                self.write_record(&hello_record(self.config.max_message_size, 0))?;
            }
        }
        Ok(())
    }

    fn write_record(&mut self, record: &[u8]) -> Result<(), BleError> {
        let State::Open(session) = &mut self.state else {
            return Err(BleError::NotEstablished);
        };
        let sealed = session.encrypt(record)?;
        self.framer.send_unit(sealed)
    }

    /// Body bytes of a message record: a unit holds `kind || body` plus the tag.
    fn chunk_len(&self) -> usize {
        self.config
            .framer
            .max_unit_len
            .saturating_sub(TAG_LEN + 1)
            .max(1)
    }

    /// Queues `msg` at `priority`. Refused before anything is queued: [`Priority::Bulk`]
    /// ([`BleError::BulkRefused`]), an encoding over [`BleLink::send_limit`]
    /// ([`BleError::TooLarge`]), a link not yet established, or a send queue without
    /// room for the whole message ([`BleError::QueueFull`]).
    pub fn send_message(
        &mut self,
        msg: &NetworkMessage,
        priority: Priority,
    ) -> Result<(), BleError> {
        check_policy(msg, priority, self.send_limit())?;
        if !self.is_established() {
            return Err(BleError::NotEstablished);
        }
        let bytes = encode_message(msg);
        let chunk = self.chunk_len();
        let units = bytes.len().div_ceil(chunk).max(1);
        let room = self
            .config
            .framer
            .max_queued_units
            .saturating_sub(self.framer.queued_units())
            + self.framer.send_credits();
        if units > room {
            return Err(BleError::QueueFull {
                units: self.framer.queued_units(),
            });
        }
        let mut pieces = bytes.chunks(chunk).peekable();
        while let Some(piece) = pieces.next() {
            let kind = if pieces.peek().is_some() { MORE } else { END };
            let mut rec = Vec::with_capacity(piece.len() + 1);
            rec.push(kind);
            rec.extend_from_slice(piece);
            if let Err(e) = self.write_record(&rec) {
                // The session advanced; a half-sent message cannot be taken back.
                return self.fail(e);
            }
        }
        Ok(())
    }

    /// When [`BleLink::handle_timeout`] must next be called, in ms.
    pub fn next_timeout(&self) -> u64 {
        if !self.is_established() {
            self.started_ms + self.config.handshake_timeout_ms
        } else if let Some(sent) = self.ping_sent_ms {
            sent + self.config.keepalive_timeout_ms
        } else {
            self.last_rx_ms + self.config.keepalive_interval_ms
        }
    }

    /// Advances time: sends a PING after a quiet interval; fails the link when the
    /// handshake (a peer that never finishes it) or a PING went unanswered.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), BleError> {
        if self.is_failed() {
            return Err(BleError::Closed);
        }
        if now_ms < self.next_timeout() {
            return Ok(());
        }
        if !self.is_established() {
            return self.fail(BleError::Timeout("handshake"));
        }
        if self.ping_sent_ms.is_some() {
            return self.fail(BleError::Timeout("keepalive"));
        }
        self.ping_sent_ms = Some(now_ms);
        match self.write_record(&[PING]) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }
}

/// The seed's payload policy for BLE: refuses [`Priority::Bulk`] and messages whose
/// full encoding exceeds `max`.
pub fn check_policy(msg: &NetworkMessage, priority: Priority, max: usize) -> Result<(), BleError> {
    if priority == Priority::Bulk {
        return Err(BleError::BulkRefused);
    }
    let size = encode_message(msg).len();
    if size > max {
        return Err(BleError::TooLarge { size, max });
    }
    Ok(())
}

/// The HELLO record: `0x00 || version || max_message_size (u32 BE) || flags`.
pub fn hello_record(max_message_size: usize, flags: u8) -> [u8; 7] {
    let max = u32::try_from(max_message_size).unwrap_or(u32::MAX);
    let [a, b, c, d] = max.to_be_bytes();
    [HELLO, PROTOCOL_VERSION, a, b, c, d, flags]
}

#[cfg(test)]
mod tests;
