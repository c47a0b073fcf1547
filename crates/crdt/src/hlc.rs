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
/// - a timestamp issued by `receive(remote)` is strictly greater than `remote`;
/// - its physical component is never behind the physical clock's reading;
/// - a remote timestamp more than [`max_drift_ms`](Hlc::max_drift_ms) ahead of
///   the local physical time is refused with [`Error::ClockDrift`] and the
///   clock does not move, so one bad peer cannot drag it into the future.
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
    /// The default maximum lead of a remote timestamp over local time: 60 s.
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

    /// The largest lead, in ms, a remote timestamp may have over local physical time.
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

    /// Timestamps the receipt of `remote`, reading `clock` once.
    ///
    /// The result is greater than both `remote` and every timestamp issued before.
    /// Fails with [`Error::ClockDrift`] (clock unchanged) when `remote` is more
    /// than the maximum drift ahead of local physical time.
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
        if remote.physical_ms.saturating_sub(now_ms) > self.max_drift_ms {
            return Err(Error::ClockDrift {
                remote_ms: remote.physical_ms,
                local_ms: now_ms,
                max_drift_ms: self.max_drift_ms,
            });
        }
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
    fn remote_too_far_ahead_is_refused_and_clock_does_not_move() {
        let mut hlc = Hlc::new(peer(1)).with_max_drift(1_000);
        hlc.send_at(5_000).unwrap();
        let before = hlc.clone();
        let r = HlcTimestamp::new(6_001, 0, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 5_000),
            Err(Error::ClockDrift {
                remote_ms: 6_001,
                local_ms: 5_000,
                max_drift_ms: 1_000
            })
        );
        assert_eq!(hlc, before);
        // Exactly at the limit is accepted.
        let r = HlcTimestamp::new(6_000, 0, peer(2));
        assert_eq!(
            hlc.receive_at(&r, 5_000).unwrap(),
            HlcTimestamp::new(6_000, 1, peer(1))
        );
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
