//! Delta sync over stream positions: asking a peer for its changes since the
//! position last read (`ecomesh/since`), serving and merging pages (`ecomesh/delta`).

use ecomesh_replication::merkle::ReconcileStore;
use ecomesh_replication::stream::{MAX_DELTA, Position};
use ecomesh_types::PeerId;

use super::process::{Driver, Outgoing};
use super::wire::{DeltaPage, encode_delta, encode_since};
use super::{DELTA_TYPE, P2PStorageAdapter, SINCE_TYPE, lock};
use crate::kv::Backend;

/// Stream entries served per second, in all, to peers that are not
/// established (`MultiTransportManager::is_established`): a request of a few
/// bytes costs up to a page of version reads, so a storm of fresh identities
/// each asking for everything since position 0 would otherwise keep the node
/// busy serving them (issue 20). Established peers are always served.
pub(super) const SERVE_PER_SECOND: usize = MAX_DELTA;
/// Entries the budget holds at most.
pub(super) const SERVE_BURST: usize = 2 * MAX_DELTA;

/// The shared budget of stream entries served to peers that are not
/// established: refilled at [`SERVE_PER_SECOND`] up to [`SERVE_BURST`] on the
/// caller's clock.
#[derive(Debug)]
pub(super) struct ServeBudget {
    tokens: usize,
    refilled_ms: u64,
}

impl ServeBudget {
    /// A full budget.
    pub(super) fn new() -> Self {
        ServeBudget {
            tokens: SERVE_BURST,
            refilled_ms: 0,
        }
    }

    /// How many entries a request may be answered with at `now_ms`: a whole
    /// page for an established peer, else what the budget holds.
    pub(super) fn limit(&mut self, now_ms: u64, established: bool) -> usize {
        let elapsed = now_ms.saturating_sub(self.refilled_ms);
        let refill = usize::try_from(elapsed.saturating_mul(SERVE_PER_SECOND as u64) / 1000)
            .unwrap_or(usize::MAX);
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(SERVE_BURST);
            self.refilled_ms = now_ms;
        }
        if established {
            MAX_DELTA
        } else {
            self.tokens.min(MAX_DELTA)
        }
    }

    /// Records `n` entries served.
    pub(super) fn spend(&mut self, n: usize) {
        self.tokens = self.tokens.saturating_sub(n);
    }
}

impl<B: Backend> P2PStorageAdapter<B> {
    /// Asks `peer` for its changes after the position this node last read,
    /// unless a request is still awaiting its page.
    pub(super) fn ask_since(&self, d: &mut Driver<B>, peer: PeerId) {
        let Some(since) = lock(&self.stream)
            .as_ref()
            .map(|s| s.index().peer_position(&peer))
        else {
            return;
        };
        if d.since_asked
            .get(&peer)
            .is_some_and(|t| d.now_ms.saturating_sub(*t) < self.config.session_timeout_ms)
        {
            return;
        }
        d.since_asked.insert(peer, d.now_ms);
        d.outbox.push_back(Outgoing {
            peer,
            ty: SINCE_TYPE,
            payload: encode_since(since),
            seq: None,
        });
    }

    /// Answers a peer's "changes since": one page of this node's stream,
    /// leaving out what the peer may not see, within `max_fetch_bytes`.
    pub(super) fn serve_since(&self, d: &mut Driver<B>, from: PeerId, since: Position) {
        let established = self.mesh.is_established(&from);
        let limit = d.serve_budget.limit(d.now_ms, established);
        if limit == 0 {
            // The peer falls back on anti-entropy, or asks again later.
            tracing::debug!(%from, "stream request not served: budget for new peers spent");
            d.stats.since_refused += 1;
            return;
        }
        let page = self.changes_since(since, limit);
        d.serve_budget.spend(page.entries.len());
        let view = self.view_for(from);
        let mut versions = Vec::new();
        let mut total = 0usize;
        let mut next = since;
        let mut more = page.more;
        for e in &page.entries {
            // Versions travel in compact form; the peer rebuilds the canonical bytes.
            match view.version_bytes(&e.id).map(|b| {
                b.and_then(|b| crate::records::compact_of_canonical(&b, &self.mesh.peer_id()).ok())
            }) {
                Ok(Some(b)) => {
                    if total + b.len() > self.config.max_fetch_bytes && !versions.is_empty() {
                        more = true;
                        break;
                    }
                    total += b.len();
                    versions.push(b);
                }
                Ok(None) => {} // not for this peer, or collected since
                Err(e) => {
                    tracing::error!(error = %e, "stream: version unreadable");
                    more = true;
                    break;
                }
            }
            next = e.position;
        }
        d.stats.delta_versions_sent += versions.len() as u64;
        d.outbox.push_back(Outgoing {
            peer: from,
            ty: DELTA_TYPE,
            payload: encode_delta(&DeltaPage {
                next,
                more,
                versions,
            }),
            seq: None,
        });
    }

    /// Merges a page of a peer's stream in order; records how far it was read
    /// only when every version merged, and asks for the next page.
    pub(super) fn on_delta(&self, d: &mut Driver<B>, from: PeerId, page: DeltaPage) {
        if d.since_asked.remove(&from).is_none() {
            return; // not asked for (or a duplicate): ignored
        }
        let mut complete = true;
        for v in &page.versions {
            let before = d.stats.versions_merged;
            if !self.merge_compact(d, from, v) {
                complete = false;
                break;
            }
            d.stats.delta_versions_merged += d.stats.versions_merged - before;
        }
        if !complete {
            return; // anti-entropy (started by the gap) fills it in
        }
        let advanced = {
            let mut guard = lock(&self.stream);
            let Some(stream) = guard.as_mut() else {
                return;
            };
            let known = stream.index().peer_position(&from);
            match stream.observe_peer(from, page.next) {
                Ok(now) => now > known,
                Err(e) => {
                    tracing::error!(error = %e, "stream: peer position not recorded");
                    false
                }
            }
        };
        if page.more && advanced {
            self.ask_since(d, from);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fresh identities share one budget that refills with time; an
    /// established peer always gets a whole page.
    #[test]
    fn new_peers_share_a_budget_that_refills() {
        let mut b = ServeBudget::new();
        let mut served = 0;
        while b.limit(0, false) > 0 {
            let n = b.limit(0, false).min(1000);
            b.spend(n);
            served += n;
        }
        assert_eq!(served, SERVE_BURST);
        assert_eq!(b.limit(0, true), MAX_DELTA, "an established peer is served");
        assert_eq!(b.limit(500, false), SERVE_PER_SECOND / 2);
        assert_eq!(b.limit(60_000, false), MAX_DELTA.min(SERVE_BURST));
    }
}
