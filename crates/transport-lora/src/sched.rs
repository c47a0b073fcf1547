//! Channel access, sans-io: a duty-cycle ledger over a sliding window and a transmit
//! scheduler with per-priority queues and time-slotted ALOHA with random backoff.
//!
//! # Duty-cycle guarantee
//! [`DutyCycle`] admits a transmission starting at `now` of `airtime` ms only if the
//! airtime of every transmission that started within the last `window + guard` ms, plus
//! this one, stays within the allowance. With `guard` at least the longest packet's
//! airtime, no window of `window` ms (placed anywhere, counting partial overlaps) ever
//! holds more than the allowance: every transmission overlapping such a window started
//! within `window + guard` of the latest one, which was checked against all of them.
//! (`prop_no_window_exceeds_the_budget` checks exactly this.) Traffic the budget does not
//! admit waits in its queue, most urgent priority first.

use std::collections::VecDeque;

use ecomesh_types::Priority;

use crate::airtime::DutyBudget;

/// The ledger of past transmissions in the window.
#[derive(Clone, Debug)]
pub struct DutyCycle {
    budget: DutyBudget,
    guard_ms: u64,
    /// (start ms, airtime ms), oldest first.
    log: VecDeque<(u64, u64)>,
    used: u64,
}

impl DutyCycle {
    /// A ledger for `budget`, widening the window by `guard_ms` (at least the longest
    /// packet's airtime plus any latency between the decision and the radio's transmit).
    pub fn new(budget: DutyBudget, guard_ms: u64) -> Self {
        DutyCycle {
            budget,
            guard_ms,
            log: VecDeque::new(),
            used: 0,
        }
    }

    /// The budget.
    pub fn budget(&self) -> DutyBudget {
        self.budget
    }

    fn span(&self) -> u64 {
        self.budget.window_ms.saturating_add(self.guard_ms)
    }

    fn expire(&mut self, now: u64) {
        let span = self.span();
        while let Some(&(start, air)) = self.log.front() {
            if start.saturating_add(span) <= now {
                self.log.pop_front();
                self.used -= air;
            } else {
                break;
            }
        }
    }

    /// Airtime counted in the current window at `now`, ms.
    pub fn used_ms(&mut self, now: u64) -> u64 {
        self.expire(now);
        self.used
    }

    /// Whether `airtime_ms` may start at `now`.
    pub fn admits(&mut self, now: u64, airtime_ms: u64) -> bool {
        if self.budget.permille >= 1000 {
            return true;
        }
        self.expire(now);
        self.used.saturating_add(airtime_ms) <= self.budget.allowance_ms()
    }

    /// Earliest time at or after `now` when `airtime_ms` will be admitted (assuming
    /// nothing else is sent meanwhile); `None` if it never fits (longer than the allowance).
    pub fn earliest(&mut self, now: u64, airtime_ms: u64) -> Option<u64> {
        if self.admits(now, airtime_ms) {
            return Some(now);
        }
        let allowance = self.budget.allowance_ms();
        if airtime_ms > allowance {
            return None;
        }
        let span = self.span();
        let mut used = self.used;
        for &(start, air) in &self.log {
            used -= air;
            if used + airtime_ms <= allowance {
                return Some(start.saturating_add(span).max(now));
            }
        }
        Some(now)
    }

    /// Records a transmission admitted at `now`.
    pub fn record(&mut self, now: u64, airtime_ms: u64) {
        self.expire(now);
        self.log.push_back((now, airtime_ms));
        self.used += airtime_ms;
    }
}

/// Settings of the transmit scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Slot length of the slotted ALOHA, ms (transmissions start on slot boundaries).
    pub slot_ms: u64,
    /// Random backoff before each transmission: 0..=this many slots.
    pub max_backoff_slots: u32,
    /// Packets queued over all priorities; beyond it the least urgent is refused.
    pub queue_limit: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            slot_ms: 500,
            max_backoff_slots: 4,
            queue_limit: 256,
        }
    }
}

/// A packet waiting for the channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued<T> {
    /// What to send.
    pub item: T,
    /// Its airtime, ms.
    pub airtime_ms: u64,
    /// Its priority.
    pub priority: Priority,
}

/// Priority queues, slotted ALOHA and the duty-cycle ledger; time is passed in.
#[derive(Debug)]
pub struct Scheduler<T> {
    config: SchedulerConfig,
    queues: [VecDeque<Queued<T>>; 5],
    len: usize,
    duty: DutyCycle,
    busy_until: u64,
    next_slot: Option<u64>,
    rng: u64,
}

fn rank(p: Priority) -> usize {
    Priority::ALL.iter().position(|x| *x == p).unwrap_or(4)
}

impl<T> Scheduler<T> {
    /// A scheduler with `config`, the duty ledger `duty` and a random `seed` for backoff.
    pub fn new(config: SchedulerConfig, duty: DutyCycle, seed: u64) -> Self {
        Scheduler {
            config,
            queues: Default::default(),
            len: 0,
            duty,
            busy_until: 0,
            next_slot: None,
            rng: seed | 1,
        }
    }

    /// Packets queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The duty-cycle ledger.
    pub fn duty(&mut self) -> &mut DutyCycle {
        &mut self.duty
    }

    fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Queues `item`; when full, evicts the newest packet of a strictly less urgent
    /// priority and returns it, or gives `item` back if there is none.
    pub fn push(&mut self, item: Queued<T>) -> Result<Option<Queued<T>>, Queued<T>> {
        let mut evicted = None;
        if self.len >= self.config.queue_limit {
            let r = rank(item.priority);
            let victim = (r + 1..5).rev().find(|i| !self.queues[*i].is_empty());
            match victim {
                Some(v) => {
                    evicted = self.queues[v].pop_back();
                    self.len -= 1;
                }
                None => return Err(item),
            }
        }
        self.queues[rank(item.priority)].push_back(item);
        self.len += 1;
        Ok(evicted)
    }

    fn head(&self) -> Option<&Queued<T>> {
        self.queues.iter().find_map(|q| q.front())
    }

    /// The next packet to transmit at `now`, if its slot came and the budget admits it.
    pub fn poll(&mut self, now: u64) -> Option<Queued<T>> {
        let air = self.head()?.airtime_ms;
        let slot = match self.next_slot {
            Some(s) => s,
            None => {
                let s = self.pick_slot(now, air);
                self.next_slot = Some(s);
                s
            }
        };
        if now < slot {
            return None;
        }
        if !self.duty.admits(now, air) {
            // Budget spent: wait until it frees, then contend again.
            self.next_slot = None;
            let at = self.pick_slot(now, air);
            self.next_slot = Some(at);
            return None;
        }
        let q = self.queues.iter_mut().find(|q| !q.is_empty())?;
        let out = q.pop_front()?;
        self.len -= 1;
        self.duty.record(now, out.airtime_ms);
        self.busy_until = now + out.airtime_ms;
        self.next_slot = None;
        Some(out)
    }

    /// Chooses the start slot for a packet of `air` ms: the first slot boundary when the
    /// radio is free and the budget admits it, plus a random backoff of whole slots.
    fn pick_slot(&mut self, now: u64, air: u64) -> u64 {
        let slot = self.config.slot_ms.max(1);
        let free = now.max(self.busy_until);
        let legal = self.duty.earliest(free, air).unwrap_or(u64::MAX / 2);
        let aligned = legal.div_ceil(slot).saturating_mul(slot);
        let backoff = self.random() % (u64::from(self.config.max_backoff_slots) + 1);
        aligned.saturating_add(backoff * slot)
    }

    /// When [`poll`](Self::poll) should be called next (`None`: nothing queued).
    pub fn next_deadline(&mut self, now: u64) -> Option<u64> {
        let air = self.head()?.airtime_ms;
        let s = match self.next_slot {
            Some(s) => s,
            None => {
                let s = self.pick_slot(now, air);
                self.next_slot = Some(s);
                s
            }
        };
        Some(s.max(now))
    }

    /// Drops every queued packet that `keep` rejects.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for q in &mut self.queues {
            q.retain(|x| keep(&x.item));
        }
        self.len = self.queues.iter().map(VecDeque::len).sum();
        if self.len == 0 {
            self.next_slot = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn budget(permille: u32, window_ms: u64) -> DutyBudget {
        DutyBudget {
            permille,
            window_ms,
        }
    }

    #[test]
    fn priorities_and_budget() {
        let mut s = Scheduler::new(
            SchedulerConfig {
                slot_ms: 10,
                max_backoff_slots: 0,
                queue_limit: 3,
            },
            DutyCycle::new(budget(100, 1000), 50),
            1,
        );
        for (i, p) in [Priority::Low, Priority::Critical, Priority::Normal]
            .into_iter()
            .enumerate()
        {
            s.push(Queued {
                item: i,
                airtime_ms: 40,
                priority: p,
            })
            .unwrap();
        }
        // Full: a Low packet is refused, a High one evicts the Low.
        assert!(
            s.push(Queued {
                item: 9,
                airtime_ms: 40,
                priority: Priority::Low
            })
            .is_err()
        );
        let evicted = s
            .push(Queued {
                item: 3,
                airtime_ms: 40,
                priority: Priority::High,
            })
            .unwrap();
        assert_eq!(
            evicted.map(|q| q.item),
            Some(0),
            "the Low packet is handed back"
        );
        let mut sent = Vec::new();
        let mut now = 0;
        while let Some(d) = s.next_deadline(now) {
            now = d;
            if let Some(q) = s.poll(now) {
                sent.push((q.item, now));
            }
            assert!(now < 100_000);
        }
        let order: Vec<usize> = sent.iter().map(|x| x.0).collect();
        assert_eq!(order, vec![1, 3, 2]);
        // 100 ms per 1000 ms (+50 guard): the third 40 ms packet waits for the window.
        assert!(sent[2].1 >= 1050, "{sent:?}");
    }

    /// Largest airtime overlapping any window of `w` ms.
    fn worst_window(txs: &[(u64, u64)], w: u64) -> u64 {
        let mut worst = 0;
        for &(s, _) in txs {
            for end in [s + w, s + 1] {
                let lo = end.saturating_sub(w);
                let sum: u64 = txs
                    .iter()
                    .map(|&(a, d)| (a + d).min(end).saturating_sub(a.max(lo)))
                    .sum();
                worst = worst.max(sum);
            }
        }
        worst
    }

    proptest! {
        #[test]
        fn prop_no_window_exceeds_the_budget(
            arrivals in proptest::collection::vec((0u64..3_000, 1u64..200, 0usize..5), 1..60),
            permille in 1u32..400,
            seed in any::<u64>(),
        ) {
            let window = 10_000;
            let b = budget(permille, window);
            let max_air = 200;
            let mut s = Scheduler::new(
                SchedulerConfig { slot_ms: 37, max_backoff_slots: 3, queue_limit: 1000 },
                DutyCycle::new(b, max_air),
                seed,
            );
            let mut now = 0;
            let mut txs = Vec::new();
            for (gap, air, p) in arrivals {
                let target = now + gap;
                while let Some(d) = s.next_deadline(now) {
                    if d > target { break; }
                    now = d;
                    if let Some(q) = s.poll(now) { txs.push((now, q.airtime_ms)); }
                }
                now = target;
                let air = air.min(b.allowance_ms().max(1));
                let _ = s.push(Queued { item: (), airtime_ms: air, priority: Priority::ALL[p] });
            }
            let mut guard = 0;
            while let Some(d) = s.next_deadline(now) {
                now = d;
                if let Some(q) = s.poll(now) { txs.push((now, q.airtime_ms)); }
                guard += 1;
                prop_assert!(guard < 100_000);
            }
            // Never two transmissions at once (half-duplex radio).
            for w in txs.windows(2) { prop_assert!(w[0].0 + w[0].1 <= w[1].0); }
            prop_assert!(worst_window(&txs, window) <= b.allowance_ms());
        }
    }
}
