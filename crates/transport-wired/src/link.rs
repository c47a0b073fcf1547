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
//! nothing panics on input and buffers are bounded by the frame decoder capacity plus
//! one maximal message.

use std::collections::VecDeque;
use std::sync::Arc;

use ecomesh_identity::noise::{
    FRAME_HEADER_LEN, FrameDecoder, Handshake, MAX_MESSAGE_LEN, Session, SessionConfig, frame,
};
use ecomesh_identity::{AccessPolicy, Identity, PublicKey};
use ecomesh_types::{NetworkMessage, PeerId};
use ecomesh_wire::{Limits, decode_message_with, encode_message};

use crate::error::WiredError;

/// Version byte of the HELLO record.
pub const PROTOCOL_VERSION: u8 = 1;

const HELLO: u8 = 0x00;
const MORE: u8 = 0x01;
const END: u8 = 0x02;
const PING: u8 = 0x03;
const PONG: u8 = 0x04;

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
    Open(Box<Session>),
    Failed,
}

/// One end of a link, sans-io: feed it received bytes with [`Link::receive`] and
/// the time with [`Link::handle_timeout`]; write out [`Link::take_output`]; react to
/// [`Link::poll_event`]. After any error the link is dead and must be closed.
pub struct Link {
    config: LinkConfig,
    state: State,
    decoder: FrameDecoder,
    out: Vec<u8>,
    events: VecDeque<LinkEvent>,
    reassembly: Vec<u8>,
    peer: Option<PeerId>,
    peer_max: Option<usize>,
    started_ms: u64,
    last_rx_ms: u64,
    ping_sent_ms: Option<u64>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("peer", &self.peer)
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
            config,
            state: State::Handshaking(Box::new(hs)),
            decoder: FrameDecoder::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            reassembly: Vec::new(),
            peer: None,
            peer_max: None,
            started_ms: now_ms,
            last_rx_ms: now_ms,
            ping_sent_ms: None,
        }
    }

    /// The authenticated peer, once the handshake proved it (possibly before the link
    /// is established).
    pub fn peer(&self) -> Option<PeerId> {
        self.peer
    }

    /// The authenticated peer's Ed25519 public key, once the session is open.
    pub fn peer_key(&self) -> Option<PublicKey> {
        match &self.state {
            State::Open(session) => Some(*session.remote_public_key()),
            _ => None,
        }
    }

    /// Whether the peer's HELLO arrived.
    pub fn is_established(&self) -> bool {
        self.peer_max.is_some()
    }

    /// The largest encoded message this link sends: the smaller of both sides' limits.
    pub fn send_limit(&self) -> usize {
        self.peer_max.map_or(self.config.max_message_size, |p| {
            p.min(self.config.max_message_size)
        })
    }

    /// Bytes waiting to be written to the socket (taken, in order).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Whether output is pending.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The next event, in the order they happened.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    fn fail<T>(&mut self, e: WiredError) -> Result<T, WiredError> {
        self.state = State::Failed;
        Err(e)
    }

    /// Processes bytes read from the socket, in any chunking.
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), WiredError> {
        if matches!(self.state, State::Failed) {
            return Err(WiredError::Closed);
        }
        self.last_rx_ms = now_ms;
        self.ping_sent_ms = None;
        // After draining, less than one frame is buffered, so a chunk of one maximal
        // frame always fits the decoder's two-frame capacity.
        for chunk in bytes.chunks(FRAME_HEADER_LEN + MAX_MESSAGE_LEN) {
            if let Err(e) = self.decoder.push(chunk) {
                return self.fail(e.into());
            }
            while let Some(f) = self.decoder.next_frame() {
                if let Err(e) = self.on_frame(&f) {
                    return self.fail(e);
                }
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, f: &[u8]) -> Result<(), WiredError> {
        match &mut self.state {
            State::Handshaking(hs) => {
                hs.read_message(f)?;
                if self.peer.is_none() {
                    self.peer = hs.remote_public_key().map(|k| k.peer_id());
                }
                self.drive_handshake()
            }
            State::Open(session) => {
                let plain = session.decrypt(f)?;
                self.on_record(&plain)
            }
            State::Failed => Err(WiredError::Closed),
        }
    }

    fn drive_handshake(&mut self) -> Result<(), WiredError> {
        let State::Handshaking(hs) = &mut self.state else {
            return Ok(());
        };
        while hs.wants_write() {
            let m = hs.write_message()?;
            self.out.extend_from_slice(&frame(&m)?);
        }
        if hs.is_finished() {
            let State::Handshaking(hs) = std::mem::replace(&mut self.state, State::Failed) else {
                return Err(WiredError::Closed);
            };
            let session = hs.into_session()?;
            self.peer = Some(session.remote_peer_id());
            self.state = State::Open(Box::new(session));
            let max = u32::try_from(self.config.max_message_size).unwrap_or(u32::MAX);
            let mut hello = vec![HELLO, PROTOCOL_VERSION];
            hello.extend_from_slice(&max.to_be_bytes());
            self.write_record(&hello)?;
        }
        Ok(())
    }

    fn write_record(&mut self, record: &[u8]) -> Result<(), WiredError> {
        let State::Open(session) = &mut self.state else {
            return Err(WiredError::NotEstablished);
        };
        let c = session.encrypt(record)?;
        self.out.extend_from_slice(&frame(&c)?);
        Ok(())
    }

    fn on_record(&mut self, plain: &[u8]) -> Result<(), WiredError> {
        let (&kind, body) = plain
            .split_first()
            .ok_or(WiredError::Malformed("empty record"))?;
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
            MORE | END => {
                let size = self.reassembly.len() + body.len();
                if size > self.config.max_message_size {
                    return Err(WiredError::TooLarge {
                        size,
                        max: self.config.max_message_size,
                    });
                }
                self.reassembly.extend_from_slice(body);
                if kind == END {
                    let bytes = std::mem::take(&mut self.reassembly);
                    let limits = Limits {
                        max_len: self.config.max_message_size as u64,
                        ..Limits::DEFAULT
                    };
                    let msg = decode_message_with(&bytes, &limits)?;
                    self.events.push_back(LinkEvent::Message(msg));
                }
                Ok(())
            }
            PING if body.is_empty() => self.write_record(&[PONG]),
            PONG if body.is_empty() => Ok(()),
            _ => Err(WiredError::Malformed("unknown record")),
        }
    }

    /// Encrypts `msg` into output. Refuses before writing anything if its encoding is
    /// over [`Link::send_limit`] or the link is not established.
    pub fn send_message(&mut self, msg: &NetworkMessage) -> Result<(), WiredError> {
        if !self.is_established() {
            return Err(WiredError::NotEstablished);
        }
        let bytes = encode_message(msg);
        let max = self.send_limit();
        if bytes.len() > max {
            return Err(WiredError::TooLarge {
                size: bytes.len(),
                max,
            });
        }
        let chunk_len = match &self.state {
            State::Open(s) => s.max_plaintext_len() - 1,
            _ => return Err(WiredError::NotEstablished),
        };
        let mut chunks = bytes.chunks(chunk_len).peekable();
        if chunks.peek().is_none() {
            return self.write_record(&[END]);
        }
        let mut record = Vec::with_capacity(chunk_len + 1);
        while let Some(c) = chunks.next() {
            record.clear();
            record.push(if chunks.peek().is_some() { MORE } else { END });
            record.extend_from_slice(c);
            if let Err(e) = self.write_record(&record) {
                return self.fail(e);
            }
        }
        Ok(())
    }

    /// When [`Link::handle_timeout`] must next be called, in ms.
    pub fn next_timeout(&self) -> u64 {
        if !self.is_established() {
            self.started_ms + self.config.handshake_timeout_ms
        } else if let Some(sent) = self.ping_sent_ms {
            sent + self.config.keepalive_timeout_ms
        } else {
            self.last_rx_ms + self.config.keepalive_interval_ms
        }
    }

    /// Advances time: sends a PING when the peer was quiet, fails the link when the
    /// handshake or a PING went unanswered too long.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Result<(), WiredError> {
        if now_ms < self.next_timeout() {
            return Ok(());
        }
        if !self.is_established() {
            return self.fail(WiredError::Timeout("handshake"));
        }
        if self.ping_sent_ms.is_some() {
            return self.fail(WiredError::Timeout("keepalive"));
        }
        self.ping_sent_ms = Some(now_ms);
        self.write_record(&[PING])
    }
}

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
            let m = msg(ia.peer_id(), vec![3; len]);
            a.send_message(&m).unwrap();
            pump(&mut a, &mut b, 2).unwrap();
            assert_eq!(b.poll_event(), Some(LinkEvent::Message(m)));
        }
        // Exactly the limit passes, one more byte is refused without output.
        let over = msg(ia.peer_id(), vec![0; 200_000]);
        assert!(matches!(
            a.send_message(&over),
            Err(WiredError::TooLarge { max: 200_000, .. })
        ));
        assert!(!a.has_output());
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

    proptest::proptest! {
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
            let sent: Vec<NetworkMessage> = lens.iter().map(|&l| msg(ia.peer_id(), vec![9; l])).collect();
            for m in &sent {
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
