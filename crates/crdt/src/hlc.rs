//! The hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).

use std::sync::atomic::{AtomicU64, Ordering};

use ecomesh_types::{HlcTimestamp, PeerId};

use crate::Error;

/// A source of physical time in Unix milliseconds, passed in by the caller.
///
/// This crate never reads the system clock; the node binary supplies a clock
/// backed by `SystemTime`, tests use [`ManualClock`] or a closure `|| ms`.
/// The time may jump backwards: [`Hlc`] stays monotonic regardless.
pub trait PhysicalClock {
    /// The current physical time in Unix milliseconds.
    fn now_ms(&self) -> u64;
}

impl<F: Fn() -> u64> PhysicalClock for F {
    fn now_ms(&self) -> u64 {
        self()
    }
}

/// A physical clock that only moves when told to, for tests and simulations.
///
/// Shareable by reference across threads; `set` may move it backwards.
#[derive(Debug, Default)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock reading `ms`.
    pub const fn new(ms: u64) -> Self {
        ManualClock {
            ms: AtomicU64::new(ms),
        }
    }

    /// Sets the reading to `ms` (which may be earlier than the current one).
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::Relaxed);
    }

    /// Moves the reading forward by `ms`, saturating at `u64::MAX`.
    pub fn advance(&self, ms: u64) {
        let now = self.ms.load(Ordering::Relaxed);
        self.ms.store(now.saturating_add(ms), Ordering::Relaxed);
    }
}

impl PhysicalClock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

/// One peer's hybrid logical clock.
///
/// Promises:
/// - every timestamp it issues ([`send`](Hlc::send), [`receive`](Hlc::receive))
///   is strictly greater than every timestamp it issued before, even if the
///   physical clock goes backwards;
/// - a timestamp issued by `receive(remote)` is strictly greater than `remote`
///   whenever `remote` is at most [`max_drift_ms`](Hlc::max_drift_ms) ahead of
///   the local physical time;
/// - its physical component is never behind the physical clock's reading;
/// - **a remote timestamp is never refused for being far ahead**: `receive`
///   takes it into account only up to `now + max_drift_ms` (it is clamped), so
///   a peer whose clock runs hours ahead cannot drag this clock, and with it
///   every later local write, into the future. The clock only passes that
///   bound when it was already beyond it (its own physical clock went back);
/// - [`send_after`](Hlc::send_after) issues a timestamp greater than a given
///   floor (the latest write a local edit supersedes) even when that floor is
///   beyond the drift bound, without moving the clock beyond the bound.
///
/// When the logical counter would pass `u32::MAX` it carries into the physical
/// component: the clock moves to `(physical_ms + 1, 0)`, still monotonic and
/// at most one millisecond ahead of what the rules would give. Only when the
/// physical component itself would pass `u64::MAX` does it fail with
/// [`Error::ClockOverflow`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hlc {
    last: HlcTimestamp,
    max_drift_ms: u64,
}

impl Hlc {
    /// The default bound on how far a received timestamp may move the clock
    /// ahead of local physical time: 60 s.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

    /// A fresh clock for `peer` that has issued nothing (its last timestamp is
    /// `(0, 0, peer)`), with the default maximum drift.
    pub const fn new(peer: PeerId) -> Self {
        Hlc {
            last: HlcTimestamp::new(0, 0, peer),
            max_drift_ms: Self::DEFAULT_MAX_DRIFT_MS,
        }
    }

    /// The same clock with a different maximum drift.
    #[must_use]
    pub const fn with_max_drift(mut self, max_drift_ms: u64) -> Self {
        self.max_drift_ms = max_drift_ms;
        self
    }

    /// Restores a clock from its parts (for example after a restart): the last
    /// timestamp it issued, whose peer becomes the clock's peer, and its maximum drift.
    /// Every pair is valid.
    pub const fn from_parts(last: HlcTimestamp, max_drift_ms: u64) -> Self {
        Hlc { last, max_drift_ms }
    }

    /// The peer whose clock this is.
    pub const fn peer(&self) -> PeerId {
        self.last.peer
    }

    /// The last timestamp issued (or `(0, 0, peer)` if none was).
    pub const fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// How far ahead of local physical time, in ms, a received timestamp may
    /// move this clock (timestamps further ahead are clamped to that bound).
    pub const fn max_drift_ms(&self) -> u64 {
        self.max_drift_ms
    }

    /// Timestamps a local event (or a message about to be sent), reading `clock` once.
    #[doc(alias = "now")]
    #[doc(alias = "tick")]
    pub fn send<C: PhysicalClock + ?Sized>(&mut self, clock: &C) -> Result<HlcTimestamp, Error> {
        self.send_at(clock.now_ms())
    }

    /// [`send`](Hlc::send) with the physical time given directly, in Unix ms.
    pub fn send_at(&mut self, now_ms: u64) -> Result<HlcTimestamp, Error> {
        let last = self.last;
        let next = if now_ms > last.physical_ms {
            (now_ms, 0)
        } else {
            carry(last.physical_ms, last.logical)?
        };
        Ok(self.issue(next))
    }

    /// A local event that supersedes `floor` (for example a write to a field
    /// whose current value carries timestamp `floor`), reading `clock` once.
    ///
    /// See [`send_after_at`](Hlc::send_after_at).
    pub fn send_after<C: PhysicalClock + ?Sized>(
        &mut self,
        floor: Option<&HlcTimestamp>,
        clock: &C,
    ) -> Result<HlcTimestamp, Error> {
        self.send_after_at(floor, clock.now_ms())
    }

    /// [`send`](Hlc::send), but the result is also strictly greater than `floor`.
    ///
    /// When `send` would give a timestamp at or below `floor` (the floor came
    /// from a peer whose clock runs ahead), the result is the successor of
    /// `floor` issued as this clock's peer. The clock itself follows the result
    /// only when it is within [`max_drift_ms`](Hlc::max_drift_ms) of `now_ms`:
    /// a floor far in the future orders this one event after it without
    /// dragging every later timestamp there. So the result is greater than
    /// `floor` and than every timestamp issued before by `send`/`receive`, but
    /// a later `send` may be smaller than a result beyond the bound; callers
    /// pass the floor of everything the event supersedes, which keeps the
    /// order where it matters.
    ///
    /// Fails with [`Error::ClockOverflow`] (clock unchanged) when the successor
    /// of `floor` or the next timestamp does not exist.
    pub fn send_after_at(
        &mut self,
        floor: Option<&HlcTimestamp>,
        now_ms: u64,
    ) -> Result<HlcTimestamp, Error> {
        let mut probe = self.clone();
        let next = probe.send_at(now_ms)?;
        let Some(floor) = floor.filter(|f| **f >= next) else {
            *self = probe;
            return Ok(next);
        };
        let (physical_ms, logical) = carry(floor.physical_ms, floor.logical)?;
        let ts = HlcTimestamp::new(physical_ms, logical, self.last.peer);
        *self = probe;
        if physical_ms <= self.bound(now_ms) {
            self.last = ts;
        }
        Ok(ts)
    }

    /// Timestamps the receipt of `remote`, reading `clock` once.
    ///
    /// The result is greater than every timestamp issued before and than
    /// `remote` clamped to `now + max_drift_ms`: a remote further ahead moves
    /// the clock to that bound only (see the type's promises). Never fails for
    /// drift; fails with [`Error::ClockOverflow`] (clock unchanged) only when
    /// the clock itself is at the end of its range.
    pub fn receive<C: PhysicalClock + ?Sized>(
        &mut self,
        remote: &HlcTimestamp,
        clock: &C,
    ) -> Result<HlcTimestamp, Error> {
        self.receive_at(remote, clock.now_ms())
    }

    /// [`receive`](Hlc::receive) with the physical time given directly, in Unix ms.
    pub fn receive_at(
        &mut self,
        remote: &HlcTimestamp,
        now_ms: u64,
    ) -> Result<HlcTimestamp, Error> {
        let bound = self.bound(now_ms);
        let remote = if remote.physical_ms > bound {
            // Far ahead: count it as the bound itself, never beyond.
            HlcTimestamp::new(bound, 0, remote.peer)
        } else {
            *remote
        };
        let last = self.last;
        let physical = last.physical_ms.max(remote.physical_ms).max(now_ms);
        let next = if physical == last.physical_ms && physical == remote.physical_ms {
            carry(physical, last.logical.max(remote.logical))?
        } else if physical == last.physical_ms {
            carry(physical, last.logical)?
        } else if physical == remote.physical_ms {
            carry(physical, remote.logical)?
        } else {
            (physical, 0)
        };
        Ok(self.issue(next))
    }

    /// The furthest a received timestamp may move the clock: `now + max_drift`.
    const fn bound(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.max_drift_ms)
    }

    fn issue(&mut self, (physical_ms, logical): (u64, u32)) -> HlcTimestamp {
        self.last = HlcTimestamp::new(physical_ms, logical, self.last.peer);
        self.last
    }
}

/// The successor of `(physical, logical)`: the next counter, or the next millisecond.
fn carry(physical: u64, logical: u32) -> Result<(u64, u32), Error> {
    match logical.checked_add(1) {
        Some(l) => Ok((physical, l)),
        None => Ok((physical.checked_add(1).ok_or(Error::ClockOverflow)?, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_digest([b; 32])
    }

    #[test]
    fn send_follows_physical_time_and_counts_within_a_millisecond() {
        let clock = ManualClock::new(100);
        let mut hlc = Hlc::new(peer(1));
        assert_eq!(
            hlc.send(&clock).unwrap(),
            HlcTimestamp::new(100, 0, peer(1))
        );
        assert_eq!(
            hlc.send(&clock).unwrap(),
            HlcTimestamp::new(100, 1, peer(1))
        );
        clock.advance(5);
        assert_eq!(
            hlc.send(&clock).unwrap(),
            HlcTimestamp::new(105, 0, peer(1))
        );
    }

    #[test]
    fn physical_clock_going_backwards_keeps_monotonic() {
        let clock = ManualClock::new(1_000);
        let mut hlc = Hlc::new(peer(1));
        let a = hlc.send(&clock).unwrap();
        clock.set(10);
        let b = hlc.send(&clock).unwrap();
        assert!(b > a);
        assert_eq!(b, HlcTimestamp::new(1_000, 1, peer(1)));
    }

    #[test]
    fn receive_rules() {
        let mut hlc = Hlc::new(peer(1));
        // Remote ahead (within drift): adopt its physical time, counter + 1.
        let r = HlcTimestamp::new(150, 7, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 100).unwrap(),
            HlcTimestamp::new(150, 8, peer(1))
        );
        // Same physical as last and remote: max counter + 1.
        let r = HlcTimestamp::new(150, 20, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 100).unwrap(),
            HlcTimestamp::new(150, 21, peer(1))
        );
        // Remote behind: our counter + 1.
        let r = HlcTimestamp::new(50, 99, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 100).unwrap(),
            HlcTimestamp::new(150, 22, peer(1))
        );
        // Local physical time ahead of both: counter resets.
        assert_eq!(
            hlc.receive_at(&r, 200).unwrap(),
            HlcTimestamp::new(200, 0, peer(1))
        );
    }

    #[test]
    fn remote_too_far_ahead_is_clamped_to_the_drift_bound() {
        let mut hlc = Hlc::new(peer(1)).with_max_drift(1_000);
        hlc.send_at(5_000).unwrap();
        // Two hours ahead: taken into account only up to now + drift.
        let r = HlcTimestamp::new(5_000 + 7_200_000, 3, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 5_000).unwrap(),
            HlcTimestamp::new(6_000, 1, peer(1))
        );
        // The next local event follows the clock, not the far-future remote.
        assert_eq!(
            hlc.send_at(5_001).unwrap(),
            HlcTimestamp::new(6_000, 2, peer(1))
        );
        // Exactly at the limit is taken as it is.
        let mut hlc = Hlc::new(peer(1)).with_max_drift(1_000);
        let r = HlcTimestamp::new(6_000, 4, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 5_000).unwrap(),
            HlcTimestamp::new(6_000, 5, peer(1))
        );
        // A remote at u64::MAX cannot overflow the clock.
        let r = HlcTimestamp::new(u64::MAX, u32::MAX, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 5_000).unwrap(),
            HlcTimestamp::new(6_000, 6, peer(1))
        );
    }

    #[test]
    fn send_after_beats_a_far_future_floor_without_dragging_the_clock() {
        let mut hlc = Hlc::new(peer(1)).with_max_drift(1_000);
        // No floor, or a floor in the past: an ordinary send.
        assert_eq!(
            hlc.send_after_at(None, 100).unwrap(),
            HlcTimestamp::new(100, 0, peer(1))
        );
        let old = HlcTimestamp::new(50, 9, peer(2));
        assert_eq!(
            hlc.send_after_at(Some(&old), 100).unwrap(),
            HlcTimestamp::new(100, 1, peer(1))
        );
        // A floor within the bound: the clock follows it.
        let near = HlcTimestamp::new(600, 4, peer(2));
        assert_eq!(
            hlc.send_after_at(Some(&near), 100).unwrap(),
            HlcTimestamp::new(600, 5, peer(1))
        );
        assert_eq!(hlc.last(), HlcTimestamp::new(600, 5, peer(1)));
        // A floor two hours ahead: the event beats it, the clock stays put.
        let far = HlcTimestamp::new(7_200_000, 4, peer(2));
        let ts = hlc.send_after_at(Some(&far), 100).unwrap();
        assert_eq!(ts, HlcTimestamp::new(7_200_000, 5, peer(1)));
        assert!(ts > far);
        assert_eq!(hlc.last(), HlcTimestamp::new(600, 6, peer(1)));
        assert_eq!(
            hlc.send_at(100).unwrap(),
            HlcTimestamp::new(600, 7, peer(1))
        );
        // No successor: refused, clock unchanged.
        let before = hlc.clone();
        let end = HlcTimestamp::new(u64::MAX, u32::MAX, peer(2));
        assert_eq!(
            hlc.send_after_at(Some(&end), 100),
            Err(Error::ClockOverflow)
        );
        assert_eq!(hlc, before);
    }

    #[test]
    fn logical_overflow_carries_into_physical() {
        let mut hlc = Hlc::from_parts(HlcTimestamp::new(10, u32::MAX, peer(1)), 60_000);
        assert_eq!(hlc.send_at(10).unwrap(), HlcTimestamp::new(11, 0, peer(1)));
        let r = HlcTimestamp::new(20, u32::MAX, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 20).unwrap(),
            HlcTimestamp::new(21, 0, peer(1))
        );
        let mut hlc = Hlc::from_parts(HlcTimestamp::new(u64::MAX, u32::MAX, peer(1)), 0);
        assert_eq!(hlc.send_at(0), Err(Error::ClockOverflow));
        assert_eq!(hlc.last(), HlcTimestamp::new(u64::MAX, u32::MAX, peer(1)));
    }

    #[test]
    fn closures_are_clocks() {
        let mut hlc = Hlc::new(peer(3));
        assert_eq!(hlc.send(&|| 42).unwrap().physical_ms, 42);
        assert_eq!(hlc.peer(), peer(3));
        assert_eq!(hlc.max_drift_ms(), Hlc::DEFAULT_MAX_DRIFT_MS);
    }
}
