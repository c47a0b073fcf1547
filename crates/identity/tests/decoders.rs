//! Every decoder of the crate returns a typed error on truncated or garbage input and
//! never panics.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::identity;
use ecomesh_identity::auth::{AuthInitiator, AuthResponder};
use ecomesh_identity::capability::{Action, Actions, Capability};
use ecomesh_identity::device_link::DeviceLinkDeclaration;
use ecomesh_identity::group::{GroupKey, GroupShare};
use ecomesh_identity::noise::{FrameDecoder, Handshake, SessionConfig};
use ecomesh_identity::{AccessPolicy, Error, sealed};
use proptest::prelude::*;

fn assert_typed(res: Result<impl std::fmt::Debug, Error>) {
    let err = res.unwrap_err();
    // Display works and says something.
    assert!(!err.to_string().is_empty());
}

#[test]
fn every_prefix_of_valid_encodings_is_a_typed_error() {
    let owner = identity(1);
    let bob = identity(2);
    let cap = Capability::grant(
        &owner,
        bob.peer_id(),
        "r",
        Actions::new([Action::Read]).unwrap(),
        0,
        9,
    )
    .unwrap()
    .to_bytes();
    let mut decl =
        DeviceLinkDeclaration::new(&[*owner.public_key(), *bob.public_key()], "l", 1).unwrap();
    decl.sign(&owner).unwrap();
    decl.sign(&bob).unwrap();
    let decl = decl.to_bytes().unwrap();
    let boxed = sealed::seal(bob.public_key(), b"hello").unwrap();
    let signed_box = sealed::seal_signed(&owner, bob.public_key(), b"hello").unwrap();
    let (key, dist) = GroupKey::create(&[*owner.public_key(), *bob.public_key()], None).unwrap();
    let share = GroupShare::open(&owner, &dist.envelopes[0].1)
        .unwrap()
        .to_bytes();
    let data = key.encrypt(b"d").unwrap();

    for cut in 0..cap.len() {
        assert_typed(Capability::from_bytes(&cap[..cut]));
    }
    for cut in 0..decl.len() {
        assert_typed(DeviceLinkDeclaration::from_bytes(&decl[..cut]));
    }
    for cut in 0..boxed.len() {
        assert_typed(sealed::open(&bob, &boxed[..cut]));
    }
    for cut in 0..signed_box.len() {
        assert_typed(sealed::open_signed(&bob, &signed_box[..cut]));
    }
    for cut in 0..share.len() {
        assert_typed(GroupShare::from_bytes(&share[..cut]));
    }
    for cut in 0..data.len() {
        assert_typed(key.decrypt(&data[..cut]));
    }
    // Trailing bytes are refused as well.
    assert_typed(Capability::from_bytes(&[cap.clone(), vec![0]].concat()));
    assert_typed(DeviceLinkDeclaration::from_bytes(
        &[decl.clone(), vec![0]].concat(),
    ));
    assert_typed(GroupShare::from_bytes(&[share, vec![0]].concat()));
}

#[test]
fn auth_messages_of_wrong_length_or_kind() {
    let (a, b) = (identity(1), identity(2));
    let open = Arc::new(AccessPolicy::Open);
    let (_, hello) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
    for cut in 0..hello.len() {
        let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
        assert_typed(r.on_hello(&hello[..cut]));
    }
    let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
    assert_typed(r.on_hello(&[hello.clone(), vec![0]].concat()));
    let mut r = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
    let challenge = r.on_hello(&hello).unwrap();
    // A challenge where a hello is expected, and the reverse.
    let mut r2 = AuthResponder::new(b.clone(), open.clone(), b"").unwrap();
    assert_typed(r2.on_hello(&challenge));
    let (mut i, _) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
    assert_typed(i.on_challenge(&hello));
    for cut in 0..challenge.len() {
        let (mut i, _) = AuthInitiator::start(a.clone(), open.clone(), b"").unwrap();
        assert_typed(i.on_challenge(&challenge[..cut]));
    }
    assert_typed(AuthInitiator::start(a, open, &[0; 5000]).map(|_| ()));
}

proptest! {
    #[test]
    fn prop_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let me = identity(2);
        let open = Arc::new(AccessPolicy::Open);
        let _ = Capability::from_bytes(&bytes);
        let _ = DeviceLinkDeclaration::from_bytes(&bytes);
        let _ = GroupShare::from_bytes(&bytes);
        let _ = sealed::open(&me, &bytes);
        let _ = sealed::open_signed(&me, &bytes);
        let mut r = AuthResponder::new(me.clone(), open.clone(), b"").unwrap();
        let _ = r.on_hello(&bytes);
        let (mut i, _) = AuthInitiator::start(identity(1), open.clone(), b"").unwrap();
        let _ = i.on_challenge(&bytes);
        let mut hs = Handshake::ik_responder(me.clone(), open.clone(), SessionConfig::default()).unwrap();
        let _ = hs.read_message(&bytes);
        let mut hs = Handshake::xx_responder(me, open, SessionConfig::default()).unwrap();
        let _ = hs.read_message(&bytes);
        let mut fd = FrameDecoder::new();
        fd.push(&bytes).unwrap();
        while fd.next_frame().is_some() {}
    }

    #[test]
    fn prop_garbage_with_valid_header_never_panics(kind in prop::sample::select(vec![0xC1_u8, 0xD1, 0x67, 0x6D]), bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut input = vec![kind, 1];
        input.extend_from_slice(&bytes);
        let _ = Capability::from_bytes(&input);
        let _ = DeviceLinkDeclaration::from_bytes(&input);
        let _ = GroupShare::from_bytes(&input);
    }
}
