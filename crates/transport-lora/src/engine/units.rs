//! Sealed units on their way to the next hop: sealing a routing header and body for a
//! neighbour (one `E6` frame, or `E9` parts of one ciphertext under one nonce and tag),
//! receiving parts, and keeping every frame of a unit until the radio confirms the next
//! hop has it, with retries.
//!
//! One tag per unit rather than per frame is what keeps a 1 KB delta within 1.2× its
//! frame floor: six parts cost 6 × 6 header bytes and one 16-byte tag, where six sealed
//! frames cost 6 × 23. The parts are unauthenticated until the last one arrives and the
//! tag is checked; whatever fails the tag is dropped whole, as a forged frame is.

use ecomesh_types::{PeerId, Priority};

use super::Engine;
use crate::envelope::link_form_of;
use crate::error::LoraError;
use crate::frame::{Body, Frame, RouteHeader, TAG_LEN, encode_inner, short_id};
use crate::proto::BROADCAST;

use super::{PART_CAPACITY, SEALED_HEADER_LEN};
use crate::airtime::MAX_APP_PAYLOAD;

/// Bits of a ticket that hold the part index (the rest is the unit number).
const PART_BITS: u32 = 4;

/// A sealed unit handed to the radio (or waiting for it) whose every frame's arrival at
/// the next hop is not confirmed yet.
pub(super) struct InFlight {
    pub(super) header: RouteHeader,
    pub(super) body: Body,
    /// The neighbour it came from (our own id for units we originated).
    pub(super) from: PeerId,
    /// The neighbour it was sealed for.
    pub(super) via: PeerId,
    /// The number of the session with `via` that sealed it.
    session: u64,
    /// `via`'s node number.
    to: u32,
    pub(super) priority: Priority,
    /// The unit's frames, kept to send the same bytes again.
    frames: Vec<Vec<u8>>,
    /// Per frame, `None` once the next hop confirmed it.
    parts: Vec<Option<Part>>,
}

/// The state of one unconfirmed frame of a unit.
#[derive(Clone, Copy)]
pub(super) struct Part {
    /// Sends so far beyond the first.
    attempts: u8,
    /// When its verdict is overdue; set once the frame went to the radio.
    pub(super) deadline: Option<u64>,
}

impl InFlight {
    pub(super) fn unconfirmed(&self) -> usize {
        self.parts.iter().flatten().count()
    }

    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.parts.iter().flatten().filter_map(|p| p.deadline).min()
    }
}

/// A unit sealed for a neighbour.
struct Sealed {
    to: u32,
    session: u64,
    frames: Vec<Vec<u8>>,
}

fn split_ticket(ticket: u64) -> (u64, usize) {
    (
        ticket >> PART_BITS,
        (ticket & ((1 << PART_BITS) - 1)) as usize,
    )
}

impl Engine {
    /// Encrypts a routing header and body for neighbour `via` as one unit: one sealed
    /// frame when it fits, else 2 to `reassembly.max_fragments` parts.
    ///
    /// An own message that goes straight to its destination (`via` is it, no hop yet)
    /// is sealed in the link-authenticated form: the session proves the sender, so the
    /// envelope leaves out the sender and the signature. The unit keeps the signed form
    /// for any other next hop it may take later (a reroute, a flush of held frames).
    fn seal(&mut self, via: &PeerId, h: &RouteHeader, body: &Body) -> Result<Sealed, LoraError> {
        let link_body;
        let body = match body {
            Body::Message(signed)
                if h.hops == 0 && h.origin == self.my_short && short_id(via) == h.dest =>
            {
                match link_form_of(signed, via, &self.me) {
                    Some(link) => {
                        link_body = Body::Message(link);
                        &link_body
                    }
                    None => body,
                }
            }
            _ => body,
        };
        let plain = encode_inner(h, body);
        let ct_len = plain.len() + TAG_LEN;
        let single = SEALED_HEADER_LEN + ct_len <= MAX_APP_PAYLOAD;
        let max_parts = self
            .config
            .reassembly
            .max_fragments
            .min(crate::frame::MAX_PARTS);
        if !single && ct_len.div_ceil(PART_CAPACITY) > usize::from(max_parts) {
            return Err(LoraError::TooLarge {
                size: plain.len(),
                max: usize::from(max_parts) * PART_CAPACITY - TAG_LEN,
            });
        }
        let n = self
            .neighbours
            .get_mut(via)
            .ok_or(LoraError::Unreachable(*via))?;
        let datagram = n.session.encrypt(&plain)?;
        let (nonce, ct) = datagram.split_at(8);
        if nonce[..4] != [0; 4] {
            // 2^32 frames in one session: start over with a new handshake.
            let p = *via;
            self.drop_neighbour(&p);
            return Err(LoraError::Rejected("session counter exhausted"));
        }
        let counter = u32::from_be_bytes([nonce[4], nonce[5], nonce[6], nonce[7]]);
        let frames = if single {
            vec![
                Frame::Sealed {
                    sid: n.tx_sid,
                    counter,
                    ciphertext: ct.to_vec(),
                }
                .encode(&self.key),
            ]
        } else {
            // A unit one byte too long for a sealed frame still takes two parts.
            let chunk = if ct.len() <= PART_CAPACITY {
                ct.len().div_ceil(2)
            } else {
                PART_CAPACITY
            };
            let pieces: Vec<&[u8]> = ct.chunks(chunk).collect();
            let count = u8::try_from(pieces.len()).map_err(|_| LoraError::Fragment("count"))?;
            pieces
                .into_iter()
                .zip(0u8..)
                .map(|(piece, index)| {
                    Frame::SealedPart {
                        sid: n.tx_sid,
                        counter: counter as u16,
                        index,
                        count,
                        piece: piece.to_vec(),
                    }
                    .encode(&self.key)
                })
                .collect()
        };
        Ok(Sealed {
            to: n.node.unwrap_or(BROADCAST),
            session: n.session_no,
            frames,
        })
    }

    /// Seals and queues a unit for `via` without tracking it (hello, close).
    pub(super) fn send_inner(
        &mut self,
        via: &PeerId,
        h: &RouteHeader,
        body: &Body,
        priority: Priority,
    ) -> Result<(), LoraError> {
        let sealed = self.seal(via, h, body)?;
        for f in sealed.frames {
            self.enqueue(sealed.to, f, priority)?;
        }
        Ok(())
    }

    /// Seals and queues a data unit (message, notification, grant) for `via`, kept until
    /// the radio confirms the next hop has every frame of it (when `want_ack` lets the
    /// radio say so). `from`: the neighbour it came from, or our own id.
    pub(super) fn send_tracked(
        &mut self,
        via: &PeerId,
        header: RouteHeader,
        body: Body,
        from: PeerId,
        priority: Priority,
        attempts: u8,
    ) -> Result<(), LoraError> {
        let sealed = self.seal(via, &header, &body)?;
        if !self.config.want_ack || sealed.to == BROADCAST {
            for f in sealed.frames {
                self.enqueue(sealed.to, f, priority)?;
            }
            return Ok(());
        }
        self.next_unit = self.next_unit.wrapping_add(1);
        let unit = self.next_unit;
        let count = sealed.frames.len();
        self.inflight.insert(
            unit,
            InFlight {
                header,
                body,
                from,
                via: *via,
                session: sealed.session,
                to: sealed.to,
                priority,
                frames: sealed.frames.clone(),
                parts: vec![
                    Some(Part {
                        attempts,
                        deadline: None,
                    });
                    count
                ],
            },
        );
        for (i, f) in sealed.frames.into_iter().enumerate() {
            let ticket = (unit << PART_BITS) | i as u64;
            if let Err(e) = self.enqueue_ticket(sealed.to, f, priority, Some(ticket)) {
                self.take_unit(ticket);
                return Err(e);
            }
            if !self.inflight.contains_key(&unit) {
                // A more urgent packet displaced one of its parts: it is held already.
                break;
            }
        }
        Ok(())
    }

    /// The part of an in-flight unit a ticket names.
    pub(super) fn part_mut(&mut self, ticket: u64) -> Option<&mut Part> {
        let (unit, i) = split_ticket(ticket);
        self.inflight.get_mut(&unit)?.parts.get_mut(i)?.as_mut()
    }

    /// Stops tracking the unit of `ticket` and drops its frames still queued.
    pub(super) fn take_unit(&mut self, ticket: u64) -> Option<InFlight> {
        let (unit, _) = split_ticket(ticket);
        let f = self.inflight.remove(&unit)?;
        self.sched
            .retain(|t| t.ticket.is_none_or(|k| split_ticket(k).0 != unit));
        Some(f)
    }

    pub(super) fn part_delivered(&mut self, ticket: u64) {
        let (unit, i) = split_ticket(ticket);
        let Some(f) = self.inflight.get_mut(&unit) else {
            return;
        };
        if let Some(slot) = f.parts.get_mut(i) {
            *slot = None;
        }
        if f.unconfirmed() == 0 {
            self.inflight.remove(&unit);
        }
    }

    /// A frame of a unit the radio reports undelivered (or did not report on in time).
    pub(super) fn part_failed(&mut self, ticket: u64, now: u64) {
        let (unit, i) = split_ticket(ticket);
        let Some(f) = self.inflight.get(&unit) else {
            return;
        };
        let Some(Some(part)) = f.parts.get(i).copied() else {
            return;
        };
        if part.attempts >= self.config.hop_retries {
            if let Some(f) = self.take_unit(ticket) {
                tracing::warn!(
                    dest = ?f.header.dest,
                    seq = f.header.seq,
                    attempts = part.attempts + 1,
                    "lora frame not confirmed by any next hop; held for a new route"
                );
                self.hold(f.header, f.body, f.from, now);
            }
            return;
        }
        tracing::debug!(dest = ?f.header.dest, seq = f.header.seq, part = i, "lora frame lost on a hop; sending again");
        let attempts = part.attempts + 1;
        // The best next hop now; else the same neighbour again (a flooded copy goes back
        // to the neighbour it was for, so retries never multiply copies); else as new.
        let via = self
            .next_hop(&f.header.dest, Some(&f.from), now)
            .or_else(|| Some(f.via).filter(|v| self.is_up(v) && *v != f.from));
        let same_session = via == Some(f.via)
            && self
                .neighbours
                .get(&f.via)
                .is_some_and(|n| n.session_no == f.session);
        if same_session {
            // The same bytes again: the next hop decrypts the unit once all parts are in.
            let (to, frame, priority) = (f.to, f.frames[i].clone(), f.priority);
            if let Some(p) = self.part_mut(ticket) {
                *p = Part {
                    attempts,
                    deadline: None,
                };
            }
            if self
                .enqueue_ticket(to, frame, priority, Some(ticket))
                .is_err()
                && let Some(f) = self.take_unit(ticket)
            {
                tracing::debug!("resend refused by a full queue; unit held");
                self.hold(f.header, f.body, f.from, now);
            }
            return;
        }
        let Some(f) = self.take_unit(ticket) else {
            return;
        };
        match via {
            Some(via) => {
                let (header, body, from) = (f.header, f.body.clone(), f.from);
                if let Err(e) = self.send_tracked(&via, header, f.body, from, f.priority, attempts)
                {
                    tracing::debug!(error = %e, "resend failed; unit held");
                    self.hold(header, body, from, now);
                }
            }
            None => self.route(f.header, f.body, f.from, f.priority, attempts, now),
        }
    }

    /// Sends again the frames whose verdict is overdue.
    pub(super) fn resend_overdue(&mut self, now: u64) {
        let overdue: Vec<u64> = self
            .inflight
            .iter()
            .flat_map(|(unit, f)| {
                f.parts.iter().enumerate().filter_map(move |(i, p)| {
                    p.and_then(|p| p.deadline)
                        .filter(|d| *d <= now)
                        .map(|_| (unit << PART_BITS) | i as u64)
                })
            })
            .collect();
        for t in overdue {
            self.part_failed(t, now);
        }
    }

    /// One part of a unit from node `node`; the unit is decrypted once all its parts are in.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_part(
        &mut self,
        sid: u16,
        counter: u16,
        index: u8,
        count: u8,
        piece: &[u8],
        node: u32,
        now: u64,
    ) -> Result<(), LoraError> {
        if !self.neighbours.values().any(|n| n.rx_sid == sid) {
            return Err(LoraError::Rejected("no session authenticates it"));
        }
        let group = (u32::from(sid) << 16) | u32::from(counter);
        match self
            .reasm
            .push(node.to_be_bytes(), group, index, count, piece, now)?
        {
            Some(ct) => {
                let r = self.on_sealed(sid, u32::from(counter), true, &ct, node, now);
                if !matches!(r, Err(LoraError::Rejected(_))) {
                    // Authenticated: its late parts are duplicates. A unit that failed
                    // its tag is not remembered, so the sender's own parts, sent again,
                    // can still complete it.
                    self.reasm.finished(node.to_be_bytes(), group);
                }
                r
            }
            None => Ok(()),
        }
    }
}
