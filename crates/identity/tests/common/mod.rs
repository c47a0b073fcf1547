//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::sync::Arc;

use ecomesh_identity::noise::{Handshake, Pattern, Session, SessionConfig};
use ecomesh_identity::{AccessPolicy, Error, Identity};

pub fn identity(n: u8) -> Identity {
    Identity::from_secret_bytes(&[n; 32])
}

pub fn pair(
    pattern: Pattern,
    a: &Identity,
    b: &Identity,
    pa: AccessPolicy,
    pb: AccessPolicy,
    config: SessionConfig,
) -> Result<(Handshake, Handshake), Error> {
    let (pa, pb) = (Arc::new(pa), Arc::new(pb));
    Ok(match pattern {
        Pattern::XX => (
            Handshake::xx_initiator(a.clone(), pa, config)?,
            Handshake::xx_responder(b.clone(), pb, config)?,
        ),
        Pattern::IK => (
            Handshake::ik_initiator(a.clone(), b.public_key(), pa, config)?,
            Handshake::ik_responder(b.clone(), pb, config)?,
        ),
    })
}

/// Both sessions, or the error of the first failing step.
pub type Outcome = Result<(Session, Session), Error>;

/// Runs a handshake between two in-memory endpoints. `tamper(index, message)` may alter
/// each message in flight. Returns the messages sent and the error of the first failing
/// step, or both sessions.
pub fn drive(
    mut i: Handshake,
    mut r: Handshake,
    mut tamper: impl FnMut(usize, &mut Vec<u8>),
) -> (Vec<Vec<u8>>, Outcome) {
    let mut sent = Vec::new();
    while !(i.is_finished() && r.is_finished()) {
        let (from, to) = if i.wants_write() {
            (&mut i, &mut r)
        } else if r.wants_write() {
            (&mut r, &mut i)
        } else {
            return (sent, Err(Error::UnexpectedMessage("nobody wants to write")));
        };
        let mut msg = match from.write_message() {
            Ok(m) => m,
            Err(e) => return (sent, Err(e)),
        };
        tamper(sent.len(), &mut msg);
        sent.push(msg.clone());
        if let Err(e) = to.read_message(&msg) {
            return (sent, Err(e));
        }
    }
    let result = i
        .into_session()
        .and_then(|a| r.into_session().map(|b| (a, b)));
    (sent, result)
}

/// A handshake pair with the given policies and the default session config.
pub fn policed(
    pattern: Pattern,
    a: &Identity,
    b: &Identity,
    pa: AccessPolicy,
    pb: AccessPolicy,
) -> Result<(Handshake, Handshake), Error> {
    pair(pattern, a, b, pa, pb, SessionConfig::default())
}

/// A handshake pair with open policies and the default session config.
pub fn open_handshake(pattern: Pattern, a: &Identity, b: &Identity) -> (Handshake, Handshake) {
    policed(pattern, a, b, AccessPolicy::Open, AccessPolicy::Open).unwrap()
}

pub fn open_pair(pattern: Pattern, config: SessionConfig) -> (Session, Session) {
    let (a, b) = (identity(1), identity(2));
    let (i, r) = pair(
        pattern,
        &a,
        &b,
        AccessPolicy::Open,
        AccessPolicy::Open,
        config,
    )
    .unwrap();
    drive(i, r, |_, _| {}).1.unwrap()
}
