//! Framing over GATT or an L2CAP channel, sans-io: units (whole Noise messages) cut
//! into fragments of at most one ATT payload or one L2CAP SDU, reassembled with hard
//! caps, under per-link credits.
//!
//! # Channels
//! A link runs over one [`Channel`]:
//! - [`Channel::Gatt`]: each fragment is one value written to the write characteristic
//!   (GATT client to server) or notified on the notify characteristic (server to
//!   client), at most `ATT_MTU - 3` bytes;
//! - [`Channel::Coc`]: an L2CAP LE connection-oriented channel (both sides offer one,
//!   PSM [`crate::gatt::L2CAP_PSM`]); each fragment is one SDU, at most the channel's
//!   SDU MTU and never over [`MAX_COC_FRAGMENT`] (a whole unit of [`MAX_UNIT_LEN`]
//!   bytes with its `FIRST` header), so a unit takes one SDU. The channel's own
//!   credit-based flow control paces K-frames below; the unit credits here still bound
//!   what each side buffers.
//!
//! # Fragments
//! Whatever the channel, a fragment's first byte is its kind:
//! - `FIRST` (`0x01`): `0x01 || unit_len (u16 BE) || data`: starts a unit of
//!   `unit_len` bytes (`1..=`[`MAX_UNIT_LEN`]), `data` its first bytes (may be all);
//! - `CONT` (`0x02`): `0x02 || data` (non-empty): the next bytes of the unit;
//! - `CREDIT` (`0x03`): `0x03 || n (u8)`, `n >= 1`: the receiver grants `n` more units.
//!
//! A unit is complete when `unit_len` bytes arrived; a `FIRST` in the middle of a unit,
//! a `CONT` outside one, or a `CONT` overrunning `unit_len` is malformed.
//!
//! # Flow control
//! Each side may start [`INITIAL_CREDITS`] units before hearing any credit; each `FIRST`
//! spends one. The receiver returns credits as its owner takes complete units (in
//! batches of half the window), so at most `window` units are ever buffered. A sender
//! holding more than [`MAX_UNITS_IN_FLIGHT`] credits, or a `FIRST` without credit, is a
//! protocol violation ([`BleError::CreditOverflow`], [`BleError::CreditViolation`]).
//!
//! # Bounds
//! Received memory per link is at most `window` complete units plus one partial unit,
//! each at most [`MAX_UNIT_LEN`] bytes and [`MAX_FRAGMENTS_PER_UNIT`] fragments; the
//! send queue holds at most [`FramerConfig::max_queued_units`] units.

use std::collections::VecDeque;

use crate::error::BleError;

/// Smallest ATT MTU (Bluetooth Core, the default before an exchange).
pub const MIN_ATT_MTU: u16 = 23;
/// Largest ATT MTU (512-byte attribute values plus the 5-byte prepare-write header).
pub const MAX_ATT_MTU: u16 = 517;
/// Bytes of the ATT header of a write command or notification (opcode and handle).
pub const ATT_HEADER_LEN: usize = 3;
/// Hard cap on the length of one unit.
pub const MAX_UNIT_LEN: usize = 4096;
/// Hard cap on the fragments of one unit (received: counted; sent: refused up front).
pub const MAX_FRAGMENTS_PER_UNIT: usize = 256;
/// Units each side may start before the first credit arrives.
pub const INITIAL_CREDITS: u8 = 4;
/// Hard cap on the credits a sender may hold (units in flight per link and direction).
pub const MAX_UNITS_IN_FLIGHT: usize = 16;

/// Kind byte of a fragment starting a unit.
pub const FIRST: u8 = 0x01;
/// Kind byte of a continuation fragment.
pub const CONT: u8 = 0x02;
/// Kind byte of a credit grant.
pub const CREDIT: u8 = 0x03;
/// Header bytes of a `FIRST` fragment.
pub const FIRST_HEADER_LEN: usize = 3;
/// Smallest SDU MTU of an L2CAP LE credit-based channel (Bluetooth Core, 23).
pub const MIN_COC_MTU: u16 = 23;
/// Largest fragment on an L2CAP channel: one whole unit with its `FIRST` header.
pub const MAX_COC_FRAGMENT: usize = FIRST_HEADER_LEN + MAX_UNIT_LEN;

/// What a link's fragments travel over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Channel {
    /// GATT writes (and notifications) at this ATT MTU (`23..=517`).
    Gatt {
        /// The negotiated ATT MTU.
        mtu: u16,
    },
    /// An L2CAP LE connection-oriented channel: one SDU per fragment.
    Coc {
        /// The PSM it was opened on.
        psm: u16,
        /// The largest SDU both ends take (the smaller of the two MTUs, at least
        /// [`MIN_COC_MTU`]).
        sdu_mtu: u16,
    },
}

impl From<u16> for Channel {
    /// A GATT channel at ATT MTU `mtu`.
    fn from(mtu: u16) -> Self {
        Channel::Gatt { mtu }
    }
}

impl Channel {
    /// Checks the channel's size is in range (ATT MTU `23..=517`, SDU MTU at least 23).
    pub fn check(self) -> Result<Self, BleError> {
        match self {
            Channel::Gatt { mtu } => check_mtu(mtu).map(|_| self),
            Channel::Coc { sdu_mtu, .. } if sdu_mtu < MIN_COC_MTU => {
                Err(BleError::MtuOutOfRange(sdu_mtu))
            }
            Channel::Coc { .. } => Ok(self),
        }
    }

    /// Largest fragment on this channel: the ATT payload (`mtu - 3`) or the SDU MTU
    /// capped at [`MAX_COC_FRAGMENT`].
    pub fn max_fragment_len(self) -> usize {
        match self {
            Channel::Gatt { mtu } => usize::from(mtu).saturating_sub(ATT_HEADER_LEN),
            Channel::Coc { sdu_mtu, .. } => usize::from(sdu_mtu).min(MAX_COC_FRAGMENT),
        }
    }

    /// Whether this is an L2CAP channel.
    pub fn is_coc(self) -> bool {
        matches!(self, Channel::Coc { .. })
    }
}

/// One decoded fragment, borrowing its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment<'a> {
    /// Starts a unit of `unit_len` bytes.
    First {
        /// Length of the whole unit.
        unit_len: u16,
        /// Its first bytes.
        data: &'a [u8],
    },
    /// The next bytes of the current unit.
    Cont(&'a [u8]),
    /// Grants this many more units.
    Credit(u8),
}

impl<'a> Fragment<'a> {
    /// Decodes one fragment; checks its shape only (not the link state).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, BleError> {
        match bytes {
            [FIRST, a, b, data @ ..] => {
                let unit_len = u16::from_be_bytes([*a, *b]);
                if unit_len == 0 {
                    return Err(BleError::Malformed("empty unit"));
                }
                if usize::from(unit_len) > MAX_UNIT_LEN {
                    return Err(BleError::UnitTooLarge {
                        len: usize::from(unit_len),
                        max: MAX_UNIT_LEN,
                    });
                }
                if data.len() > usize::from(unit_len) {
                    return Err(BleError::Malformed("FIRST longer than its unit"));
                }
                Ok(Fragment::First { unit_len, data })
            }
            [FIRST, ..] => Err(BleError::Malformed("short FIRST header")),
            [CONT] => Err(BleError::Malformed("empty CONT")),
            [CONT, data @ ..] => Ok(Fragment::Cont(data)),
            [CREDIT, n] if *n > 0 => Ok(Fragment::Credit(*n)),
            [CREDIT, ..] => Err(BleError::Malformed("bad CREDIT")),
            [] => Err(BleError::Malformed("empty fragment")),
            _ => Err(BleError::Malformed("unknown fragment kind")),
        }
    }

    /// Appends the encoding to `out`; [`Fragment::decode`] of it gives `self` back.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Fragment::First { unit_len, data } => {
                out.push(FIRST);
                out.extend_from_slice(&unit_len.to_be_bytes());
                out.extend_from_slice(data);
            }
            Fragment::Cont(data) => {
                out.push(CONT);
                out.extend_from_slice(data);
            }
            Fragment::Credit(n) => out.extend_from_slice(&[CREDIT, *n]),
        }
    }
}

/// Checks an ATT MTU is in `23..=517`.
pub fn check_mtu(mtu: u16) -> Result<u16, BleError> {
    if (MIN_ATT_MTU..=MAX_ATT_MTU).contains(&mtu) {
        Ok(mtu)
    } else {
        Err(BleError::MtuOutOfRange(mtu))
    }
}

/// How many fragments a unit of `len` bytes takes at ATT MTU `mtu`.
pub fn fragments_for(len: usize, mtu: u16) -> usize {
    fragments_for_payload(len, usize::from(mtu).saturating_sub(ATT_HEADER_LEN))
}

/// How many fragments a unit of `len` bytes takes with fragments of at most `payload`
/// bytes ([`Channel::max_fragment_len`]).
pub fn fragments_for_payload(len: usize, payload: usize) -> usize {
    let first = payload.saturating_sub(FIRST_HEADER_LEN).max(1);
    let cont = payload.saturating_sub(1).max(1);
    if len <= first {
        1
    } else {
        1 + (len - first).div_ceil(cont)
    }
}

/// Limits of a [`Framer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramerConfig {
    /// Largest unit sent or accepted (at most [`MAX_UNIT_LEN`]).
    pub max_unit_len: usize,
    /// Units this side lets the peer have in flight (`INITIAL_CREDITS..=MAX_UNITS_IN_FLIGHT`).
    pub window: u8,
    /// Units waiting for credit before [`Framer::send_unit`] refuses more.
    pub max_queued_units: usize,
}

impl Default for FramerConfig {
    fn default() -> Self {
        FramerConfig {
            max_unit_len: MAX_UNIT_LEN,
            window: 8,
            max_queued_units: 64,
        }
    }
}

struct Partial {
    expected: usize,
    bytes: Vec<u8>,
    fragments: usize,
}

/// One direction pair of a link's framing: units in, fragments out and the reverse.
/// After an error from [`Framer::receive`] the link must be closed.
pub struct Framer {
    config: FramerConfig,
    channel: Channel,
    /// Credits we hold: units we may still start.
    send_credits: usize,
    queue: VecDeque<Vec<u8>>,
    out: VecDeque<Vec<u8>>,
    /// Units the peer may still start without a new grant from us.
    peer_credits: usize,
    /// Units taken by our owner whose credit is not yet returned.
    unreturned: usize,
    partial: Option<Partial>,
    complete: VecDeque<Vec<u8>>,
}

impl std::fmt::Debug for Framer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Framer")
            .field("channel", &self.channel)
            .field("send_credits", &self.send_credits)
            .field("queued", &self.queue.len())
            .field("peer_credits", &self.peer_credits)
            .finish_non_exhaustive()
    }
}

impl Framer {
    /// A framer over `channel` (an ATT MTU converts to [`Channel::Gatt`]). If
    /// `config.window` exceeds [`INITIAL_CREDITS`], the extra credits are granted at
    /// once (the first output).
    pub fn new(mut config: FramerConfig, channel: impl Into<Channel>) -> Result<Self, BleError> {
        let channel = channel.into().check()?;
        config.max_unit_len = config.max_unit_len.clamp(1, MAX_UNIT_LEN);
        config.window = config
            .window
            .clamp(INITIAL_CREDITS, MAX_UNITS_IN_FLIGHT as u8);
        let mut f = Framer {
            config,
            channel,
            send_credits: usize::from(INITIAL_CREDITS),
            queue: VecDeque::new(),
            out: VecDeque::new(),
            peer_credits: usize::from(INITIAL_CREDITS),
            unreturned: 0,
            partial: None,
            complete: VecDeque::new(),
        };
        let extra = config.window - INITIAL_CREDITS;
        if extra > 0 {
            f.grant(extra);
        }
        Ok(f)
    }

    /// The ATT MTU in use on a GATT channel; on an L2CAP channel, its SDU MTU.
    pub fn mtu(&self) -> u16 {
        match self.channel {
            Channel::Gatt { mtu } => mtu,
            Channel::Coc { sdu_mtu, .. } => sdu_mtu,
        }
    }

    /// The channel the fragments travel over.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// Largest fragment ([`Channel::max_fragment_len`]).
    pub fn max_fragment_len(&self) -> usize {
        self.channel.max_fragment_len()
    }

    /// Sets the ATT MTU after an exchange; units not yet cut use it. An L2CAP channel
    /// keeps its SDU MTU (the ATT MTU is not its size); the value is still checked.
    pub fn set_mtu(&mut self, mtu: u16) -> Result<(), BleError> {
        let mtu = check_mtu(mtu)?;
        if let Channel::Gatt { .. } = self.channel {
            self.channel = Channel::Gatt { mtu };
        }
        Ok(())
    }

    /// Credits held for sending.
    pub fn send_credits(&self) -> usize {
        self.send_credits
    }

    /// Units waiting for credit.
    pub fn queued_units(&self) -> usize {
        self.queue.len()
    }

    /// Queues a unit, cut into fragments as soon as a credit allows. Refused up front
    /// (nothing queued) if it is empty or too long, would take more than
    /// [`MAX_FRAGMENTS_PER_UNIT`] fragments, or the queue is full.
    pub fn send_unit(&mut self, unit: Vec<u8>) -> Result<(), BleError> {
        if unit.is_empty() {
            return Err(BleError::Malformed("empty unit"));
        }
        if unit.len() > self.config.max_unit_len {
            return Err(BleError::UnitTooLarge {
                len: unit.len(),
                max: self.config.max_unit_len,
            });
        }
        if fragments_for_payload(unit.len(), self.max_fragment_len()) > MAX_FRAGMENTS_PER_UNIT {
            return Err(BleError::TooManyFragments {
                max: MAX_FRAGMENTS_PER_UNIT,
            });
        }
        if self.queue.len() >= self.config.max_queued_units {
            return Err(BleError::QueueFull {
                units: self.queue.len(),
            });
        }
        self.queue.push_back(unit);
        self.pump();
        Ok(())
    }

    /// Cuts queued units into fragments while credits last.
    fn pump(&mut self) {
        while self.send_credits > 0 {
            let Some(unit) = self.queue.pop_front() else {
                return;
            };
            self.send_credits -= 1;
            let payload = self.max_fragment_len();
            let first = unit.len().min(payload - FIRST_HEADER_LEN);
            let mut f = Vec::with_capacity(first + FIRST_HEADER_LEN);
            let unit_len = u16::try_from(unit.len()).unwrap_or(u16::MAX);
            Fragment::First {
                unit_len,
                data: &unit[..first],
            }
            .encode(&mut f);
            self.out.push_back(f);
            for chunk in unit[first..].chunks(payload - 1) {
                let mut f = Vec::with_capacity(chunk.len() + 1);
                Fragment::Cont(chunk).encode(&mut f);
                self.out.push_back(f);
            }
        }
    }

    fn grant(&mut self, n: u8) {
        self.peer_credits += usize::from(n);
        let mut f = Vec::with_capacity(2);
        Fragment::Credit(n).encode(&mut f);
        self.out.push_back(f);
    }

    /// The next fragment to transmit (write or notify), in order.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.out.pop_front()
    }

    /// Fragments waiting to be transmitted.
    pub fn pending_fragments(&self) -> usize {
        self.out.len()
    }

    /// Processes one received fragment (one ATT value).
    pub fn receive(&mut self, bytes: &[u8]) -> Result<(), BleError> {
        let max = self.max_fragment_len();
        if bytes.len() > max {
            return Err(BleError::FragmentTooLarge {
                len: bytes.len(),
                max,
            });
        }
        match Fragment::decode(bytes)? {
            Fragment::Credit(n) => {
                let granted = self.send_credits + usize::from(n);
                if granted > MAX_UNITS_IN_FLIGHT {
                    return Err(BleError::CreditOverflow {
                        granted,
                        max: MAX_UNITS_IN_FLIGHT,
                    });
                }
                self.send_credits = granted;
                self.pump();
                Ok(())
            }
            Fragment::First { unit_len, data } => {
                if self.partial.is_some() {
                    return Err(BleError::Malformed("FIRST inside a unit"));
                }
                let expected = usize::from(unit_len);
                if expected > self.config.max_unit_len {
                    return Err(BleError::UnitTooLarge {
                        len: expected,
                        max: self.config.max_unit_len,
                    });
                }
                if self.peer_credits == 0 {
                    return Err(BleError::CreditViolation);
                }
                self.peer_credits -= 1;
                let mut partial = Partial {
                    expected,
                    bytes: Vec::with_capacity(expected),
                    fragments: 1,
                };
                partial.bytes.extend_from_slice(data);
                self.partial = Some(partial);
                self.finish_if_complete();
                Ok(())
            }
            Fragment::Cont(data) => {
                let Some(p) = self.partial.as_mut() else {
                    return Err(BleError::Malformed("CONT outside a unit"));
                };
                if p.bytes.len() + data.len() > p.expected {
                    return Err(BleError::Malformed("CONT overruns its unit"));
                }
                p.fragments += 1;
                if p.fragments > MAX_FRAGMENTS_PER_UNIT {
                    return Err(BleError::TooManyFragments {
                        max: MAX_FRAGMENTS_PER_UNIT,
                    });
                }
                p.bytes.extend_from_slice(data);
                self.finish_if_complete();
                Ok(())
            }
        }
    }

    fn finish_if_complete(&mut self) {
        if self
            .partial
            .as_ref()
            .is_some_and(|p| p.bytes.len() == p.expected)
            && let Some(p) = self.partial.take()
        {
            self.complete.push_back(p.bytes);
        }
    }

    /// The next complete unit. Taking it frees its place: credits go back to the peer
    /// once half the window was taken.
    pub fn next_unit(&mut self) -> Option<Vec<u8>> {
        let unit = self.complete.pop_front()?;
        self.unreturned += 1;
        let batch = usize::from(self.config.window / 2).max(1);
        if self.unreturned >= batch {
            let n = u8::try_from(self.unreturned).unwrap_or(u8::MAX);
            self.unreturned -= usize::from(n);
            self.grant(n);
        }
        Some(unit)
    }

    /// Bytes held for reception (complete units and the partial one).
    pub fn buffered_bytes(&self) -> usize {
        self.complete.iter().map(Vec::len).sum::<usize>()
            + self.partial.as_ref().map_or(0, |p| p.bytes.capacity())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pair(window: u8, mtu: u16) -> (Framer, Framer) {
        let c = FramerConfig {
            window,
            ..FramerConfig::default()
        };
        (Framer::new(c, mtu).unwrap(), Framer::new(c, mtu).unwrap())
    }

    /// Moves every pending fragment from `a` to `b` and `b` to `a` until quiet; `b`'s
    /// owner takes every unit. Returns the units `b` received.
    fn exchange(a: &mut Framer, b: &mut Framer) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        loop {
            let mut moved = false;
            while let Some(f) = a.poll_transmit() {
                assert!(f.len() <= a.max_fragment_len());
                b.receive(&f).unwrap();
                moved = true;
            }
            while let Some(u) = b.next_unit() {
                got.push(u);
            }
            while let Some(f) = b.poll_transmit() {
                a.receive(&f).unwrap();
                moved = true;
            }
            if !moved {
                return got;
            }
        }
    }

    #[test]
    fn on_an_l2cap_channel_a_whole_unit_is_one_sdu_and_caps_hold() {
        let coc = Channel::Coc {
            psm: 0xC5,
            sdu_mtu: 65_535,
        };
        // The SDU MTU is capped at one unit with its header.
        assert_eq!(coc.max_fragment_len(), MAX_COC_FRAGMENT);
        let c = FramerConfig::default();
        let (mut a, mut b) = (Framer::new(c, coc).unwrap(), Framer::new(c, coc).unwrap());
        assert_eq!(a.channel(), coc);
        while a.poll_transmit().is_some() {}
        while b.poll_transmit().is_some() {}
        let unit: Vec<u8> = (0..MAX_UNIT_LEN).map(|i| i as u8).collect();
        a.send_unit(unit.clone()).unwrap();
        let f = a.poll_transmit().unwrap();
        assert_eq!(f.len(), MAX_COC_FRAGMENT);
        assert!(a.poll_transmit().is_none());
        b.receive(&f).unwrap();
        assert_eq!(b.next_unit().unwrap(), unit);
        // Over the SDU MTU, or over the unit cap, is refused.
        assert!(matches!(
            b.receive(&vec![CONT; MAX_COC_FRAGMENT + 1]),
            Err(BleError::FragmentTooLarge { .. })
        ));
        let small = Channel::Coc {
            psm: 0xC5,
            sdu_mtu: 100,
        };
        let mut s = Framer::new(c, small).unwrap();
        assert_eq!(s.max_fragment_len(), 100);
        assert!(matches!(
            s.receive(&[CONT; 101]),
            Err(BleError::FragmentTooLarge { len: 101, max: 100 })
        ));
        // An ATT MTU exchange does not resize the channel.
        s.set_mtu(517).unwrap();
        assert_eq!(s.channel(), small);
        assert!(matches!(
            Framer::new(
                c,
                Channel::Coc {
                    psm: 0xC5,
                    sdu_mtu: 22
                }
            ),
            Err(BleError::MtuOutOfRange(22))
        ));
        assert_eq!(
            fragments_for_payload(MAX_UNIT_LEN, 100),
            1 + (MAX_UNIT_LEN - 97).div_ceil(99)
        );
    }

    #[test]
    fn units_round_trip_at_every_mtu_in_order() {
        for mtu in [23, 24, 27, 100, 185, 247, 517] {
            let (mut a, mut b) = pair(8, mtu);
            let units: Vec<Vec<u8>> = [1, 2, 16, 17, 18, 19, 20, 244, 1000, MAX_UNIT_LEN]
                .iter()
                .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
                .collect();
            for u in &units {
                a.send_unit(u.clone()).unwrap();
            }
            assert_eq!(exchange(&mut a, &mut b), units, "mtu {mtu}");
        }
    }

    #[test]
    fn fragment_count_matches_the_formula() {
        let (mut a, _) = pair(INITIAL_CREDITS, 23);
        a.send_unit(vec![9; 17 + 19 * 3]).unwrap();
        assert_eq!(a.pending_fragments(), fragments_for(17 + 19 * 3, 23));
        assert_eq!(a.pending_fragments(), 4);
    }

    #[test]
    fn sender_stops_at_its_credits_and_resumes_on_grant() {
        let c = FramerConfig {
            window: INITIAL_CREDITS,
            ..FramerConfig::default()
        };
        let mut a = Framer::new(c, 247).unwrap();
        let mut b = Framer::new(c, 247).unwrap();
        for i in 0..10u8 {
            a.send_unit(vec![i; 10]).unwrap();
        }
        // Only the initial credits went out.
        assert_eq!(a.pending_fragments(), usize::from(INITIAL_CREDITS));
        assert_eq!(a.queued_units(), 10 - usize::from(INITIAL_CREDITS));
        let got = exchange(&mut a, &mut b);
        assert_eq!(got.len(), 10);
        assert_eq!(a.queued_units(), 0);
    }

    #[test]
    fn receiver_buffers_at_most_its_window() {
        // b's owner never takes units: a can never get more than the window in.
        let (mut a, mut b) = pair(8, 247);
        for i in 0..40u8 {
            a.send_unit(vec![i; 300]).unwrap();
        }
        for _ in 0..5 {
            while let Some(f) = a.poll_transmit() {
                b.receive(&f).unwrap();
            }
            while let Some(f) = b.poll_transmit() {
                a.receive(&f).unwrap();
            }
        }
        assert_eq!(b.complete.len(), 8);
        assert!(b.buffered_bytes() <= 8 * 300);
    }

    #[test]
    fn a_unit_without_credit_is_a_violation() {
        let (_, mut b) = pair(INITIAL_CREDITS, 247);
        for _ in 0..INITIAL_CREDITS {
            b.receive(&[FIRST, 0, 1, 7]).unwrap();
        }
        assert!(matches!(
            b.receive(&[FIRST, 0, 1, 7]),
            Err(BleError::CreditViolation)
        ));
    }

    #[test]
    fn credit_beyond_the_cap_is_refused() {
        let (mut a, _) = pair(8, 247);
        assert!(matches!(
            a.receive(&[CREDIT, 200]),
            Err(BleError::CreditOverflow { .. })
        ));
        let (mut a, _) = pair(8, 247);
        a.receive(&[CREDIT, 12]).unwrap();
        assert!(matches!(
            a.receive(&[CREDIT, 1]),
            Err(BleError::CreditOverflow { granted: 17, .. })
        ));
    }

    #[test]
    fn hostile_fragments_are_typed_errors() {
        let (_, mut b) = pair(8, 23);
        type Check = fn(&BleError) -> bool;
        let cases: Vec<(Vec<u8>, Check)> = vec![
            (vec![], |e| matches!(e, BleError::Malformed(_))),
            (vec![0x77], |e| matches!(e, BleError::Malformed(_))),
            (vec![FIRST, 0], |e| matches!(e, BleError::Malformed(_))),
            (vec![FIRST, 0, 0], |e| matches!(e, BleError::Malformed(_))),
            (vec![FIRST, 0x10, 0x01], |e| {
                matches!(e, BleError::UnitTooLarge { len: 4097, .. })
            }),
            (vec![FIRST, 0, 1, 1, 2], |e| {
                matches!(e, BleError::Malformed(_))
            }),
            (vec![CONT, 1], |e| matches!(e, BleError::Malformed(_))),
            (vec![CONT], |e| matches!(e, BleError::Malformed(_))),
            (vec![CREDIT, 0], |e| matches!(e, BleError::Malformed(_))),
            (vec![CREDIT], |e| matches!(e, BleError::Malformed(_))),
            (vec![CONT; 21], |e| {
                matches!(e, BleError::FragmentTooLarge { len: 21, max: 20 })
            }),
        ];
        for (bytes, ok) in cases {
            let err = b.receive(&bytes).unwrap_err();
            assert!(ok(&err), "{bytes:?} gave {err:?}");
        }
    }

    #[test]
    fn overrun_and_nested_first_are_refused() {
        let (_, mut b) = pair(8, 247);
        b.receive(&[FIRST, 0, 3, 1]).unwrap();
        assert!(matches!(
            b.receive(&[CONT, 2, 3, 4]),
            Err(BleError::Malformed("CONT overruns its unit"))
        ));
        let (_, mut b) = pair(8, 247);
        b.receive(&[FIRST, 0, 3, 1]).unwrap();
        assert!(matches!(
            b.receive(&[FIRST, 0, 3, 1]),
            Err(BleError::Malformed("FIRST inside a unit"))
        ));
    }

    #[test]
    fn one_byte_fragments_flood_is_capped() {
        // A peer trickling 1-byte CONTs into a maximal unit hits the fragment cap long
        // before the unit completes.
        let (_, mut b) = pair(8, 247);
        b.receive(&[FIRST, 0x10, 0x00, 0]).unwrap();
        let mut result = Ok(());
        let mut n = 1;
        while result.is_ok() && n < 5000 {
            result = b.receive(&[CONT, 0]);
            n += 1;
        }
        assert!(matches!(
            result,
            Err(BleError::TooManyFragments {
                max: MAX_FRAGMENTS_PER_UNIT
            })
        ));
        assert_eq!(n, MAX_FRAGMENTS_PER_UNIT + 1);
    }

    #[test]
    fn sender_refuses_up_front() {
        let (mut a, _) = pair(8, 23);
        assert!(matches!(
            a.send_unit(vec![0; MAX_UNIT_LEN + 1]),
            Err(BleError::UnitTooLarge { .. })
        ));
        assert!(matches!(
            a.send_unit(Vec::new()),
            Err(BleError::Malformed(_))
        ));
        let c = FramerConfig {
            max_queued_units: 2,
            window: INITIAL_CREDITS,
            ..FramerConfig::default()
        };
        let mut a = Framer::new(c, 23).unwrap();
        for _ in 0..usize::from(INITIAL_CREDITS) + 2 {
            a.send_unit(vec![1]).unwrap();
        }
        assert!(matches!(
            a.send_unit(vec![1]),
            Err(BleError::QueueFull { units: 2 })
        ));
        assert!(matches!(
            Framer::new(c, 22),
            Err(BleError::MtuOutOfRange(22))
        ));
        assert!(matches!(a.set_mtu(518), Err(BleError::MtuOutOfRange(518))));
    }

    #[test]
    fn mtu_change_applies_to_later_units() {
        let (mut a, mut b) = pair(INITIAL_CREDITS, 23);
        a.set_mtu(247).unwrap();
        b.set_mtu(247).unwrap();
        a.send_unit(vec![5; 240]).unwrap();
        assert_eq!(a.pending_fragments(), 1);
        assert_eq!(exchange(&mut a, &mut b), vec![vec![5; 240]]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any sequence of units at any MTU and window arrives whole and in order.
            #[test]
            fn prop_framing_round_trips(
                mtu in MIN_ATT_MTU..=MAX_ATT_MTU,
                window in INITIAL_CREDITS..=16u8,
                lens in proptest::collection::vec(1usize..=MAX_UNIT_LEN, 1..20),
            ) {
                let (mut a, mut b) = pair(window, mtu);
                let units: Vec<Vec<u8>> = lens.iter().enumerate()
                    .map(|(i, &n)| vec![i as u8; n]).collect();
                let mut got = Vec::new();
                for u in &units {
                    if a.send_unit(u.clone()).is_err() {
                        got.extend(exchange(&mut a, &mut b));
                        a.send_unit(u.clone()).unwrap();
                    }
                }
                got.extend(exchange(&mut a, &mut b));
                prop_assert_eq!(got, units);
            }

            /// Arbitrary bytes never panic, and a refused fragment is a typed error.
            #[test]
            fn prop_garbage_never_panics(
                frags in proptest::collection::vec(
                    proptest::collection::vec(any::<u8>(), 0..40), 0..200),
            ) {
                let (_, mut b) = pair(8, 23);
                for f in frags {
                    if b.receive(&f).is_err() {
                        break;
                    }
                    while b.next_unit().is_some() {}
                    prop_assert!(b.buffered_bytes() <= 9 * MAX_UNIT_LEN);
                }
            }
        }
    }
}
