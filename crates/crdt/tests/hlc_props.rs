//! Hybrid logical clock properties: monotonic whatever the physical clock does,
//! a received timestamp is beaten (up to the drift bound), a remote however far
//! ahead never fails nor drags the clock past the bound, and a write after a
//! far-future floor is ordered after it.

#![allow(clippy::unwrap_used)]

mod common;

use common::{arb_peer, peers};
use ecomesh_crdt::{Error, Hlc};
use ecomesh_types::HlcTimestamp;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Event {
    /// Move the physical clock (may go backwards), then timestamp a local event.
    Send(i64),
    /// Receive a remote timestamp at this physical offset from local time.
    Receive(i64, u32, ecomesh_types::PeerId),
    /// A local event after a floor at this physical offset from local time.
    SendAfter(i64, u32, ecomesh_types::PeerId),
}

/// Clock offsets a device may have: a few ms to a day, either way.
fn arb_skew() -> impl Strategy<Value = i64> {
    prop_oneof![
        -200_000_i64..200_000,
        Just(5 * 60_000),
        Just(-5 * 60_000),
        Just(2 * 3_600_000),
        Just(-2 * 3_600_000),
        Just(86_400_000),
        Just(-86_400_000),
        any::<i64>(),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (-50_i64..100).prop_map(Event::Send),
        (
            arb_skew(),
            prop_oneof![0..4_u32, Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()],
            arb_peer()
        )
            .prop_map(|(o, l, p)| Event::Receive(o, l, p)),
        (arb_skew(), prop_oneof![0..4_u32, any::<u32>()], arb_peer())
            .prop_map(|(o, l, p)| Event::SendAfter(o, l, p)),
        (
            prop_oneof![Just(-1_i64), Just(0), Just(1), -3_i64..3],
            prop_oneof![Just(u32::MAX), any::<u32>()],
            arb_peer()
        )
            .prop_map(|(o, l, p)| Event::Receive(o, l, p)),
    ]
}

fn offset(now: u64, by: i64) -> u64 {
    if by >= 0 {
        now.saturating_add(by.unsigned_abs())
    } else {
        now.saturating_sub(by.unsigned_abs())
    }
}

proptest! {
    #[test]
    fn prop_hlc_is_monotonic_beats_received_and_clamps_drift(
        start in 0..10_000_000_u64,
        max_drift in prop_oneof![Just(Hlc::DEFAULT_MAX_DRIFT_MS), 0..150_000_u64],
        events in proptest::collection::vec(arb_event(), 1..60),
    ) {
        let me = peers()[0];
        let mut hlc = Hlc::new(me).with_max_drift(max_drift);
        let mut now = start;
        for event in events {
            let before = hlc.clone();
            match event {
                Event::Send(dt) => {
                    now = offset(now, dt);
                    let ts = hlc.send_at(now).unwrap();
                    prop_assert!(ts > before.last());
                    prop_assert!(ts.physical_ms >= now);
                    prop_assert_eq!(ts.peer, me);
                    prop_assert_eq!(hlc.last(), ts);
                }
                Event::Receive(dt, logical, peer) => {
                    let remote = HlcTimestamp::new(offset(now, dt), logical, peer);
                    let bound = now.saturating_add(max_drift);
                    // Never refused, whatever the remote's clock says.
                    let ts = hlc.receive_at(&remote, now).unwrap();
                    prop_assert!(ts > before.last());
                    prop_assert!(ts.physical_ms >= now);
                    prop_assert_eq!(ts.peer, me);
                    prop_assert_eq!(hlc.last(), ts);
                    if remote.physical_ms <= bound {
                        prop_assert!(ts > remote);
                        // Without a carry, the physical part is the max of the three.
                        if ts.logical != 0 || ts.physical_ms == now {
                            prop_assert_eq!(
                                ts.physical_ms,
                                before.last().physical_ms.max(remote.physical_ms).max(now)
                            );
                        }
                    } else {
                        // Not dragged past the bound (a carry adds at most 1 ms).
                        let limit = before.last().physical_ms.max(bound);
                        prop_assert!(ts.physical_ms <= limit.saturating_add(1));
                    }
                }
                Event::SendAfter(dt, logical, peer) => {
                    let floor = HlcTimestamp::new(offset(now, dt), logical, peer);
                    let bound = now.saturating_add(max_drift);
                    match hlc.send_after_at(Some(&floor), now) {
                        Ok(ts) => {
                            prop_assert!(ts > floor);
                            prop_assert!(ts > before.last());
                            prop_assert!(ts.physical_ms >= now);
                            prop_assert_eq!(ts.peer, me);
                            // The clock never goes past the bound because of a floor.
                            let limit = before.last().physical_ms.max(bound);
                            prop_assert!(hlc.last().physical_ms <= limit.saturating_add(1));
                            prop_assert!(hlc.last() > before.last());
                        }
                        Err(e) => {
                            // Only a floor at the very end of the range has no successor.
                            prop_assert_eq!(e, Error::ClockOverflow);
                            prop_assert_eq!(floor.physical_ms, u64::MAX);
                            prop_assert_eq!(&hlc, &before);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn prop_hlc_orders_messages_causally(
        clocks in proptest::collection::vec((0..3_usize, 0..3_usize, -20_i64..20), 1..40),
    ) {
        // Three peers with skewed clocks pass messages; every receipt is later
        // than the send it saw, and each peer's timestamps only grow.
        let ps = peers();
        let mut hlcs: Vec<Hlc> = (0..3).map(|i| Hlc::new(ps[i])).collect();
        let mut now = [1_000_u64, 1_010, 990];
        let mut last = [None::<HlcTimestamp>; 3];
        for (from, to, dt) in clocks {
            now[from] = offset(now[from], dt);
            let sent = hlcs[from].send_at(now[from]).unwrap();
            prop_assert!(Some(sent) > last[from]);
            last[from] = Some(sent);
            if from != to {
                let got = hlcs[to].receive_at(&sent, now[to]).unwrap();
                prop_assert!(got > sent);
                prop_assert!(Some(got) > last[to]);
                last[to] = Some(got);
            }
        }
    }
}
