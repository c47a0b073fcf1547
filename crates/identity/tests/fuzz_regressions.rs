//! Replays every input under `tests/fuzz_regressions/<target>/` (crashes found by the
//! cargo-fuzz targets in `fuzz/`, plus seeds) through the target's checks.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use ecomesh_identity::fuzzing;

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().is_some_and(|f| f != ".gitkeep") {
            check(&fs::read(&path).unwrap());
            n += 1;
        }
    }
    n
}

#[test]
fn replay_fuzz_regressions() {
    let total = replay("identity_capability", fuzzing::capability)
        + replay("identity_device_link", fuzzing::device_link)
        + replay("identity_sealed", fuzzing::sealed)
        + replay("identity_handshake", fuzzing::handshake)
        + replay("identity_backup", fuzzing::backup);
    assert!(total > 0, "no regression inputs found");
}

#[test]
fn fuzz_checks_accept_valid_inputs() {
    // The entry points must pass on genuine encodings (the round-trip branch runs).
    use ecomesh_identity::capability::{Action, Actions, Capability};
    use ecomesh_identity::device_link::DeviceLinkDeclaration;
    let a = ecomesh_identity::Identity::from_secret_bytes(&[5; 32]);
    let cap = Capability::grant(
        &a,
        a.peer_id(),
        "r",
        Actions::new([Action::Read]).unwrap(),
        0,
        1,
    )
    .unwrap();
    fuzzing::capability(&cap.to_bytes());
    let mut d = DeviceLinkDeclaration::new(&[*a.public_key()], "", 0).unwrap();
    d.sign(&a).unwrap();
    fuzzing::device_link(&d.to_bytes().unwrap());
    for selector in 0..=255_u8 {
        fuzzing::handshake(&[selector, 1, 2, 3]);
    }
    fuzzing::sealed(&[1; 100]);
    let backup = ecomesh_identity::backup::export(
        &a,
        b"the real passphrase",
        ecomesh_identity::backup::BackupParams::INSECURE_FOR_TESTS,
    )
    .unwrap();
    fuzzing::backup(&backup);
}
