//! Hybrid logical clock properties: monotonic whatever the physical clock does,
//! a received timestamp is beaten, and a remote too far ahead is refused.

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
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (-50_i64..100).prop_map(Event::Send),
        (
            -200_000_i64..200_000,
            prop_oneof![0..4_u32, Just(u32::MAX), Just(u32::MAX - 1), any::<u32>()],
            arb_peer()
        )
            .prop_map(|(o, l, p)| Event::Receive(o, l, p)),
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
    fn prop_hlc_is_monotonic_beats_received_and_refuses_drift(
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
                    let result = hlc.receive_at(&remote, now);
                    if remote.physical_ms > now.saturating_add(max_drift) {
                        let refused = matches!(result, Err(Error::ClockDrift { .. }));
                        prop_assert!(refused);
                        prop_assert_eq!(&hlc, &before);
                    } else {
                        let ts = result.unwrap();
                        prop_assert!(ts > before.last());
                        prop_assert!(ts > remote);
                        prop_assert!(ts.physical_ms >= now);
                        prop_assert_eq!(ts.peer, me);
                        // Without a carry, the physical part is the max of the three.
                        if ts.logical != 0 || ts.physical_ms == now {
                            prop_assert_eq!(
                                ts.physical_ms,
                                before.last().physical_ms.max(remote.physical_ms).max(now)
                            );
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
