//! `ecomesh_hybrid_storage::PrimaryGate`: arbitrary tokens, Hellos and
//! Responses from devices never panic, and no token the gate did not issue
//! is accepted.
#![no_main]

use std::sync::Arc;

use ecomesh_hybrid_storage::PrimaryGate;
use ecomesh_identity::{AccessPolicy, Identity};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut gate = PrimaryGate::new(
        Identity::from_secret_bytes(&[7; 32]),
        Arc::new(AccessPolicy::Open),
    )
    .expect("randomness");
    let text = String::from_utf8_lossy(data);
    assert!(
        gate.check(&text, 0).is_err(),
        "accepted a token it never issued"
    );
    let (hello, response) = data.split_at(data.len() / 2);
    if let Ok((session, _challenge)) = gate.challenge(hello, 0) {
        assert!(
            gate.verify(session, response, 0).is_err(),
            "accepted an unsigned response"
        );
    }
});
