//! Local, subjective peer reputation (seed 4.3).
//!
//! The score is the weighted sum of five metrics in `0.0..=1.0`:
//! uptime reliability 0.25, response latency 0.15, data integrity 0.30, relay
//! willingness 0.15, storage contribution 0.15. Ratio metrics use a Laplace
//! prior, `(good + 1) / (total + 2)`, so a peer with no history scores the
//! neutral 0.5 on each (0.5 overall, as [`ecomesh_types::PeerInfo::new`]), and
//! a long record of failures approaches 0. Latency is an exponentially
//! weighted mean mapped to `REF / (REF + mean)` with `REF` =
//! [`LATENCY_REFERENCE_MS`]; no sample scores 0.5.
//!
//! Thresholds: below [`DEPRIORITIZE_BELOW`] (0.3) a peer is deprioritized (not
//! used as a relay); below [`DISCONNECT_BELOW`] (0.1) it is disconnected.
//!
//! Integrity alone can take the weighted score no lower than 0.35 (its weight
//! is 0.30), so a peer that sends nothing but invalid data would stay trusted
//! by the score. A hostile-peer gate closes that (issue 20): a peer with at
//! least [`MIN_INTEGRITY_FAILURES`] invalid messages whose integrity metric is
//! below [`DISCONNECT_BELOW`] is disconnected, and below [`DEPRIORITIZE_BELOW`]
//! deprioritized, whatever its other metrics ([`PeerRecord::standing`]).

use std::collections::BTreeMap;

use ecomesh_types::PeerId;

/// Weight of uptime reliability.
pub const W_UPTIME: f64 = 0.25;
/// Weight of response latency.
pub const W_LATENCY: f64 = 0.15;
/// Weight of data integrity.
pub const W_INTEGRITY: f64 = 0.30;
/// Weight of relay willingness.
pub const W_RELAY: f64 = 0.15;
/// Weight of storage contribution.
pub const W_STORAGE: f64 = 0.15;
/// Below this score a peer is deprioritized.
pub const DEPRIORITIZE_BELOW: f64 = 0.3;
/// Below this score a peer is disconnected.
pub const DISCONNECT_BELOW: f64 = 0.1;
/// Invalid messages a peer must have sent before its integrity metric alone
/// decides its standing (so a few honest mistakes never disconnect anyone).
pub const MIN_INTEGRITY_FAILURES: u64 = 16;
/// Valid messages after which a trusted peer counts as established
/// ([`ReputationTable::established`]).
pub const ESTABLISHED_VALID_MESSAGES: u64 = 4;
/// Latency that scores 0.5, in milliseconds.
pub const LATENCY_REFERENCE_MS: f64 = 200.0;

/// Something observed about a peer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Observation {
    /// The peer was (true) or was not (false) reachable when expected; a
    /// delivery success or failure counts here.
    Available(bool),
    /// A round-trip or response time sample, in milliseconds.
    Latency(u32),
    /// A message from the peer had a valid (true) or invalid (false) signature / CID.
    Integrity(bool),
    /// A message whose signature checked out (and which the mesh credited as
    /// `Integrity(true)`) carried invalid data (a version whose CID or
    /// signature does not match, a malformed payload): that credit becomes a
    /// failure, so validly signed garbage costs as much as a bad signature.
    InvalidContent,
    /// The peer relayed (true) or refused / failed to relay (false) a message for others.
    Relay(bool),
    /// The peer kept (true) or failed to keep (false) data it was asked to pin.
    Storage(bool),
}

/// What the caller should do with a peer after an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// Score at or above 0.3.
    Trusted,
    /// Score in `0.1..0.3`: do not prefer it as a relay.
    Deprioritized,
    /// Score below 0.1: disconnect it.
    Disconnect,
}

impl Standing {
    /// The standing of `score`.
    pub fn of(score: f64) -> Self {
        if score < DISCONNECT_BELOW {
            Standing::Disconnect
        } else if score < DEPRIORITIZE_BELOW {
            Standing::Deprioritized
        } else {
            Standing::Trusted
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Ratio {
    good: u64,
    total: u64,
}

impl Ratio {
    fn record(&mut self, ok: bool) {
        self.total = self.total.saturating_add(1);
        if ok {
            self.good = self.good.saturating_add(1);
        }
    }
    /// Turns one recorded success into a failure (a plain failure when none
    /// is left to turn).
    fn retract(&mut self) {
        if self.good > 0 {
            self.good -= 1;
        } else {
            self.total = self.total.saturating_add(1);
        }
    }
    fn score(&self) -> f64 {
        (self.good as f64 + 1.0) / (self.total as f64 + 2.0)
    }
}

/// The record of one peer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PeerRecord {
    uptime: Ratio,
    integrity: Ratio,
    relay: Ratio,
    storage: Ratio,
    latency_ewma_ms: Option<f64>,
}

impl PeerRecord {
    /// Applies one observation.
    pub fn observe(&mut self, o: Observation) {
        match o {
            Observation::Available(ok) => self.uptime.record(ok),
            Observation::Integrity(ok) => self.integrity.record(ok),
            Observation::InvalidContent => self.integrity.retract(),
            Observation::Relay(ok) => self.relay.record(ok),
            Observation::Storage(ok) => self.storage.record(ok),
            Observation::Latency(ms) => {
                let ms = f64::from(ms);
                self.latency_ewma_ms = Some(match self.latency_ewma_ms {
                    None => ms,
                    Some(prev) => prev * 0.8 + ms * 0.2,
                });
            }
        }
    }

    /// The latency metric in `0.0..=1.0`.
    pub fn latency_score(&self) -> f64 {
        match self.latency_ewma_ms {
            None => 0.5,
            Some(ms) => LATENCY_REFERENCE_MS / (LATENCY_REFERENCE_MS + ms),
        }
    }

    /// The standing: that of the weighted [`score`](Self::score), lowered by
    /// the integrity gate (see the module documentation) once the peer sent at
    /// least [`MIN_INTEGRITY_FAILURES`] invalid messages.
    pub fn standing(&self) -> Standing {
        let by_score = Standing::of(self.score());
        let failures = self.integrity.total - self.integrity.good;
        if failures < MIN_INTEGRITY_FAILURES {
            return by_score;
        }
        by_score.max(Standing::of(self.integrity.score()))
    }

    /// The weighted score in `0.0..=1.0`.
    pub fn score(&self) -> f64 {
        W_UPTIME * self.uptime.score()
            + W_LATENCY * self.latency_score()
            + W_INTEGRITY * self.integrity.score()
            + W_RELAY * self.relay.score()
            + W_STORAGE * self.storage.score()
    }
}

/// Reputation of every peer this node has dealt with.
#[derive(Clone, Debug, Default)]
pub struct ReputationTable {
    peers: BTreeMap<PeerId, PeerRecord>,
}

impl ReputationTable {
    /// An empty table (every peer neutral at 0.5).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `o` about `peer` and returns its new standing.
    pub fn observe(&mut self, peer: PeerId, o: Observation) -> Standing {
        let rec = self.peers.entry(peer).or_default();
        rec.observe(o);
        rec.standing()
    }

    /// The score of `peer` (0.5 when unknown).
    pub fn score(&self, peer: &PeerId) -> f64 {
        self.peers.get(peer).map_or(0.5, PeerRecord::score)
    }

    /// Whether `peer` is an established neighbour: it sent at least
    /// [`ESTABLISHED_VALID_MESSAGES`] valid messages and stands trusted. The
    /// mesh inbox keeps such a peer's events before strangers' when full.
    pub fn established(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|r| {
            r.integrity.good >= ESTABLISHED_VALID_MESSAGES && r.standing() == Standing::Trusted
        })
    }

    /// The standing of `peer` ([`PeerRecord::standing`]; trusted when unknown).
    pub fn standing(&self, peer: &PeerId) -> Standing {
        self.peers
            .get(peer)
            .map_or(Standing::Trusted, PeerRecord::standing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> PeerId {
        PeerId::from_digest([7; 32])
    }

    #[test]
    fn weights_sum_to_one_and_unknown_is_neutral() {
        let sum = W_UPTIME + W_LATENCY + W_INTEGRITY + W_RELAY + W_STORAGE;
        assert!((sum - 1.0).abs() < 1e-12);
        let t = ReputationTable::new();
        assert!((t.score(&p()) - 0.5).abs() < 1e-12);
        assert_eq!(t.standing(&p()), Standing::Trusted);
    }

    #[test]
    fn integrity_weighs_030() {
        let mut t = ReputationTable::new();
        for _ in 0..10_000 {
            t.observe(p(), Observation::Integrity(false));
        }
        // Integrity near 0, the rest neutral: 0.7 * 0.5.
        assert!((t.score(&p()) - 0.35).abs() < 1e-3, "{}", t.score(&p()));
        for _ in 0..20_000 {
            t.observe(p(), Observation::Integrity(true));
        }
        assert!(t.score(&p()) > 0.5);
    }

    #[test]
    fn below_030_is_deprioritized() {
        let mut t = ReputationTable::new();
        let mut s = Standing::Trusted;
        let mut n = 0;
        while s == Standing::Trusted {
            t.observe(p(), Observation::Integrity(false));
            s = t.observe(p(), Observation::Available(false));
            n += 1;
            assert!(n < 1000);
        }
        assert_eq!(s, Standing::Deprioritized);
        assert!(t.score(&p()) < DEPRIORITIZE_BELOW && t.score(&p()) >= DISCONNECT_BELOW);
    }

    #[test]
    fn below_010_disconnects() {
        let mut t = ReputationTable::new();
        let mut s = Standing::Trusted;
        let mut n = 0;
        while s != Standing::Disconnect {
            for o in [
                Observation::Integrity(false),
                Observation::Available(false),
                Observation::Relay(false),
                Observation::Storage(false),
                Observation::Latency(5_000),
            ] {
                s = t.observe(p(), o);
            }
            n += 1;
            assert!(n < 1000);
        }
        assert!(t.score(&p()) < DISCONNECT_BELOW);
    }

    /// A peer sending only invalid data is disconnected by the integrity gate
    /// although its weighted score stays at 0.35; a few failures among many
    /// good messages change nothing.
    #[test]
    fn nothing_but_invalid_data_disconnects() {
        let mut t = ReputationTable::new();
        let mut s = Standing::Trusted;
        let mut n = 0;
        while s != Standing::Disconnect {
            s = t.observe(p(), Observation::Integrity(false));
            n += 1;
            assert!(n < 1000, "never disconnected: {}", t.score(&p()));
        }
        assert!(
            t.score(&p()) > DEPRIORITIZE_BELOW,
            "the score alone would trust it"
        );
        assert_eq!(t.standing(&p()), Standing::Disconnect);
        assert!(n >= MIN_INTEGRITY_FAILURES);
        let q = PeerId::from_digest([8; 32]);
        for i in 0..1000 {
            t.observe(q, Observation::Integrity(i % 10 != 0));
        }
        assert_eq!(t.standing(&q), Standing::Trusted);
    }

    /// Validly signed messages with invalid content end up as failures: a
    /// peer sending nothing else is disconnected like one forging signatures.
    #[test]
    fn invalid_content_turns_the_signature_credit_into_a_failure() {
        let mut t = ReputationTable::new();
        let mut s = Standing::Trusted;
        let mut n = 0;
        while s != Standing::Disconnect {
            t.observe(p(), Observation::Integrity(true));
            s = t.observe(p(), Observation::InvalidContent);
            n += 1;
            assert!(n < 1000, "never disconnected: {}", t.score(&p()));
        }
        assert_eq!(n, MIN_INTEGRITY_FAILURES);
        // Without a credit to turn, it is a plain failure.
        let q = PeerId::from_digest([9; 32]);
        t.observe(q, Observation::InvalidContent);
        let mut r = PeerRecord::default();
        r.observe(Observation::Integrity(false));
        assert_eq!(t.score(&q), r.score());
    }

    #[test]
    fn latency_maps_reference_to_half() {
        let mut r = PeerRecord::default();
        r.observe(Observation::Latency(200));
        assert!((r.latency_score() - 0.5).abs() < 1e-12);
        r.observe(Observation::Latency(0));
        assert!(r.latency_score() > 0.5);
    }

    #[test]
    fn standing_boundaries() {
        assert_eq!(Standing::of(0.3), Standing::Trusted);
        assert_eq!(Standing::of(0.299), Standing::Deprioritized);
        assert_eq!(Standing::of(0.1), Standing::Deprioritized);
        assert_eq!(Standing::of(0.0999), Standing::Disconnect);
    }
}
