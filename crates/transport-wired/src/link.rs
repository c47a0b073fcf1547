//! The sans-io link state machine: bytes and time in, bytes and events out.
//!
//! # Protocol
//! 1. A Noise XX handshake ([`ecomesh_identity::noise`]), each handshake message framed as
//!    `u16 big-endian length || message`.
//! 2. Then every Noise transport message (same framing) carries one *record*:
//!    `kind (1 byte) || body`:
//!    - `HELLO` (`0x00`): `version (1) || max_message_size (u32 BE)`; each side sends it
//!      first, and a link is *established* only once the peer's HELLO arrived (so the
//!      dialling side learns that the responder's access policy accepted it).
//!    - `MORE` (`0x01`) / `END` (`0x02`): a fragment of an encoded
//!      [`ecomesh_types::NetworkMessage`] (full form of `ecomesh-wire`);
//!      `END` completes it. The reassembled message never exceeds the receiver's maximum.
//!    - `PING` (`0x03`) / `PONG` (`0x04`): keepalive, empty body.
//!
//! Any malformed input (bad frame, failed decryption, unknown record, oversize message,
//! undecodable message, missing HELLO) is an error after which the link must be closed;
//! nothing panics on input and buffers are bounded: the receive buffer holds
//! [`RECEIVE_BUFFER`] bytes, the reassembly at most one maximal message plus one record.
//!
//! # Copies
//! A message whose payload is at least `SPLIT_MIN_PAYLOAD` bytes is never encoded
//! whole: its encoding is `head || payload || tail` (`head` and `tail` are a few hundred
//! bytes at most), sent as a `MORE` record of `head` and the payload's first byte, `MORE`
//! records of the payload sealed straight from the message (each record's kind byte
//! borrows the byte before its piece, which is restored), and an `END` record of
//! `tail`. A smaller message is encoded once and cut from its start (the first record
//! `FIRST_CHUNK` bytes, assembled apart, then pieces sealed the same way). Either
//! way, the cipher's own copy into the output buffer is the only copy of a payload
//! byte on the sending side, and the driver writes the output without copying it
//! ([`Link::swap_output`]). Received bytes are read straight into the link's buffer
//! ([`Link::read_buf`], [`Link::commit`]), each record is opened in place there
//! (`decrypt_in_place`) and its body appended to the reassembly, which is decoded once
//! complete. Size checks use `ecomesh_wire::encoded_message_len`, never a trial encoding.
//!
//! # Halves
//! An established link splits ([`Link::split`]) into a [`LinkWriter`] (the session's
//! sending key: messages, PING, PONG) and a [`LinkReader`] (the receiving key, the
//! reassembly and the keepalive clock), so a driver seals on one task while it opens on
//! another; [`Link`] itself is the two joined, for tests and simple drivers.

use std::collections::VecDeque;
use std::sync::Arc;

use ecomesh_identity::noise::{
    FRAME_HEADER_LEN, Handshake, MAX_MESSAGE_LEN, SessionConfig, SessionReceiver, SessionSender,
    TAG_LEN, frame,
};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{NetworkMessage, PeerId};
use ecomesh_wire::{Limits, decode_message_with, encode_message, encoded_message_len};

use crate::error::WiredError;

/// Version byte of the HELLO record.
pub const PROTOCOL_VERSION: u8 = 1;

const HELLO: u8 = 0x00;
const MORE: u8 = 0x01;
const END: u8 = 0x02;
const PING: u8 = 0x03;
const PONG: u8 = 0x04;

/// Size of the receive buffer: four maximal frames, so one read can take several.
pub const RECEIVE_BUFFER: usize = 4 * (FRAME_HEADER_LEN + MAX_MESSAGE_LEN);
/// Free space [`Link::read_buf`] always offers: one maximal frame.
const MIN_READ: usize = FRAME_HEADER_LEN + MAX_MESSAGE_LEN;
/// Bytes of a message sent in its first record, which is assembled apart (the others
/// borrow the byte before their chunk for their kind byte).
const FIRST_CHUNK: usize = 64;
/// Payloads at least this long are sealed straight from the message ([`seal_split`]);
/// a shorter message is encoded whole first ([`seal_message`]).
const SPLIT_MIN_PAYLOAD: usize = 4096;
/// Reassembly capacity kept between messages; more is released after a message.
const KEEP_REASSEMBLY: usize = 2 << 20;

/// Timing and size parameters of a link, in milliseconds and bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// Largest encoded message sent or accepted.
    pub max_message_size: usize,
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
            max_message_size: 16 << 20,
            handshake_timeout_ms: 10_000,
            keepalive_interval_ms: 15_000,
            keepalive_timeout_ms: 15_000,
        }
    }
}

/// Something the link produced for the driver.
#[derive(Clone, Debug, PartialEq)]
pub enum LinkEvent {
    /// The peer is authenticated and its HELLO arrived: the link carries messages.
    Established(PeerId),
    /// A complete message arrived.
    Message(NetworkMessage),
}

enum State {
    Handshaking(Box<Handshake>),
    Open(Box<LinkWriter>),
    Failed,
}

/// One end of a link, sans-io: feed it received bytes with [`Link::receive`] and
/// the time with [`Link::handle_timeout`]; write out [`Link::take_output`]; react to
/// [`Link::poll_event`]. After any error the link is dead and must be closed.
///
/// Once established, [`Link::split`] separates it into a [`LinkWriter`] (sealing) and a
/// [`LinkReader`] (opening, keepalive timing), so a driver can run them on two tasks.
pub struct Link {
    state: State,
    reader: LinkReader,
    /// Output before the writer exists (the handshake messages).
    hs_out: Vec<u8>,
    peer_key: Option<PublicKey>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.reader.peer)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl Link {
    /// The dialling side; `expect` requires a given peer id.
    pub fn initiator(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        expect: Option<PeerId>,
        config: LinkConfig,
        now_ms: u64,
    ) -> Result<Self, WiredError> {
        let mut hs = Handshake::xx_initiator(identity, policy, SessionConfig::default())?;
        if let Some(p) = expect {
            hs = hs.expect_peer(p);
        }
        let mut link = Self::new(hs, config, now_ms);
        link.drive_handshake()?;
        Ok(link)
    }

    /// The accepting side.
    pub fn responder(
        identity: Identity,
        policy: Arc<AccessPolicy>,
        config: LinkConfig,
        now_ms: u64,
    ) -> Result<Self, WiredError> {
        let hs = Handshake::xx_responder(identity, policy, SessionConfig::default())?;
        Ok(Self::new(hs, config, now_ms))
    }

    fn new(hs: Handshake, config: LinkConfig, now_ms: u64) -> Self {
        Link {
            state: State::Handshaking(Box::new(hs)),
            reader: LinkReader::new(config, now_ms),
            hs_out: Vec::new(),
            peer_key: None,
        }
    }

    /// The authenticated peer, once the handshake proved it (possibly before the link
    /// is established).
    pub fn peer(&self) -> Option<PeerId> {
        self.reader.peer
    }

    /// The authenticated peer's Ed25519 public key, once the session is open.
    pub fn peer_key(&self) -> Option<PublicKey> {
        self.peer_key
    }

    /// Whether the peer's HELLO arrived.
    pub fn is_established(&self) -> bool {
        self.reader.is_established()
    }

    /// The largest encoded message this link sends: the smaller of both sides' limits.
    pub fn send_limit(&self) -> usize {
        self.reader.send_limit()
    }

    fn out_mut(&mut self) -> &mut Vec<u8> {
        match &mut self.state {
            State::Open(w) => &mut w.out,
            _ => &mut self.hs_out,
        }
    }

    fn out_ref(&self) -> &Vec<u8> {
        match &self.state {
            State::Open(w) => &w.out,
            _ => &self.hs_out,
        }
    }

    /// Bytes waiting to be written to the socket (taken, in order).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(self.out_mut())
    }

    /// Hands the pending output over without copying: swaps it with `buf`, which must
    /// be empty (its capacity is kept for the next output). Bytes in a non-empty `buf`
    /// would be lost, so then nothing happens and `false` is returned.
    pub fn swap_output(&mut self, buf: &mut Vec<u8>) -> bool {
        swap_out(self.out_mut(), buf)
    }

    /// Whether output is pending.
    pub fn has_output(&self) -> bool {
        !self.out_ref().is_empty()
    }

    /// Bytes of output pending.
    pub fn output_len(&self) -> usize {
        self.out_ref().len()
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.reader.poll_event()
    }

    fn fail<T>(&mut self, e: WiredError) -> Result<T, WiredError> {
        self.state = State::Failed;
        self.reader.failed = true;
        Err(e)
    }

    /// Separates an established link into its sending and receiving halves; pending
    /// output stays with the writer, pending events and received bytes with the reader.
    /// [`WiredError::NotEstablished`] (and the link back) before the peer's HELLO.
    pub fn split(self) -> Result<(LinkWriter, LinkReader), (WiredError, Box<Link>)> {
        if !self.is_established() {
            return Err((WiredError::NotEstablished, Box::new(self)));
        }
        let Link { state, reader, .. } = self;
        match state {
            State::Open(mut w) => {
                w.send_limit = reader.send_limit();
                Ok((*w, reader))
            }
            state => Err((
                WiredError::NotEstablished,
                Box::new(Link {
                    state,
                    reader,
                    hs_out: Vec::new(),
                    peer_key: None,
                }),
            )),
        }
    }

    /// Processes bytes read from the socket, in any chunking (copies them into the
    /// receive buffer; a driver that can read into [`Link::read_buf`] saves that copy).
    pub fn receive(&mut self, mut bytes: &[u8], now_ms: u64) -> Result<(), WiredError> {
        if matches!(self.state, State::Failed) {
            return Err(WiredError::Closed);
        }
        if bytes.is_empty() {
            return self.commit(0, now_ms);
        }
        while !bytes.is_empty() {
            let buf = self.read_buf();
            let n = buf.len().min(bytes.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.commit(n, now_ms)?;
        }
        Ok(())
    }

    /// Free space at the end of the receive buffer, at least one maximal frame: read
    /// from the socket into it, then call [`Link::commit`] with the count read.
    pub fn read_buf(&mut self) -> &mut [u8] {
        self.reader.read_buf()
    }

    /// Processes the first `n` bytes of the last [`Link::read_buf`] (`n` is capped to
    /// its length).
    pub fn commit(&mut self, n: usize, now_ms: u64) -> Result<(), WiredError> {
        if matches!(self.state, State::Failed) {
            return Err(WiredError::Closed);
        }
        self.reader.advance(n, now_ms);
        let result = self.process();
        match result {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Runs the handshake over the received frames, then hands the rest to the reader
    /// and the reader's PONGs to the writer.
    fn process(&mut self) -> Result<(), WiredError> {
        while let State::Handshaking(hs) = &mut self.state {
            let Some(range) = self.reader.take_frame() else {
                return Ok(());
            };
            hs.read_message(&self.reader.rx[range])?;
            if self.reader.peer.is_none() {
                self.reader.peer = hs.remote_public_key().map(|k| k.peer_id());
            }
            self.drive_handshake()?;
        }
        self.reader.drain()?;
        let State::Open(w) = &mut self.state else {
            return Err(WiredError::Closed);
        };
        w.send_limit = self.reader.send_limit();
        for _ in 0..self.reader.take_pongs() {
            w.send_pong()?;
        }
        Ok(())
    }

    fn drive_handshake(&mut self) -> Result<(), WiredError> {
        let State::Handshaking(hs) = &mut self.state else {
            return Ok(());
        };
        while hs.wants_write() {
            let m = hs.write_message()?;
            self.hs_out.extend_from_slice(&frame(&m)?);
        }
        if hs.is_finished() {
            let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Failed) else {
                return Err(WiredError::Closed);
            };
            let session = hs.into_session()?;
            self.reader.peer = Some(session.remote_peer_id());
            self.peer_key = Some(*session.remote_public_key());
            let (tx, rx) = session.split();
            self.reader.session = Some(rx);
            let mut w = LinkWriter {
                session: tx,
                send_limit: self.reader.config.max_message_size,
                out: std::mem::take(&mut self.hs_out),
                scratch: Vec::new(),
            };
            w.write_record(&hello_record(self.reader.config.max_message_size))?;
            self.state = State::Open(Box::new(w));
        }
        Ok(())
    }

    /// Encrypts `msg` into output. Refuses before writing anything if its encoding is
    /// over [`Link::send_limit`] or the link is not established. The message is
    /// unchanged on return: a large payload is sealed straight from `msg.payload`,
    /// whose bytes serve as scratch while it is sealed (see `seal_split`).
    pub fn send_message(&mut self, msg: &mut NetworkMessage) -> Result<(), WiredError> {
        if !self.is_established() {
            return Err(WiredError::NotEstablished);
        }
        let State::Open(w) = &mut self.state else {
            return Err(WiredError::NotEstablished);
        };
        match w.send_message(msg) {
            Ok(()) => Ok(()),
            Err(e @ WiredError::TooLarge { .. }) => Err(e),
            Err(e) => self.fail(e),
        }
    }

    /// When [`Link::handle_timeout`] must next be called, in ms.
    pub fn next_timeout(&self) -> u64 {
        self.reader.next_timeout()
    }

    /// Advances time: sends a PING when the peer was quiet, fails the link when the
    /// handshake or a PING went unanswered too long.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), WiredError> {
        match self.reader.handle_timeout(now_ms) {
            Ok(false) => Ok(()),
            Ok(true) => {
                let State::Open(w) = &mut self.state else {
                    return self.fail(WiredError::Closed);
                };
                match w.send_ping() {
                    Ok(()) => Ok(()),
                    Err(e) => self.fail(e),
                }
            }
            Err(e) => self.fail(e),
        }
    }
}

fn swap_out(out: &mut Vec<u8>, buf: &mut Vec<u8>) -> bool {
    if !buf.is_empty() {
        return false;
    }
    std::mem::swap(out, buf);
    true
}

/// The sending half of an established link ([`Link::split`]): seals messages and
/// keepalive records into its output, which the driver writes to the socket in order.
pub struct LinkWriter {
    session: SessionSender,
    send_limit: usize,
    out: Vec<u8>,
    /// Small records assembled before sealing (the head and tail of a large message).
    scratch: Vec<u8>,
}

impl std::fmt::Debug for LinkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkWriter")
            .field("send_limit", &self.send_limit)
            .field("pending", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl LinkWriter {
    /// The largest encoded message this link sends: the smaller of both sides' limits.
    pub fn send_limit(&self) -> usize {
        self.send_limit
    }

    /// Seals `msg` into the output, as [`Link::send_message`] does: refuses a message
    /// over [`LinkWriter::send_limit`] with [`WiredError::TooLarge`] and no output; any
    /// other error leaves the link unusable. `msg` is unchanged on return.
    pub fn send_message(&mut self, msg: &mut NetworkMessage) -> Result<(), WiredError> {
        let size = encoded_message_len(msg);
        if size > self.send_limit {
            return Err(WiredError::TooLarge {
                size,
                max: self.send_limit,
            });
        }
        let chunk_len = self.session.max_plaintext_len() - 1;
        let start = self.out.len();
        let sealed = seal_any(
            &mut self.session,
            msg,
            chunk_len,
            &mut self.out,
            &mut self.scratch,
        );
        if let Err(e) = sealed {
            self.out.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// Seals a keepalive PING (the reader asked for it, [`LinkReader::handle_timeout`]).
    pub fn send_ping(&mut self) -> Result<(), WiredError> {
        self.write_record(&PING_RECORD)
    }

    /// Seals the PONG answering a PING the reader received ([`LinkReader::take_pongs`]).
    pub fn send_pong(&mut self) -> Result<(), WiredError> {
        self.write_record(&PONG_RECORD)
    }

    fn write_record(&mut self, record: &[u8]) -> Result<(), WiredError> {
        seal_frame(&mut self.session, record, &mut self.out)
    }

    /// Hands the pending output over without copying (see [`Link::swap_output`]).
    pub fn swap_output(&mut self, buf: &mut Vec<u8>) -> bool {
        swap_out(&mut self.out, buf)
    }

    /// Whether output is pending.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Bytes of output pending.
    pub fn output_len(&self) -> usize {
        self.out.len()
    }
}

/// The receiving half of a link ([`Link::split`]): takes received bytes into its
/// buffer ([`LinkReader::read_buf`], [`LinkReader::commit`]), opens each record in
/// place there, reassembles and decodes messages, and keeps the keepalive time. PINGs
/// it receives are owed PONGs ([`LinkReader::take_pongs`]) and a due keepalive is
/// reported by [`LinkReader::handle_timeout`]; the writer seals both.
pub struct LinkReader {
    config: LinkConfig,
    session: Option<SessionReceiver>,
    peer: Option<PeerId>,
    /// Received bytes: `rx[rx_start..rx_end]` is not yet processed (less than a frame
    /// once [`LinkReader::commit`] returned).
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    events: VecDeque<LinkEvent>,
    /// The message bytes received so far.
    reassembly: Vec<u8>,
    peer_max: Option<usize>,
    started_ms: u64,
    last_rx_ms: u64,
    ping_sent_ms: Option<u64>,
    pongs_owed: usize,
    failed: bool,
}

impl std::fmt::Debug for LinkReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkReader")
            .field("peer", &self.peer)
            .field("established", &self.is_established())
            .finish_non_exhaustive()
    }
}

impl LinkReader {
    fn new(config: LinkConfig, now_ms: u64) -> Self {
        LinkReader {
            config,
            session: None,
            peer: None,
            rx: Vec::new(),
            rx_start: 0,
            rx_end: 0,
            events: VecDeque::new(),
            reassembly: Vec::new(),
            peer_max: None,
            started_ms: now_ms,
            last_rx_ms: now_ms,
            ping_sent_ms: None,
            pongs_owed: 0,
            failed: false,
        }
    }

    /// The authenticated peer.
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// Whether the peer's HELLO arrived.
    pub fn is_established(&self) -> bool {
        self.peer_max.is_some()
    }

    fn send_limit(&self) -> usize {
        self.peer_max.map_or(self.config.max_message_size, |p| {
            p.min(self.config.max_message_size)
        })
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// PONGs owed for PINGs received since the last call (the writer sends them).
    pub fn take_pongs(&mut self) -> usize {
        std::mem::take(&mut self.pongs_owed)
    }

    /// Free space at the end of the receive buffer, at least one maximal frame: read
    /// from the socket into it, then call [`LinkReader::commit`] with the count read.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.rx.len() < RECEIVE_BUFFER {
            self.rx.resize(RECEIVE_BUFFER, 0);
        }
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        } else if RECEIVE_BUFFER - self.rx_end < MIN_READ {
            // Less than one frame is pending after a commit: move it to the front.
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        &mut self.rx[self.rx_end..]
    }

    fn advance(&mut self, n: usize, now_ms: u64) {
        self.last_rx_ms = now_ms;
        self.ping_sent_ms = None;
        self.rx_end = (self.rx_end + n).min(self.rx.len());
    }

    /// Processes the first `n` bytes of the last [`LinkReader::read_buf`] (`n` is capped
    /// to its length). After an error the reader is dead.
    pub fn commit(&mut self, n: usize, now_ms: u64) -> Result<(), WiredError> {
        if self.failed {
            return Err(WiredError::Closed);
        }
        self.advance(n, now_ms);
        let r = self.drain();
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// The range in `rx` of the next complete frame's body, taken off the pending bytes.
    fn take_frame(&mut self) -> Option<std::ops::Range<usize>> {
        let pending = self.rx.get(self.rx_start..self.rx_end)?;
        let head = pending.get(..FRAME_HEADER_LEN)?;
        let len = usize::from(u16::from_be_bytes([head[0], head[1]]));
        if pending.len() < FRAME_HEADER_LEN + len {
            return None;
        }
        let start = self.rx_start + FRAME_HEADER_LEN;
        self.rx_start = start + len;
        Some(start..start + len)
    }

    /// Handles every complete transport frame pending.
    fn drain(&mut self) -> Result<(), WiredError> {
        while let Some(range) = self.take_frame() {
            self.on_transport_frame(range)?;
        }
        Ok(())
    }

    /// Opens a transport frame in place in the receive buffer and appends a message
    /// record's body to the reassembly.
    fn on_transport_frame(&mut self, range: std::ops::Range<usize>) -> Result<(), WiredError> {
        let Some(session) = self.session.as_mut() else {
            return Err(WiredError::Closed);
        };
        // Bound before decrypting: the message so far plus this record's body.
        let size = self.reassembly.len() + range.len().saturating_sub(TAG_LEN + 1);
        if size > self.config.max_message_size {
            return Err(WiredError::TooLarge {
                size,
                max: self.config.max_message_size,
            });
        }
        let record = session.decrypt_in_place(&mut self.rx[range])?;
        let Some((&kind, body)) = record.split_first() else {
            return Err(WiredError::Malformed("empty record"));
        };
        if matches!(kind, MORE | END) && self.peer_max.is_some() {
            self.reassembly.extend_from_slice(body);
            if kind == END {
                self.finish_message()?;
            }
            return Ok(());
        }
        let mut short = [0_u8; 8];
        let Some(b) = short.get_mut(..body.len()) else {
            return Err(WiredError::Malformed("control record too long"));
        };
        b.copy_from_slice(body);
        let len = body.len();
        self.on_control(kind, &short[..len])
    }

    fn finish_message(&mut self) -> Result<(), WiredError> {
        let limits = Limits {
            max_len: self.config.max_message_size as u64,
            ..Limits::DEFAULT
        };
        let decoded = decode_message_with(&self.reassembly, &limits);
        self.reassembly.clear();
        if self.reassembly.capacity() > KEEP_REASSEMBLY {
            self.reassembly.shrink_to(KEEP_REASSEMBLY);
        }
        self.events.push_back(LinkEvent::Message(decoded?));
        Ok(())
    }

    fn on_control(&mut self, kind: u8, body: &[u8]) -> Result<(), WiredError> {
        if kind == HELLO {
            if self.peer_max.is_some() {
                return Err(WiredError::Malformed("second HELLO"));
            }
            let [version, a, b, c, d] = body else {
                return Err(WiredError::Malformed("HELLO length"));
            };
            if *version != PROTOCOL_VERSION {
                return Err(WiredError::Malformed("unsupported protocol version"));
            }
            let max = u32::from_be_bytes([*a, *b, *c, *d]);
            self.peer_max = Some(usize::try_from(max).unwrap_or(usize::MAX));
            let peer = self
                .peer
                .ok_or(WiredError::Malformed("HELLO before identity"))?;
            self.events.push_back(LinkEvent::Established(peer));
            return Ok(());
        }
        if self.peer_max.is_none() {
            return Err(WiredError::Malformed("record before HELLO"));
        }
        match kind {
            PING if body.is_empty() => {
                self.pongs_owed = self.pongs_owed.saturating_add(1);
                Ok(())
            }
            PONG if body.is_empty() => Ok(()),
            _ => Err(WiredError::Malformed("unknown record")),
        }
    }

    /// When [`LinkReader::handle_timeout`] must next be called, in ms.
    pub fn next_timeout(&self) -> u64 {
        if !self.is_established() {
            self.started_ms + self.config.handshake_timeout_ms
        } else if let Some(sent) = self.ping_sent_ms {
            sent + self.config.keepalive_timeout_ms
        } else {
            self.last_rx_ms + self.config.keepalive_interval_ms
        }
    }

    /// Advances time: `Ok(true)` when a PING is due now (the writer sends it), an error
    /// when the handshake or a PING went unanswered too long.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<bool, WiredError> {
        if self.failed {
            return Err(WiredError::Closed);
        }
        if now_ms < self.next_timeout() {
            return Ok(false);
        }
        let e = if !self.is_established() {
            WiredError::Timeout("handshake")
        } else if self.ping_sent_ms.is_some() {
            WiredError::Timeout("keepalive")
        } else {
            self.ping_sent_ms = Some(now_ms);
            return Ok(true);
        };
        self.failed = true;
        Err(e)
    }
}

/// Where [`seal_message`] puts each record: the session (sealed frames) or, for the
/// test vectors of the record layer, plain records.
trait Sealer {
    fn seal(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), WiredError>;
}

impl Sealer for SessionSender {
    fn seal(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), WiredError> {
        seal_frame(self, record, out)
    }
}

/// Frames plain records as `u16 length || record`.
struct Plain;

impl Sealer for Plain {
    fn seal(&mut self, record: &[u8], out: &mut Vec<u8>) -> Result<(), WiredError> {
        let len = u16::try_from(record.len())
            .map_err(|_| WiredError::Malformed("record over 65535 bytes"))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(record);
        Ok(())
    }
}

/// Appends one frame `u16 length || Noise message of record` to `out`.
fn seal_frame(
    session: &mut SessionSender,
    record: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), WiredError> {
    let head = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_LEN]);
    if let Err(e) = session.encrypt_into(record, out) {
        out.truncate(head);
        return Err(e.into());
    }
    let len = out.len() - head - FRAME_HEADER_LEN;
    let Ok(len) = u16::try_from(len) else {
        out.truncate(head);
        return Err(WiredError::Malformed("frame over 65535 bytes"));
    };
    out[head..head + FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Seals the encoded message `bytes` as `MORE`/`END` records of at most `chunk_len`
/// body bytes. The first `FIRST_CHUNK` bytes go in a record assembled apart; every
/// later record is the chunk with the byte before it temporarily replaced by the kind
/// (and restored), so no record is copied before the cipher copies it into `out`.
fn seal_message(
    sealer: &mut impl Sealer,
    bytes: &mut [u8],
    chunk_len: usize,
    out: &mut Vec<u8>,
) -> Result<(), WiredError> {
    let chunk_len = chunk_len.max(1);
    let first = bytes.len().min(FIRST_CHUNK);
    let total = bytes.len();
    let kind = |end: usize| if end == total { END } else { MORE };
    let mut record = [0_u8; FIRST_CHUNK + 1];
    record[0] = kind(first);
    record[1..=first].copy_from_slice(&bytes[..first]);
    sealer.seal(&record[..=first], out)?;
    let mut at = first;
    while at < bytes.len() {
        let end = (at + chunk_len).min(bytes.len());
        let k = kind(end);
        let saved = std::mem::replace(&mut bytes[at - 1], k);
        let r = sealer.seal(&bytes[at - 1..end], out);
        bytes[at - 1] = saved;
        r?;
        at = end;
    }
    Ok(())
}

/// Seals `msg` as `MORE`* `END` records of at most `chunk_len` body bytes, the way a
/// link does: a payload of at least `SPLIT_MIN_PAYLOAD` bytes straight from the
/// message ([`seal_split`]), anything else from its whole encoding ([`seal_message`]).
/// `msg` is unchanged on return.
fn seal_any(
    sealer: &mut impl Sealer,
    msg: &mut NetworkMessage,
    chunk_len: usize,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), WiredError> {
    if msg.payload.len() >= SPLIT_MIN_PAYLOAD
        && let Some((head, tail)) = encoding_around_payload(msg)
        && head.len() < chunk_len
        && tail.len() <= chunk_len
    {
        return seal_split(
            sealer,
            (&head, &mut msg.payload, &tail),
            chunk_len,
            out,
            scratch,
        );
    }
    seal_message(sealer, &mut encode_message(msg), chunk_len, out)
}

/// The full encoding of `msg` around its payload's bytes: `(head, tail)` with
/// `encode_message(msg) == head || msg.payload || tail` (`head` ends with the payload's
/// CBOR byte-string head). Found from two small encodings of `msg` with a 0- and a
/// 1-byte payload, checked against [`encoded_message_len`]; `None` if the encoding
/// does not have that shape. `msg` is unchanged on return.
fn encoding_around_payload(msg: &mut NetworkMessage) -> Option<(Vec<u8>, Vec<u8>)> {
    let payload = std::mem::take(&mut msg.payload);
    let empty = encode_message(msg);
    msg.payload.push(0);
    let one = encode_message(msg);
    msg.payload = payload;
    // empty = P || 0x40 || S and one = P || 0x41 0x00 || S.
    let p = empty.iter().zip(&one).take_while(|(a, b)| a == b).count();
    let tail = empty.get(p + 1..)?;
    if empty.get(p) != Some(&0x40)
        || one.get(p..p + 2) != Some(&[0x41, 0x00][..])
        || one.get(p + 2..) != Some(tail)
    {
        return None;
    }
    let mut head = empty[..p].to_vec();
    let len = msg.payload.len() as u64;
    match len {
        0..24 => head.push(0x40 | len as u8),
        24..=0xff => head.extend_from_slice(&[0x58, len as u8]),
        0x100..=0xffff => {
            head.push(0x59);
            head.extend_from_slice(&(len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            head.push(0x5a);
            head.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            head.push(0x5b);
            head.extend_from_slice(&len.to_be_bytes());
        }
    }
    let whole = head.len() + msg.payload.len() + tail.len();
    (whole == encoded_message_len(msg)).then(|| (head, tail.to_vec()))
}

/// Seals a message whose encoding is `head || payload || tail` (non-empty `payload`,
/// `head` shorter than `chunk_len`, `tail` at most `chunk_len`) without encoding it
/// whole: a first `MORE` record of `head` and the payload's first byte (assembled in
/// `scratch`), `MORE` records of the rest of the payload in `chunk_len` pieces, each
/// sealed in place with the byte before its piece lent to the kind byte (and
/// restored), and an `END` record of `tail`.
fn seal_split(
    sealer: &mut impl Sealer,
    (head, payload, tail): (&[u8], &mut [u8], &[u8]),
    chunk_len: usize,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), WiredError> {
    let chunk_len = chunk_len.max(1);
    let Some(&first) = payload.first() else {
        return Err(WiredError::Malformed("split message without payload"));
    };
    scratch.clear();
    scratch.push(MORE);
    scratch.extend_from_slice(head);
    scratch.push(first);
    sealer.seal(scratch, out)?;
    let mut at = 1;
    while at < payload.len() {
        let end = (at + chunk_len).min(payload.len());
        let saved = std::mem::replace(&mut payload[at - 1], MORE);
        let r = sealer.seal(&payload[at - 1..end], out);
        payload[at - 1] = saved;
        r?;
        at = end;
    }
    scratch.clear();
    scratch.push(END);
    scratch.extend_from_slice(tail);
    sealer.seal(scratch, out)
}

/// The record layer without the cipher, for test vectors and tools: the records
/// [`Link::send_message`] seals for `msg` when a record carries at most `chunk_len`
/// body bytes (a link uses the session's maximum, 65518), each framed as
/// `u16 big-endian length || record`. On the wire each record is one Noise transport
/// message instead (the record encrypted, plus a 16-byte tag, and the frame length
/// counts both).
pub fn message_records(msg: &NetworkMessage, chunk_len: usize) -> Vec<u8> {
    let mut msg = msg.clone();
    let mut out = Vec::with_capacity(encoded_message_len(&msg) + 64);
    // Plain framing fails only on a record over 65535 bytes.
    let chunk_len = chunk_len.min(MAX_MESSAGE_LEN - 1);
    if seal_any(&mut Plain, &mut msg, chunk_len, &mut out, &mut Vec::new()).is_err() {
        out.clear();
    }
    out
}

/// The HELLO record a link sends first: `0x00 || version || max_message_size (u32 BE)`.
pub fn hello_record(max_message_size: usize) -> [u8; 6] {
    let max = u32::try_from(max_message_size).unwrap_or(u32::MAX);
    let [a, b, c, d] = max.to_be_bytes();
    [HELLO, PROTOCOL_VERSION, a, b, c, d]
}

/// The keepalive records: `PING` (`0x03`) and its answer `PONG` (`0x04`), empty bodies.
pub const PING_RECORD: [u8; 1] = [PING];
/// See [`PING_RECORD`].
pub const PONG_RECORD: [u8; 1] = [PONG];

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LinkConfig {
        LinkConfig {
            max_message_size: 200_000,
            handshake_timeout_ms: 1000,
            keepalive_interval_ms: 500,
            keepalive_timeout_ms: 300,
        }
    }

    fn msg(sender: PeerId, payload: Vec<u8>) -> NetworkMessage {
        NetworkMessage {
            id: ecomesh_types::MessageId([0x11; 16]),
            message_type: "t".into(),
            payload,
            sender,
            recipient: None,
            timestamp_ms: 5,
            ttl_secs: 60,
            hop_count: 0,
            max_hops: 10,
            signature: ecomesh_types::Signature::UNSIGNED,
        }
    }

    /// Moves output between the two ends until neither has any.
    fn pump(a: &mut Link, b: &mut Link, now: u64) -> Result<(), WiredError> {
        while a.has_output() || b.has_output() {
            let o = a.take_output();
            b.receive(&o, now)?;
            let o = b.take_output();
            a.receive(&o, now)?;
        }
        Ok(())
    }

    fn pair(pa: AccessPolicy, pb: AccessPolicy) -> (Link, Link, Identity, Identity) {
        let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let a = Link::initiator(ia.clone(), Arc::new(pa), None, cfg(), 0).unwrap();
        let b = Link::responder(ib.clone(), Arc::new(pb), cfg(), 0).unwrap();
        (a, b, ia, ib)
    }

    #[test]
    fn establishes_and_carries_messages_of_every_size() {
        let (mut a, mut b, ia, ib) = pair(AccessPolicy::Open, AccessPolicy::Open);
        pump(&mut a, &mut b, 1).unwrap();
        assert_eq!(a.poll_event(), Some(LinkEvent::Established(ib.peer_id())));
        assert_eq!(b.poll_event(), Some(LinkEvent::Established(ia.peer_id())));
        for len in [0usize, 1, 65_517, 65_518, 65_519, 140_000] {
            let mut m = msg(ia.peer_id(), vec![3; len]);
            a.send_message(&mut m).unwrap();
            pump(&mut a, &mut b, 2).unwrap();
            assert_eq!(b.poll_event(), Some(LinkEvent::Message(m)));
        }
        // Exactly the limit passes, one more byte is refused without output.
        let mut over = msg(ia.peer_id(), vec![0; 200_000]);
        assert!(matches!(
            a.send_message(&mut over),
            Err(WiredError::TooLarge { max: 200_000, .. })
        ));
        assert!(!a.has_output());
    }

    /// The halves of a split link carry messages both ways, answer a PING with a PONG
    /// through the writer, and report a due keepalive; a link splits only once
    /// established, and bytes that arrived with the HELLO stay with the reader.
    #[test]
    fn split_halves_carry_messages_and_keepalive() {
        let (a, mut b, ia, ib) = pair(AccessPolicy::Open, AccessPolicy::Open);
        let a = match a.split() {
            Err((WiredError::NotEstablished, link)) => *link,
            other => panic!("split before the handshake: {other:?}"),
        };
        let mut a = a;
        pump(&mut a, &mut b, 1).unwrap();
        // b sends a message that reaches a together with the rest of the exchange.
        let mut early = msg(ib.peer_id(), vec![9; 70_000]);
        b.send_message(&mut early).unwrap();
        let o = b.take_output();
        a.receive(&o, 1).unwrap();
        let (mut aw, mut ar) = a.split().unwrap();
        assert_eq!(ar.poll_event(), Some(LinkEvent::Established(ib.peer_id())));
        assert_eq!(ar.poll_event(), Some(LinkEvent::Message(early)));
        assert_eq!(aw.send_limit(), 200_000);
        let mut out = Vec::new();
        assert!(aw.swap_output(&mut out));
        b.receive(&out, 2).unwrap();
        assert_eq!(b.poll_event(), Some(LinkEvent::Established(ia.peer_id())));
        for len in [0usize, 5, 65_519, 150_000] {
            let mut m = msg(ia.peer_id(), vec![4; len]);
            aw.send_message(&mut m).unwrap();
            let mut out = Vec::new();
            aw.swap_output(&mut out);
            b.receive(&out, 3).unwrap();
            assert_eq!(b.poll_event(), Some(LinkEvent::Message(m)));
        }
        let mut over = msg(ia.peer_id(), vec![0; 200_000]);
        assert!(matches!(
            aw.send_message(&mut over),
            Err(WiredError::TooLarge { .. })
        ));
        assert!(!aw.has_output());
        // b pings (its keepalive is due); a's reader owes a PONG, a's writer seals it.
        b.handle_timeout(3 + 500).unwrap();
        let ping = b.take_output();
        let buf = ar.read_buf();
        buf[..ping.len()].copy_from_slice(&ping);
        ar.commit(ping.len(), 600).unwrap();
        assert_eq!(ar.take_pongs(), 1);
        aw.send_pong().unwrap();
        let mut out = Vec::new();
        aw.swap_output(&mut out);
        b.receive(&out, 601).unwrap();
        assert_eq!(b.next_timeout(), 601 + 500, "the PONG reset b's keepalive");
        // a's reader: quiet for the interval, a PING is due, then the timeout fails it.
        assert_eq!(ar.next_timeout(), 1100);
        assert!(!ar.handle_timeout(1099).unwrap());
        assert!(ar.handle_timeout(1100).unwrap());
        assert!(matches!(
            ar.handle_timeout(1400),
            Err(WiredError::Timeout("keepalive"))
        ));
        assert!(matches!(ar.commit(0, 1401), Err(WiredError::Closed)));
    }

    #[test]
    fn policy_refusal_never_establishes() {
        let (mut a, _, ia, _) = pair(AccessPolicy::Open, AccessPolicy::Open);
        // b blocks a.
        let mut b = Link::responder(
            Identity::generate().unwrap(),
            Arc::new(AccessPolicy::block([ia.peer_id()])),
            cfg(),
            0,
        )
        .unwrap();
        assert!(pump(&mut a, &mut b, 1).is_err());
        assert_eq!(a.poll_event(), None);
        assert_eq!(b.poll_event(), None);
        assert!(a.peer().is_some(), "initiator learns who refused it");
    }

    #[test]
    fn keepalive_pings_then_times_out() {
        let (mut a, mut b, _, _) = pair(AccessPolicy::Open, AccessPolicy::Open);
        pump(&mut a, &mut b, 0).unwrap();
        assert_eq!(a.next_timeout(), 500);
        a.handle_timeout(499).unwrap();
        assert!(!a.has_output());
        a.handle_timeout(500).unwrap();
        assert!(a.has_output());
        // b answers: a is alive again.
        pump(&mut a, &mut b, 600).unwrap();
        assert_eq!(a.next_timeout(), 1100);
        // b goes silent: ping at 1100, fail at 1400.
        a.handle_timeout(1100).unwrap();
        let _ = a.take_output();
        a.handle_timeout(1399).unwrap();
        assert!(matches!(
            a.handle_timeout(1400),
            Err(WiredError::Timeout("keepalive"))
        ));
    }

    #[test]
    fn handshake_times_out() {
        let (mut a, _, _, _) = pair(AccessPolicy::Open, AccessPolicy::Open);
        assert!(a.handle_timeout(999).is_ok());
        assert!(matches!(
            a.handle_timeout(1000),
            Err(WiredError::Timeout("handshake"))
        ));
        assert!(a.receive(&[0, 1, 2], 1001).is_err());
    }

    #[test]
    fn garbage_fails_cleanly() {
        let (mut a, mut b, _, _) = pair(AccessPolicy::Open, AccessPolicy::Open);
        pump(&mut a, &mut b, 0).unwrap();
        // A frame that does not decrypt.
        assert!(b.receive(&[0, 4, 1, 2, 3, 4], 1).is_err());
        // An oversize buffer on a fresh responder.
        let mut r = Link::responder(
            Identity::generate().unwrap(),
            Arc::new(AccessPolicy::Open),
            cfg(),
            0,
        )
        .unwrap();
        let junk = vec![0xffu8; 300_000];
        assert!(r.receive(&junk, 1).is_err());
    }

    /// Splits plain `u16 length || record` frames.
    fn records(mut bytes: &[u8]) -> Vec<&[u8]> {
        let mut out = Vec::new();
        while bytes.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
            out.push(&bytes[2..2 + len]);
            bytes = &bytes[2 + len..];
        }
        assert!(bytes.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn large_payloads_are_sealed_apart_from_their_head_and_tail() {
        let (ia, _) = (Identity::generate().unwrap(), ());
        let m = msg(ia.peer_id(), (0..70_000u32).map(|i| i as u8).collect());
        let encoded = encode_message(&m);
        let framed = message_records(&m, 65_518);
        let recs = records(&framed);
        // head + first payload byte, 65518 payload bytes, the other 4481, the tail.
        let lens: Vec<usize> = recs.iter().map(|r| r.len() - 1).collect();
        let tail = lens[3];
        let head = encoded.len() - 70_000 - tail;
        assert_eq!(lens, vec![head + 1, 65_518, 70_000 - 65_519, tail]);
        assert!(head < 100 && tail < 200, "head {head}, tail {tail}");
        let kinds: Vec<u8> = recs.iter().map(|r| r[0]).collect();
        assert_eq!(kinds, vec![MORE, MORE, MORE, END]);
        // Below the threshold, the whole encoding is cut from its start.
        let small = msg(ia.peer_id(), vec![1; SPLIT_MIN_PAYLOAD - 1]);
        let lens: Vec<usize> = records(&message_records(&small, 65_518))
            .iter()
            .map(|r| r.len() - 1)
            .collect();
        assert_eq!(
            lens,
            vec![FIRST_CHUNK, encode_message(&small).len() - FIRST_CHUNK]
        );
    }

    proptest::proptest! {
        #[test]
        fn prop_records_carry_exactly_the_encoding(
            len in 0usize..20_000,
            type_len in 0usize..300,
            chunk in 1usize..70_000,
            recipient in proptest::prelude::any::<bool>(),
        ) {
            let mut m = msg(PeerId::from_digest([7; 32]), (0..len).map(|i| (i * 13) as u8).collect());
            m.message_type = "t".repeat(type_len);
            if recipient {
                m.recipient = Some(PeerId::from_digest([8; 32]));
            }
            let framed = message_records(&m, chunk);
            let recs = records(&framed);
            let mut body = Vec::new();
            for (i, r) in recs.iter().enumerate() {
                let want = if i + 1 == recs.len() { END } else { MORE };
                proptest::prop_assert_eq!(r[0], want);
                proptest::prop_assert!(r.len() - 1 <= chunk.clamp(FIRST_CHUNK, MAX_MESSAGE_LEN - 1));
                body.extend_from_slice(&r[1..]);
            }
            proptest::prop_assert_eq!(body, encode_message(&m));
        }

        #[test]
        fn prop_garbage_never_panics(chunks in proptest::collection::vec(
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 0..8)) {
            let (mut a, mut b, _, _) = pair(AccessPolicy::Open, AccessPolicy::Open);
            for c in &chunks {
                let _ = b.receive(c, 1);
            }
            // And on an open link.
            pump(&mut a, &mut b, 1).ok();
            for c in &chunks {
                if a.receive(c, 2).is_err() {
                    break;
                }
            }
        }

        #[test]
        fn prop_any_chunking_delivers(cut in 1usize..70_000, lens in proptest::collection::vec(0usize..70_000, 1..4)) {
            let (mut a, mut b, ia, _) = pair(AccessPolicy::Open, AccessPolicy::Open);
            pump(&mut a, &mut b, 0).unwrap();
            let _ = (a.poll_event(), b.poll_event());
            let mut sent: Vec<NetworkMessage> = lens.iter().map(|&l| msg(ia.peer_id(), (0..l).map(|i| i as u8).collect())).collect();
            for m in &mut sent {
                a.send_message(m).unwrap();
            }
            let out = a.take_output();
            for c in out.chunks(cut) {
                b.receive(c, 1).unwrap();
            }
            let got: Vec<LinkEvent> = std::iter::from_fn(|| b.poll_event()).collect();
            let want: Vec<LinkEvent> = sent.into_iter().map(LinkEvent::Message).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }
}
