//! How far peers' clocks are from this node's, estimated from the signed send
//! times of the messages they send straight to it (no relay in between).
//!
//! A sample is `message send time (peer's clock) - receipt time (this node's
//! clock)`: the peer's clock offset minus the time the message spent in
//! flight and in queues, so never more than the true offset (give or take the
//! sender's clock resolution). The estimate is the greatest sample among the
//! recent ones (the freshest message bounds the offset most tightly), which
//! ignores retransmissions of old messages. Old *data* (versions written days
//! ago and carried by anti-entropy) plays no part, so a node catching up on
//! history does not see its peers as "behind".
//!
//! Replication never depends on these estimates: they only tell the user why
//! last-writer-wins picks what it picks (see the crate's docs on wrong clocks).

use std::collections::{BTreeMap, VecDeque};

use ecomesh_types::PeerId;

/// Samples kept per peer.
const MAX_SAMPLES: usize = 32;
/// Samples older than this (by this node's clock) no longer count, unless they
/// are the only ones left.
const SAMPLE_WINDOW_MS: u64 = 10 * 60_000;
/// Peers tracked at most; the one heard from least recently is forgotten first.
const MAX_PEERS: usize = 1024;

/// One peer's clock as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerClock {
    /// The peer.
    pub peer: PeerId,
    /// Estimated offset of the peer's clock from this node's, in ms:
    /// positive when the peer's clock is ahead, negative when it is behind.
    pub skew_ms: i64,
    /// Whether `|skew_ms|` exceeds the tolerance ([`ClockReport::tolerance_ms`]).
    pub skewed: bool,
    /// Messages the estimate rests on (at most a few dozen recent ones).
    pub samples: usize,
}

/// This node's own clock, judged against its peers'.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OwnClock {
    /// Fewer than two peers have estimates: no majority to compare with.
    Unknown,
    /// Most peers agree with this node's clock (or disagree in no common direction).
    Agrees,
    /// More than half of the peers (at least two) find this clock ahead of
    /// theirs, by about `by_ms` (the median of their offsets).
    Ahead {
        /// How far ahead, in ms.
        by_ms: u64,
    },
    /// More than half of the peers (at least two) find this clock behind
    /// theirs, by about `by_ms`.
    Behind {
        /// How far behind, in ms.
        by_ms: u64,
    },
}

/// What this node knows about clocks: each peer's estimated offset and a
/// verdict on its own clock.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClockReport {
    /// Every peer with an estimate, sorted by peer id.
    pub peers: Vec<PeerClock>,
    /// This node's clock against the majority of its peers.
    pub own: OwnClock,
    /// An offset beyond this, in ms, counts as skewed.
    pub tolerance_ms: u64,
}

#[derive(Debug, Default)]
struct PeerState {
    /// (receipt time by this node's clock, sample).
    samples: VecDeque<(u64, i64)>,
    last_heard_ms: u64,
    /// The offset last logged as skewed, if the peer is currently reported as skewed.
    logged: Option<i64>,
}

impl PeerState {
    fn estimate(&self) -> Option<i64> {
        self.samples.iter().map(|(_, s)| *s).max()
    }
}

/// Per-peer clock offset estimates, fed with message send times.
#[derive(Debug)]
pub(crate) struct ClockSkew {
    tolerance_ms: u64,
    peers: BTreeMap<PeerId, PeerState>,
    /// The own-clock verdict last logged.
    own_logged: OwnClock,
}

fn signed_diff(a: u64, b: u64) -> i64 {
    let d = i128::from(a) - i128::from(b);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

impl ClockSkew {
    pub(crate) fn new(tolerance_ms: u64) -> Self {
        ClockSkew {
            tolerance_ms,
            peers: BTreeMap::new(),
            own_logged: OwnClock::Unknown,
        }
    }

    fn is_skewed(&self, skew: i64) -> bool {
        skew.unsigned_abs() > self.tolerance_ms
    }

    /// Records a message `peer` sent at `sent_ms` (its clock), received at
    /// `now_ms` (this node's clock). Logs, once, a peer whose offset becomes
    /// larger than the tolerance or changes by more than the tolerance, and
    /// when it is back within it; likewise for this node's own clock.
    pub(crate) fn observe(&mut self, peer: PeerId, sent_ms: u64, now_ms: u64) {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, s)| s.last_heard_ms)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.peers.remove(&p);
            }
        }
        let tolerance = self.tolerance_ms;
        let state = self.peers.entry(peer).or_default();
        state.last_heard_ms = now_ms;
        state
            .samples
            .push_back((now_ms, signed_diff(sent_ms, now_ms)));
        while state.samples.len() > MAX_SAMPLES
            || (state.samples.len() > 1
                && state
                    .samples
                    .front()
                    .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > SAMPLE_WINDOW_MS))
        {
            state.samples.pop_front();
        }
        let Some(skew) = state.estimate() else {
            return;
        };
        let skewed = skew.unsigned_abs() > tolerance;
        match (skewed, state.logged) {
            (true, None) => {
                tracing::warn!(
                    %peer,
                    skew_ms = skew,
                    "peer's clock is {} this node's by {}; replication is unaffected, but its writes win (ahead) or lose (behind) last-writer-wins conflicts with concurrent writes",
                    if skew > 0 { "ahead of" } else { "behind" },
                    human(skew.unsigned_abs()),
                );
                state.logged = Some(skew);
            }
            (true, Some(was)) if skew.abs_diff(was) > tolerance => {
                tracing::warn!(%peer, skew_ms = skew, was_ms = was, "peer's clock offset changed");
                state.logged = Some(skew);
            }
            (false, Some(_)) => {
                tracing::info!(%peer, skew_ms = skew, "peer's clock agrees with this node's again");
                state.logged = None;
            }
            _ => {}
        }
        let own = self.own();
        if own != self.own_logged {
            match own {
                OwnClock::Ahead { by_ms } => tracing::warn!(
                    by_ms,
                    "this node's clock looks wrong: {} ahead of most of its peers",
                    human(by_ms)
                ),
                OwnClock::Behind { by_ms } => tracing::warn!(
                    by_ms,
                    "this node's clock looks wrong: {} behind most of its peers",
                    human(by_ms)
                ),
                OwnClock::Agrees | OwnClock::Unknown
                    if matches!(
                        self.own_logged,
                        OwnClock::Ahead { .. } | OwnClock::Behind { .. }
                    ) =>
                {
                    tracing::info!("this node's clock agrees with its peers again");
                }
                _ => {}
            }
            self.own_logged = own;
        }
    }

    /// This node's clock against its peers' estimates.
    fn own(&self) -> OwnClock {
        let skews: Vec<i64> = self
            .peers
            .values()
            .filter_map(PeerState::estimate)
            .collect();
        if skews.len() < 2 {
            return OwnClock::Unknown;
        }
        let median = |mut v: Vec<i64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        // Peers behind this node mean this node is ahead, and the other way round.
        let behind: Vec<i64> = skews
            .iter()
            .copied()
            .filter(|s| *s < 0 && self.is_skewed(*s))
            .collect();
        let ahead: Vec<i64> = skews
            .iter()
            .copied()
            .filter(|s| *s > 0 && self.is_skewed(*s))
            .collect();
        if behind.len() >= 2 && behind.len() * 2 > skews.len() {
            OwnClock::Ahead {
                by_ms: median(behind).unsigned_abs(),
            }
        } else if ahead.len() >= 2 && ahead.len() * 2 > skews.len() {
            OwnClock::Behind {
                by_ms: median(ahead).unsigned_abs(),
            }
        } else {
            OwnClock::Agrees
        }
    }

    pub(crate) fn report(&self) -> ClockReport {
        ClockReport {
            peers: self
                .peers
                .iter()
                .filter_map(|(peer, s)| {
                    s.estimate().map(|skew| PeerClock {
                        peer: *peer,
                        skew_ms: skew,
                        skewed: self.is_skewed(skew),
                        samples: s.samples.len(),
                    })
                })
                .collect(),
            own: self.own(),
            tolerance_ms: self.tolerance_ms,
        }
    }
}

/// `7_200_000` -> `"2h 0m 0s"`, for logs.
pub(crate) fn human(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{}.{:03}s", s, ms % 1000),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m {}s", s / 3600, (s / 60) % 60, s % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(b: u8) -> PeerId {
        PeerId::from_digest([b; 32])
    }

    const NOW: u64 = 1_800_000_000_000;
    const TWO_HOURS: i64 = 2 * 3_600_000;

    #[test]
    fn estimate_is_the_freshest_sample_and_ignores_delays_and_retransmissions() {
        let mut c = ClockSkew::new(60_000);
        let p = peer(1);
        // Sent 2 h ahead, 40 ms in flight.
        c.observe(p, NOW.saturating_add_signed(TWO_HOURS) - 40, NOW);
        // An old message retransmitted (sent 90 s before it arrived).
        c.observe(p, NOW.saturating_add_signed(TWO_HOURS) - 90_000, NOW + 10);
        let r = c.report();
        assert_eq!(r.peers.len(), 1);
        assert_eq!(r.peers[0].skew_ms, TWO_HOURS - 40);
        assert!(r.peers[0].skewed);
        assert_eq!(r.peers[0].samples, 2);
        // One peer is no majority.
        assert_eq!(r.own, OwnClock::Unknown);
    }

    #[test]
    fn a_peer_whose_clock_is_fixed_is_no_longer_skewed_after_the_window() {
        let mut c = ClockSkew::new(60_000);
        let p = peer(1);
        c.observe(p, NOW + 7_200_000, NOW);
        assert!(c.report().peers[0].skewed);
        let later = NOW + SAMPLE_WINDOW_MS + 1;
        c.observe(p, later + 5, later);
        let r = c.report();
        assert_eq!(r.peers[0].skew_ms, 5);
        assert!(!r.peers[0].skewed);
    }

    #[test]
    fn own_clock_is_wrong_when_most_peers_disagree_the_same_way() {
        let mut c = ClockSkew::new(60_000);
        // Two of three peers are two hours behind this node: this node is ahead.
        c.observe(peer(1), NOW - 7_200_000, NOW);
        c.observe(peer(2), NOW - 7_100_000, NOW);
        c.observe(peer(3), NOW + 10, NOW);
        assert_eq!(c.report().own, OwnClock::Ahead { by_ms: 7_100_000 });
        // Two of four is not more than half.
        c.observe(peer(4), NOW, NOW);
        assert_eq!(c.report().own, OwnClock::Agrees);
        let mut c = ClockSkew::new(60_000);
        c.observe(peer(1), NOW + 86_400_000, NOW);
        c.observe(peer(2), NOW + 86_400_000, NOW);
        assert_eq!(c.report().own, OwnClock::Behind { by_ms: 86_400_000 });
        // Skewed in opposite directions: no verdict against this node.
        let mut c = ClockSkew::new(60_000);
        c.observe(peer(1), NOW + 86_400_000, NOW);
        c.observe(peer(2), NOW - 86_400_000, NOW);
        assert_eq!(c.report().own, OwnClock::Agrees);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let mut c = ClockSkew::new(0);
        c.observe(peer(1), u64::MAX, 0);
        c.observe(peer(2), 0, u64::MAX);
        let r = c.report();
        assert_eq!(r.peers[0].skew_ms, i64::MAX);
        assert_eq!(r.peers[1].skew_ms, i64::MIN);
        assert_eq!(human(7_200_000), "2h 0m 0s");
        assert_eq!(human(61_500), "1m 1s");
        assert_eq!(human(1_500), "1.500s");
    }
}
