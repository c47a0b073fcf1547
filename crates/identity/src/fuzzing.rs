//! Entry points of the cargo-fuzz targets (`fuzz/fuzz_targets/identity_*.rs`) and of their
//! regression replay under `cargo test`. Each takes arbitrary bytes, must not panic, and
//! asserts the properties that must hold for any input: whatever decodes re-encodes to
//! exactly the input, and nothing forged from bytes that do not hold a secret key is
//! ever accepted. A failed assertion is a finding.

use std::sync::Arc;

use crate::auth::{AuthInitiator, AuthResponder};
use crate::capability::{Action, Capability};
use crate::device_link::DeviceLinkDeclaration;
use crate::group::{GroupId, GroupKey, GroupShare};
use crate::noise::{FrameDecoder, Handshake, SessionConfig};
use crate::{AccessPolicy, Identity, backup, sealed};

fn local() -> Identity {
    Identity::from_secret_bytes(&[0x11; 32])
}

fn peer() -> Identity {
    Identity::from_secret_bytes(&[0x22; 32])
}

fn open() -> Arc<AccessPolicy> {
    Arc::new(AccessPolicy::Open)
}

/// Capability tokens: decode, round-trip, verify.
pub fn capability(data: &[u8]) {
    if let Ok(cap) = Capability::from_bytes(data) {
        assert_eq!(cap.to_bytes(), data, "capability does not round-trip");
        let _ = cap.verify(
            &cap.issuer().peer_id(),
            cap.audience(),
            cap.resource(),
            Action::Read,
            cap.not_before_ms(),
        );
    }
}

/// Device-link declarations: decode, round-trip, verify.
pub fn device_link(data: &[u8]) {
    if let Ok(decl) = DeviceLinkDeclaration::from_bytes(data) {
        let again = decl.to_bytes();
        assert!(
            again.as_deref().ok() == Some(data),
            "declaration does not round-trip"
        );
        let _ = decl.verify();
    }
}

/// Identity backups: `params_of` and `import` never panic, and nothing forged opens
/// under a passphrase the input does not hold. Backups that name costs above 64 KiB
/// and 2 passes are only parsed, so one input cannot stall the fuzzer.
pub fn backup(data: &[u8]) {
    let Ok(params) = backup::params_of(data) else {
        assert!(backup::import(data, b"fuzzing passphrase").is_err());
        return;
    };
    if params.m_cost_kib <= 64 && params.t_cost <= 2 && params.p_cost <= 2 {
        assert!(
            backup::import(data, b"fuzzing passphrase").is_err(),
            "a backup forged without the passphrase opened"
        );
    }
}

/// Sealed boxes, signed sealed boxes, group shares and group ciphertexts.
pub fn sealed(data: &[u8]) {
    let me = local();
    assert!(
        sealed::open(&me, data).is_err(),
        "a sealed box forged without the key opened"
    );
    assert!(sealed::open_signed(&me, data).is_err());
    if let Ok(share) = GroupShare::from_bytes(data) {
        assert_eq!(share.to_bytes(), data, "group share does not round-trip");
        let _ = GroupKey::recover(&[share.clone(), share]);
    }
    // A group key the fuzzer does not know: nothing may decrypt.
    if let Ok((key, _)) = GroupKey::deal(GroupId([0; 16]), 0, &[*me.public_key()], None) {
        assert!(
            key.decrypt(data).is_err(),
            "group data forged without the key"
        );
        assert!(
            key.decrypt_bound(data, b"context").is_err(),
            "bound group data forged without the key"
        );
    }
    if let Ok(key) = GroupKey::from_secret_bytes(data) {
        assert_eq!(
            &key.to_secret_bytes()[..],
            data,
            "group key does not round-trip"
        );
    }
    assert!(
        GroupKey::open_sealed(&me, data).is_err(),
        "a sealed group key forged without the recipient's key opened"
    );
    if let Ok(epoch) = crate::key_epoch::KeyEpoch::from_bytes(data) {
        assert_eq!(epoch.to_bytes(), data, "key epoch does not round-trip");
        assert!(
            epoch.open_key(&me).is_err(),
            "a key epoch forged for us opened"
        );
    }
    if crate::group::ciphertext_key(data).is_ok() {
        assert!(data.len() >= crate::group::DATA_OVERHEAD);
    }
}

/// Handshake and session decoders; the first byte picks the state that reads the rest.
pub fn handshake(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (me, them) = (local(), peer());
    let config = if selector & 0x80 == 0 {
        SessionConfig::default()
    } else {
        SessionConfig::datagram()
    };
    match selector % 8 {
        0 => {
            if let Ok(mut r) = Handshake::xx_responder(me, open(), config)
                && r.read_message(rest).is_ok()
            {
                let _ = r.write_message();
            }
        }
        1 => {
            if let Ok(mut r) = Handshake::ik_responder(me, open(), config) {
                assert!(
                    r.read_message(rest).is_err(),
                    "forged IK first message accepted"
                );
            }
        }
        2 | 3 => {
            let i = if selector % 8 == 2 {
                Handshake::xx_initiator(me, open(), config)
            } else {
                Handshake::ik_initiator(me, them.public_key(), open(), config)
            };
            if let Ok(mut i) = i
                && i.write_message().is_ok()
            {
                assert!(
                    i.read_message(rest).is_err(),
                    "forged second handshake message accepted"
                );
            }
        }
        4 => {
            if let Ok(mut r) = AuthResponder::new(me, open(), b"")
                && r.on_hello(rest).is_ok()
            {
                assert!(r.on_response(rest).is_err());
            }
        }
        5 => {
            if let Ok((mut i, _)) = AuthInitiator::start(me, open(), b"")
                && i.on_challenge(rest).is_ok()
            {
                assert!(i.on_confirm(rest).is_err(), "forged auth confirm accepted");
            }
        }
        6 => {
            if let Some((mut a, mut b)) = session_pair(me, them, config) {
                assert!(
                    b.decrypt(rest).is_err(),
                    "forged transport message accepted"
                );
                // The other direction is unaffected (in ordered mode the failure closed `b`'s
                // receive side, as it must).
                if let Ok(m) = b.encrypt(rest) {
                    assert_eq!(a.decrypt(&m).ok().as_deref(), Some(rest));
                }
            }
        }
        _ => {
            let mut frames = FrameDecoder::new();
            if frames.push(rest).is_ok() {
                while frames.next_frame().is_some() {}
            }
        }
    }
}

fn session_pair(
    a: Identity,
    b: Identity,
    config: SessionConfig,
) -> Option<(crate::noise::Session, crate::noise::Session)> {
    let mut i = Handshake::xx_initiator(a, open(), config).ok()?;
    let mut r = Handshake::xx_responder(b, open(), config).ok()?;
    while !(i.is_finished() && r.is_finished()) {
        let (from, to) = if i.wants_write() {
            (&mut i, &mut r)
        } else {
            (&mut r, &mut i)
        };
        let m = from.write_message().ok()?;
        to.read_message(&m).ok()?;
    }
    Some((i.into_session().ok()?, r.into_session().ok()?))
}
