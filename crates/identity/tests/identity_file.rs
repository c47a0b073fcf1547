//! The identity key file: atomic 0600 save, load, and refusal of unsafe or damaged files.
#![allow(clippy::unwrap_used)]

use std::fs;

use ecomesh_identity::{Error, Identity, KEY_FILE_LEN};

#[test]
fn save_load_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    let id = Identity::generate().unwrap();
    id.save(&path).unwrap();
    let loaded = Identity::load(&path).unwrap();
    assert_eq!(loaded.peer_id(), id.peer_id());
    assert_eq!(fs::metadata(&path).unwrap().len(), KEY_FILE_LEN);
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // Saving again replaces atomically.
    let other = Identity::generate().unwrap();
    other.save(&path).unwrap();
    assert_eq!(Identity::load(&path).unwrap().peer_id(), other.peer_id());
}

#[test]
fn load_or_generate_creates_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub-id.key");
    let a = Identity::load_or_generate(&path).unwrap();
    let b = Identity::load_or_generate(&path).unwrap();
    assert_eq!(a.peer_id(), b.peer_id());
}

#[cfg(unix)]
#[test]
fn file_is_created_0600_and_wider_modes_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    Identity::generate().unwrap().save(&path).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    for mode in [0o644, 0o640, 0o604, 0o700, 0o660, 0o666, 0o601] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        match Identity::load(&path) {
            Err(e @ Error::KeyFilePermissions { .. }) => {
                let text = e.to_string();
                assert!(text.contains(path.to_str().unwrap()), "{text}");
                assert!(text.contains("chmod 600"), "{text}");
                assert!(text.contains(&format!("{mode:04o}")), "{text}");
            }
            other => panic!("mode {mode:o}: {other:?}"),
        }
    }
    // Owner read-only is fine.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    Identity::load(&path).unwrap();
}

#[cfg(unix)]
#[test]
fn wrong_length_and_corrupt_content_are_refused() {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .unwrap();
        std::io::Write::write_all(&mut f, bytes).unwrap();
        p
    };
    let good = dir.path().join("good.key");
    Identity::generate().unwrap().save(&good).unwrap();
    let bytes = fs::read(&good).unwrap();

    for (name, content) in [
        ("empty", Vec::new()),
        ("short", bytes[..40].to_vec()),
        ("long", [bytes.clone(), vec![0]].concat()),
        ("raw-seed", bytes[8..40].to_vec()),
    ] {
        let p = write(name, &content);
        match Identity::load(&p) {
            Err(e @ Error::KeyFileLength { .. }) => {
                assert!(e.to_string().contains(p.to_str().unwrap()));
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    let mut bad_magic = bytes.clone();
    bad_magic[0] ^= 1;
    let mut bad_pub = bytes.clone();
    bad_pub[50] ^= 1;
    let mut bad_seed = bytes;
    bad_seed[10] ^= 1;
    for (name, content) in [("magic", bad_magic), ("pub", bad_pub), ("seed", bad_seed)] {
        let p = write(name, &content);
        assert!(
            matches!(Identity::load(&p), Err(Error::KeyFileInvalid { .. })),
            "{name}"
        );
    }
    // A directory and a missing file are typed errors too.
    assert!(Identity::load(dir.path()).is_err());
    assert!(matches!(
        Identity::load(&dir.path().join("missing")),
        Err(Error::Io { .. })
    ));
}
