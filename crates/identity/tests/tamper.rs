//! A bit flip anywhere in a signed message, sealed box, capability token, device-link
//! declaration, group ciphertext or share, auth message or Noise handshake message makes
//! it fail: every bit position of small inputs (including every handshake message, each
//! case a whole handshake), plus proptest (`prop_*`) over random bit positions of larger
//! ones.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::{drive, identity, open_handshake};
use ecomesh_identity::auth::{AuthInitiator, AuthResponder};
use ecomesh_identity::capability::{Action, Actions, Capability};
use ecomesh_identity::device_link::DeviceLinkDeclaration;
use ecomesh_identity::group::{GroupKey, GroupShare};
use ecomesh_identity::message::verify_message;
use ecomesh_identity::noise::Pattern;
use ecomesh_identity::{AccessPolicy, Identity, sealed};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Signature};
use proptest::prelude::*;

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v[bit / 8] ^= 1 << (bit % 8);
    v
}

fn every_bit(bytes: &[u8], mut fails: impl FnMut(&[u8]) -> bool) {
    for bit in 0..bytes.len() * 8 {
        assert!(
            fails(&flip(bytes, bit)),
            "flip of bit {bit} of {} went unnoticed",
            bytes.len() * 8
        );
    }
}

fn signed_message(id: &Identity) -> NetworkMessage {
    let mut m = NetworkMessage {
        id: MessageId::new_v4([9; 16]),
        message_type: "sync-event".into(),
        payload: b"0123456789abcdef".to_vec(),
        sender: id.peer_id(),
        recipient: None,
        timestamp_ms: 1_750_000_000_123,
        ttl_secs: 3600,
        hop_count: 0,
        max_hops: 10,
        signature: Signature::UNSIGNED,
    };
    id.sign_message(&mut m).unwrap();
    m
}

#[test]
fn signed_message_every_bit() {
    let id = identity(1);
    let m = signed_message(&id);
    let key = *id.public_key();
    verify_message(&m, &key).unwrap();
    every_bit(&m.signature.0, |s| {
        let mut t = m.clone();
        t.signature = Signature::from_slice(s).unwrap();
        verify_message(&t, &key).is_err()
    });
    every_bit(&m.payload, |p| {
        let mut t = m.clone();
        t.payload = p.to_vec();
        verify_message(&t, &key).is_err()
    });
    every_bit(m.sender.as_bytes(), |s| {
        let mut t = m.clone();
        t.sender = PeerId::from_slice(s).unwrap();
        verify_message(&t, &key).is_err()
    });
    every_bit(&m.timestamp_ms.to_be_bytes(), |s| {
        let mut t = m.clone();
        t.timestamp_ms = u64::from_be_bytes(s.try_into().unwrap());
        verify_message(&t, &key).is_err()
    });
    every_bit(m.message_type.as_bytes(), |s| {
        match String::from_utf8(s.to_vec()) {
            Ok(ty) => {
                let mut t = m.clone();
                t.message_type = ty;
                verify_message(&t, &key).is_err()
            }
            Err(_) => true, // not representable as a message type at all
        }
    });
}

#[test]
fn sealed_box_every_bit() {
    let bob = identity(2);
    let boxed = sealed::seal(bob.public_key(), b"meet at noon").unwrap();
    assert_eq!(sealed::open(&bob, &boxed).unwrap(), b"meet at noon");
    every_bit(&boxed, |b| sealed::open(&bob, b).is_err());
}

#[test]
fn capability_every_bit() {
    let owner = identity(1);
    let bob = identity(2);
    let cap = Capability::grant(
        &owner,
        bob.peer_id(),
        "doc:7",
        Actions::new([Action::Read]).unwrap(),
        10,
        20,
    )
    .unwrap()
    .to_bytes();
    let check = |b: &[u8]| {
        Capability::from_bytes(b)
            .and_then(|c| c.verify(&owner.peer_id(), &bob.peer_id(), "doc:7", Action::Read, 15))
    };
    check(&cap).unwrap();
    every_bit(&cap, |b| check(b).is_err());
}

fn declaration(devices: &[Identity], label: &str) -> Vec<u8> {
    let keys: Vec<_> = devices.iter().map(|d| *d.public_key()).collect();
    let mut d = DeviceLinkDeclaration::new(&keys, label, 5).unwrap();
    for dev in devices {
        d.sign(dev).unwrap();
    }
    d.to_bytes().unwrap()
}

fn check_declaration(bytes: &[u8]) -> Result<Vec<PeerId>, ecomesh_identity::Error> {
    DeviceLinkDeclaration::from_bytes(bytes).and_then(|d| d.verify())
}

#[test]
fn device_link_every_bit() {
    // One device keeps the every-bit loop short; `prop_device_link_bit_flip_fails` covers
    // declarations of several devices.
    let bytes = declaration(&[identity(1)], "u:1");
    check_declaration(&bytes).unwrap();
    every_bit(&bytes, |x| check_declaration(x).is_err());
}

#[test]
fn group_data_and_envelope_every_bit() {
    let members: Vec<Identity> = (1..=3).map(identity).collect();
    let keys: Vec<_> = members.iter().map(|m| *m.public_key()).collect();
    let (key, dist) = GroupKey::create(&keys, None).unwrap();
    let ct = key.encrypt(b"budget: 42").unwrap();
    assert_eq!(key.decrypt(&ct).unwrap(), b"budget: 42");
    every_bit(&ct, |c| key.decrypt(c).is_err());
    let envelope = &dist.envelopes[0].1;
    GroupShare::open(&members[0], envelope).unwrap();
    every_bit(envelope, |e| GroupShare::open(&members[0], e).is_err());
}

#[test]
fn auth_messages_every_bit() {
    let (a, b) = (identity(1), identity(2));
    let open = Arc::new(AccessPolicy::Open);
    // Record one honest run.
    let (mut i, hello) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
    let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
    let challenge = r.on_hello(&hello).unwrap();
    let response = i.on_challenge(&challenge).unwrap();
    let (confirm, _) = r.on_response(&response).unwrap();
    i.on_confirm(&confirm).unwrap();

    // Hello: a flip changes the claimed key; the responder then refuses or the signature
    // of the real initiator does not match it.
    every_bit(&hello, |h| {
        let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
        let Ok(ch) = r.on_hello(h) else { return true };
        let (mut i, _) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
        let resp = i.on_challenge(&ch).unwrap();
        r.on_response(&resp).is_err()
    });
    // Challenge: the initiator signs the altered nonce or key; the exchange fails.
    every_bit(&challenge, |c| {
        let (mut i, hello) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
        let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
        let real = r.on_hello(&hello).unwrap();
        // Splice the flipped key/nonce bits onto this session's challenge.
        let diff: Vec<u8> = challenge.iter().zip(c).map(|(x, y)| x ^ y).collect();
        let altered: Vec<u8> = real.iter().zip(&diff).map(|(x, d)| x ^ d).collect();
        let Ok(resp) = i.on_challenge(&altered) else {
            return true;
        };
        let Ok((conf, _)) = r.on_response(&resp) else {
            return true;
        };
        i.on_confirm(&conf).is_err()
    });
    // Response and Confirm: flipped copies of this session's messages fail.
    let fresh = || {
        let (mut i, hello) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
        let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
        let resp = i.on_challenge(&r.on_hello(&hello).unwrap()).unwrap();
        (i, r, resp)
    };
    let (_, _, resp) = fresh();
    for bit in 0..resp.len() * 8 {
        let (_, mut r, resp) = fresh();
        assert!(
            r.on_response(&flip(&resp, bit)).is_err(),
            "response bit {bit}"
        );
    }
    for bit in 0..confirm.len() * 8 {
        let (mut i, mut r, resp) = fresh();
        let (conf, _) = r.on_response(&resp).unwrap();
        assert!(
            i.on_confirm(&flip(&conf, bit)).is_err(),
            "confirm bit {bit}"
        );
    }
}

fn handshake_with_flip(pattern: Pattern, msg_index: usize, bit: usize) -> bool {
    let (a, b) = (identity(1), identity(2));
    let (i, r) = open_handshake(pattern, &a, &b);
    let mut flipped = false;
    let (_, result) = drive(i, r, |idx, msg| {
        if idx == msg_index {
            let bit = bit % (msg.len() * 8);
            msg[bit / 8] ^= 1 << (bit % 8);
            flipped = true;
        }
    });
    assert!(flipped);
    result.is_err()
}

#[test]
fn handshake_messages_every_bit() {
    for (pattern, sizes) in [
        (Pattern::XX, [32_usize, 194, 162]),
        (Pattern::IK, [194, 146, 16]),
    ] {
        for (msg, size) in sizes.into_iter().enumerate() {
            for bit in 0..size * 8 {
                assert!(
                    handshake_with_flip(pattern, msg, bit),
                    "{pattern:?} message {msg} bit {bit}"
                );
            }
        }
    }
}

proptest! {
    #[test]
    fn prop_handshake_bit_flip_fails(ik in any::<bool>(), msg in 0_usize..3, bit in any::<usize>()) {
        let pattern = if ik { Pattern::IK } else { Pattern::XX };
        prop_assert!(handshake_with_flip(pattern, msg, bit));
    }

    #[test]
    fn prop_sealed_box_bit_flip_fails(pt in proptest::collection::vec(any::<u8>(), 0..2048), bit in any::<usize>(), signed in any::<bool>()) {
        let alice = identity(1);
        let bob = identity(2);
        if signed {
            let boxed = sealed::seal_signed(&alice, bob.public_key(), &pt).unwrap();
            let (who, got) = sealed::open_signed(&bob, &boxed).unwrap();
            prop_assert_eq!(who, *alice.public_key());
            prop_assert_eq!(&got, &pt);
            prop_assert!(sealed::open_signed(&bob, &flip(&boxed, bit % (boxed.len() * 8))).is_err());
        } else {
            let boxed = sealed::seal(bob.public_key(), &pt).unwrap();
            prop_assert_eq!(&sealed::open(&bob, &boxed).unwrap(), &pt);
            prop_assert!(sealed::open(&bob, &flip(&boxed, bit % (boxed.len() * 8))).is_err());
        }
    }

    #[test]
    fn prop_signed_message_payload_bit_flip_fails(payload in proptest::collection::vec(any::<u8>(), 1..4096), bit in any::<usize>()) {
        let id = identity(1);
        let mut m = signed_message(&id);
        m.payload = payload;
        id.sign_message(&mut m).unwrap();
        verify_message(&m, id.public_key()).unwrap();
        m.payload = flip(&m.payload, bit % (m.payload.len() * 8));
        prop_assert!(verify_message(&m, id.public_key()).is_err());
    }

    #[test]
    fn prop_capability_bit_flip_fails(resource in "[a-z:0-9]{0,200}", bit in any::<usize>()) {
        let owner = identity(1);
        let bob = identity(2);
        let cap = Capability::grant(&owner, bob.peer_id(), &resource, Actions::new([Action::Write]).unwrap(), 0, 100).unwrap().to_bytes();
        let flipped = flip(&cap, bit % (cap.len() * 8));
        let res = Capability::from_bytes(&flipped)
            .and_then(|c| c.verify(&owner.peer_id(), &bob.peer_id(), &resource, Action::Write, 50));
        prop_assert!(res.is_err());
    }

    #[test]
    fn prop_device_link_bit_flip_fails(n in 2_u8..4, label in "[a-z0-9:]{0,40}", bit in any::<usize>()) {
        let devices: Vec<Identity> = (1..=n).map(identity).collect();
        let bytes = declaration(&devices, &label);
        prop_assert_eq!(check_declaration(&bytes).unwrap().len(), usize::from(n));
        prop_assert!(check_declaration(&flip(&bytes, bit % (bytes.len() * 8))).is_err());
    }
}
