#![allow(clippy::unwrap_used)]

use ecomesh_types::{MessageId, Signature};

use super::*;

fn cfg() -> LinkConfig {
    LinkConfig {
        handshake_timeout_ms: 1000,
        keepalive_interval_ms: 500,
        keepalive_timeout_ms: 300,
        ..LinkConfig::default()
    }
}

fn msg(sender: PeerId, payload: Vec<u8>) -> NetworkMessage {
    NetworkMessage {
        id: MessageId([0x11; 16]),
        message_type: "t".into(),
        payload,
        sender,
        recipient: None,
        timestamp_ms: 5,
        ttl_secs: 60,
        hop_count: 0,
        max_hops: 10,
        signature: Signature::UNSIGNED,
    }
}

fn id(seed: u8) -> Identity {
    Identity::from_secret_bytes(&[seed; 32])
}

/// Moves fragments both ways until quiet; counts the fragments moved.
fn pump(a: &mut BleLink, b: &mut BleLink, now: u64) -> Result<usize, BleError> {
    let mut n = 0;
    loop {
        let mut moved = false;
        while let Some(f) = a.poll_transmit() {
            b.receive(&f, now)?;
            moved = true;
            n += 1;
        }
        while let Some(f) = b.poll_transmit() {
            a.receive(&f, now)?;
            moved = true;
            n += 1;
        }
        if !moved {
            return Ok(n);
        }
    }
}

fn open_pair(mtu: u16) -> (BleLink, BleLink) {
    let open = Arc::new(AccessPolicy::Open);
    let mut a = BleLink::initiator(id(1), open.clone(), None, cfg(), mtu, 0).unwrap();
    let mut b = BleLink::responder(id(2), open, cfg(), mtu, 0).unwrap();
    pump(&mut a, &mut b, 0).unwrap();
    (a, b)
}

#[test]
fn handshake_establishes_both_ends_with_proved_keys() {
    let (mut a, mut b) = open_pair(23);
    assert_eq!(
        a.poll_event(),
        Some(LinkEvent::Established {
            peer: id(2).peer_id(),
            key: *id(2).public_key()
        })
    );
    assert_eq!(
        b.poll_event(),
        Some(LinkEvent::Established {
            peer: id(1).peer_id(),
            key: *id(1).public_key()
        })
    );
}

#[test]
fn messages_cross_in_order_at_minimum_and_large_mtu() {
    for mtu in [23, 247, 517] {
        let (mut a, mut b) = open_pair(mtu);
        let _ = (a.poll_event(), b.poll_event());
        let sent: Vec<_> = [0usize, 1, 300, 5000, BLE_MAX_MESSAGE_SIZE - 400]
            .iter()
            .map(|&n| msg(id(1).peer_id(), vec![n as u8; n]))
            .collect();
        for m in &sent {
            a.send_message(m, Priority::Normal).unwrap();
            pump(&mut a, &mut b, 1).unwrap();
        }
        let got: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
        let want: Vec<_> = sent.into_iter().map(LinkEvent::Message).collect();
        assert_eq!(got, want, "mtu {mtu}");
    }
}

#[test]
fn bulk_and_oversize_are_refused_up_front() {
    let (mut a, _b) = open_pair(247);
    let m = msg(id(1).peer_id(), vec![1; 10]);
    assert!(matches!(
        a.send_message(&m, Priority::Bulk),
        Err(BleError::BulkRefused)
    ));
    let big = msg(id(1).peer_id(), vec![1; BLE_MAX_MESSAGE_SIZE]);
    assert!(matches!(
        a.send_message(&big, Priority::Normal),
        Err(BleError::TooLarge {
            max: BLE_MAX_MESSAGE_SIZE,
            ..
        })
    ));
    // Nothing was queued and the link still works.
    assert_eq!(a.framer().queued_units(), 0);
    assert!(a.poll_transmit().is_none());
    a.send_message(&m, Priority::Critical).unwrap();
    assert!(matches!(
        BleError::BulkRefused.into_transport_error(),
        ecomesh_types::Error::Backend(_)
    ));
    assert!(matches!(
        BleError::TooLarge { size: 9, max: 8 }.into_transport_error(),
        ecomesh_types::Error::MessageTooLarge { size: 9, max: 8 }
    ));
}

#[test]
fn sending_before_the_handshake_is_refused() {
    let open = Arc::new(AccessPolicy::Open);
    let mut a = BleLink::initiator(id(1), open, None, cfg(), 23, 0).unwrap();
    assert!(matches!(
        a.send_message(&msg(id(1).peer_id(), vec![]), Priority::Normal),
        Err(BleError::NotEstablished)
    ));
}

#[test]
fn a_peer_that_never_finishes_the_handshake_times_out() {
    let open = Arc::new(AccessPolicy::Open);
    let mut b = BleLink::responder(id(2), open, cfg(), 23, 0).unwrap();
    assert_eq!(b.next_timeout(), 1000);
    b.handle_timeout(999).unwrap();
    assert!(matches!(
        b.handle_timeout(1000),
        Err(BleError::Timeout("handshake"))
    ));
    assert!(b.is_failed());
}

#[test]
fn keepalive_pings_a_quiet_peer_and_fails_a_silent_one() {
    let (mut a, mut b) = open_pair(23);
    assert_eq!(a.next_timeout(), 500);
    // Quiet for the interval: a PING goes out, its PONG keeps the link alive.
    a.handle_timeout(500).unwrap();
    assert!(a.framer().pending_fragments() > 0);
    assert!(pump(&mut a, &mut b, 510).unwrap() >= 2);
    assert_eq!(a.next_timeout(), 510 + 500);
    a.handle_timeout(1009).unwrap();
    assert!(a.poll_transmit().is_none());
    // Now the peer goes silent: PING at 1010, failure 300 ms later.
    a.handle_timeout(1010).unwrap();
    assert_eq!(a.next_timeout(), 1310);
    assert!(matches!(
        a.handle_timeout(1310),
        Err(BleError::Timeout("keepalive"))
    ));
}

#[test]
fn refused_peers_never_establish() {
    let block = Arc::new(AccessPolicy::block([id(2).peer_id()]));
    let open = Arc::new(AccessPolicy::Open);
    let mut a = BleLink::initiator(id(1), block, None, cfg(), 23, 0).unwrap();
    let mut b = BleLink::responder(id(2), open, cfg(), 23, 0).unwrap();
    assert!(pump(&mut a, &mut b, 0).is_err());
    assert!(!a.is_established());
    assert!(!matches!(
        a.poll_event(),
        Some(LinkEvent::Established { .. })
    ));
}

#[test]
fn garbage_after_the_handshake_kills_the_link_without_panicking() {
    let (_a, mut b) = open_pair(247);
    // A well-framed unit that is not a valid Noise message.
    let err = b.receive(&[crate::frag::FIRST, 0, 20, 1, 2, 3], 1);
    assert!(err.is_ok(), "partial unit is buffered");
    let mut junk = vec![crate::frag::CONT];
    junk.extend_from_slice(&[7; 17]);
    assert!(matches!(b.receive(&junk, 1), Err(BleError::Noise(_))));
    assert!(matches!(b.receive(&[1], 1), Err(BleError::Closed)));
}

#[test]
fn a_message_larger_than_the_receivers_limit_is_refused_by_the_sender() {
    let open = Arc::new(AccessPolicy::Open);
    let small = LinkConfig {
        max_message_size: 1000,
        ..cfg()
    };
    let mut a = BleLink::initiator(id(1), open.clone(), None, cfg(), 247, 0).unwrap();
    let mut b = BleLink::responder(id(2), open, small, 247, 0).unwrap();
    pump(&mut a, &mut b, 0).unwrap();
    assert_eq!(a.send_limit(), 1000);
    assert!(matches!(
        a.send_message(&msg(id(1).peer_id(), vec![0; 2000]), Priority::Normal),
        Err(BleError::TooLarge { max: 1000, .. })
    ));
}
