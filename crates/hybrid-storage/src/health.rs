//! The primary's health, as a sans-io state machine: every method takes the
//! current time in milliseconds, nothing reads a clock or sleeps.
//!
//! Seed 004's intervals are the defaults: a heartbeat every 5 s, a persistent
//! sync (queue replay) every 30 s, and a primary not heard from for 60 s is
//! stale.

/// The intervals and the timeout of the health model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthConfig {
    /// How often the primary is pinged (seed 004: 5 s).
    pub heartbeat_ms: u64,
    /// How often queued writes are replayed while the primary is healthy
    /// (seed 004: 30 s); a primary coming back triggers a replay at once.
    pub sync_ms: u64,
    /// How long without a successful exchange before the primary counts as
    /// stale and reads go local (seed 004: 60 s).
    pub stale_after_ms: u64,
    /// How long one request to the primary may take before it counts as failed.
    pub request_timeout_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            heartbeat_ms: 5_000,
            sync_ms: 30_000,
            stale_after_ms: 60_000,
            request_timeout_ms: 2_000,
        }
    }
}

impl HealthConfig {
    /// Sets the heartbeat interval, the sync interval and the stale threshold.
    #[must_use]
    pub fn with_intervals(mut self, heartbeat_ms: u64, sync_ms: u64, stale_after_ms: u64) -> Self {
        self.heartbeat_ms = heartbeat_ms;
        self.sync_ms = sync_ms;
        self.stale_after_ms = stale_after_ms;
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn with_request_timeout_ms(mut self, ms: u64) -> Self {
        self.request_timeout_ms = ms;
        self
    }
}

/// How the primary looks from here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PrimaryHealth {
    /// Never contacted yet: requests are tried.
    Unknown,
    /// The last exchange succeeded, within the stale threshold.
    Healthy,
    /// The last exchange succeeded but longer ago than the stale threshold.
    Stale,
    /// The last exchange failed (an error or a timeout).
    Down,
}

impl PrimaryHealth {
    /// Whether requests go to the primary in this state (unknown or healthy).
    pub fn usable(self) -> bool {
        matches!(self, PrimaryHealth::Unknown | PrimaryHealth::Healthy)
    }

    /// The state's name as `status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            PrimaryHealth::Unknown => "unknown",
            PrimaryHealth::Healthy => "healthy",
            PrimaryHealth::Stale => "stale",
            PrimaryHealth::Down => "down",
        }
    }
}

/// Where the node syncs, seed 004's modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SyncMode {
    /// The primary is usable (peers may be too).
    Hybrid,
    /// The primary is not, but at least one peer is connected.
    P2POnly,
    /// Neither: every write waits in the queues.
    LocalOnly,
}

impl SyncMode {
    /// The mode's name as `status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Hybrid => "hybrid",
            SyncMode::P2POnly => "p2p-only",
            SyncMode::LocalOnly => "local-only",
        }
    }
}

/// A change of the primary's state, for the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Up,
    Down,
}

/// The health state machine.
#[derive(Clone, Debug)]
pub struct Health {
    config: HealthConfig,
    last_ok_ms: Option<u64>,
    last_failure_ms: Option<u64>,
    last_failure_after_ok: bool,
    last_heartbeat_ms: Option<u64>,
    last_sync_ms: Option<u64>,
}

impl Health {
    /// A primary never contacted.
    pub fn new(config: HealthConfig) -> Self {
        Health {
            config,
            last_ok_ms: None,
            last_failure_ms: None,
            last_failure_after_ok: false,
            last_heartbeat_ms: None,
            last_sync_ms: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The state at `now_ms`.
    pub fn state(&self, now_ms: u64) -> PrimaryHealth {
        if self.last_failure_after_ok {
            return PrimaryHealth::Down;
        }
        match self.last_ok_ms {
            None => PrimaryHealth::Unknown,
            Some(ok) if now_ms.saturating_sub(ok) > self.config.stale_after_ms => {
                PrimaryHealth::Stale
            }
            Some(_) => PrimaryHealth::Healthy,
        }
    }

    /// Records a successful exchange; `Some(Up)` when the primary was not
    /// usable before.
    pub(crate) fn on_success(&mut self, now_ms: u64) -> Option<Transition> {
        let was = self.state(now_ms);
        self.last_ok_ms = Some(self.last_ok_ms.map_or(now_ms, |t| t.max(now_ms)));
        self.last_failure_after_ok = false;
        (!matches!(was, PrimaryHealth::Healthy)).then_some(Transition::Up)
    }

    /// Records a failed exchange; `Some(Down)` when the primary was usable or
    /// stale before.
    pub(crate) fn on_failure(&mut self, now_ms: u64) -> Option<Transition> {
        let was = self.state(now_ms);
        self.last_failure_ms = Some(now_ms);
        self.last_failure_after_ok = true;
        (was != PrimaryHealth::Down).then_some(Transition::Down)
    }

    /// Records a finished queue replay.
    pub(crate) fn on_synced(&mut self, now_ms: u64) {
        self.last_sync_ms = Some(now_ms);
    }

    /// When the queue was last replayed completely.
    pub fn last_sync_ms(&self) -> Option<u64> {
        self.last_sync_ms
    }

    /// When the primary last answered.
    pub fn last_ok_ms(&self) -> Option<u64> {
        self.last_ok_ms
    }

    /// Whether a heartbeat is due at `now_ms` (and notes that one is sent).
    pub(crate) fn take_heartbeat(&mut self, now_ms: u64) -> bool {
        let due = self
            .last_heartbeat_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.config.heartbeat_ms);
        if due {
            self.last_heartbeat_ms = Some(now_ms);
        }
        due
    }

    /// Whether a periodic replay is due at `now_ms`.
    pub(crate) fn sync_due(&self, now_ms: u64) -> bool {
        self.last_sync_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= self.config.sync_ms)
    }

    /// Milliseconds from `now_ms` until the next heartbeat is due.
    pub fn until_next_heartbeat(&self, now_ms: u64) -> u64 {
        self.last_heartbeat_ms
            .map_or(0, |t| (t + self.config.heartbeat_ms).saturating_sub(now_ms))
    }

    /// The mode at `now_ms` with `peers` connected peers.
    pub fn mode(&self, now_ms: u64, peers: usize) -> SyncMode {
        if self.state(now_ms) == PrimaryHealth::Healthy {
            SyncMode::Hybrid
        } else if peers > 0 {
            SyncMode::P2POnly
        } else {
            SyncMode::LocalOnly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_defaults() {
        let c = HealthConfig::default();
        assert_eq!(
            (c.heartbeat_ms, c.sync_ms, c.stale_after_ms),
            (5_000, 30_000, 60_000)
        );
    }

    #[test]
    fn states_follow_exchanges_and_time() {
        let mut h = Health::new(HealthConfig::default());
        assert_eq!(h.state(0), PrimaryHealth::Unknown);
        assert!(h.state(0).usable());
        assert_eq!(h.on_success(1_000), Some(Transition::Up));
        assert_eq!(h.on_success(2_000), None);
        assert_eq!(h.state(62_000), PrimaryHealth::Healthy);
        assert_eq!(h.state(62_001), PrimaryHealth::Stale);
        assert!(!h.state(62_001).usable());
        assert_eq!(h.on_failure(3_000), Some(Transition::Down));
        assert_eq!(h.on_failure(4_000), None);
        assert_eq!(h.state(4_000), PrimaryHealth::Down);
        assert_eq!(h.on_success(5_000), Some(Transition::Up));
        assert_eq!(h.state(5_000), PrimaryHealth::Healthy);
    }

    #[test]
    fn modes() {
        let mut h = Health::new(HealthConfig::default());
        assert_eq!(h.mode(0, 0), SyncMode::LocalOnly);
        assert_eq!(h.mode(0, 2), SyncMode::P2POnly);
        h.on_success(0);
        assert_eq!(h.mode(0, 0), SyncMode::Hybrid);
        h.on_failure(1);
        assert_eq!(h.mode(1, 1), SyncMode::P2POnly);
        assert_eq!(h.mode(1, 0), SyncMode::LocalOnly);
    }

    #[test]
    fn heartbeats_and_syncs_fall_due_on_the_intervals() {
        let mut h = Health::new(HealthConfig::default());
        assert!(h.take_heartbeat(0));
        assert!(!h.take_heartbeat(4_999));
        assert_eq!(h.until_next_heartbeat(4_000), 1_000);
        assert!(h.take_heartbeat(5_000));
        assert!(h.sync_due(0));
        h.on_synced(10);
        assert!(!h.sync_due(30_009));
        assert!(h.sync_due(30_010));
    }
}
