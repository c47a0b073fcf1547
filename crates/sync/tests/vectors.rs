//! Test vectors pinning the link code (`link/code.rs`): built here from fixed
//! inputs, compared with `tests/vectors/link_code.txt`, and the committed text
//! parsed back to the input. `UPDATE_VECTORS=1 cargo test -p ecomesh-sync --test
//! vectors` rewrites the file after a deliberate change.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;

use ecomesh_sync::{LinkCode, SECRET_LEN};
use ecomesh_types::PeerId;

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

#[test]
fn link_code() {
    let secret: [u8; SECRET_LEN] = std::array::from_fn(|i| i as u8 + 1);
    let issuer = PeerId::from_digest([0x42; 32]);
    let cases = [
        ("no-address", None),
        ("ipv4", Some("192.168.1.20:7733".parse().unwrap())),
        ("ipv6", Some("[fe80::1]:7733".parse().unwrap())),
    ];
    let mut text = String::from(
        "# link_code: a device-link code (ecomesh-sync link/code.rs), secret 01..0a, issuer [0x42; 32]\n",
    );
    for (name, address) in cases {
        let code = LinkCode::new(secret, &issuer, address);
        let shown = code.to_string();
        assert_eq!(shown.parse::<LinkCode>().unwrap(), code);
        assert_eq!(LinkCode::from_bytes(&code.to_bytes()).unwrap(), code);
        let _ = writeln!(
            text,
            "name: {name}\ninput: address {address:?}\nhex: {}\ntext: {shown}",
            hex(&code.to_bytes())
        );
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/link_code.txt");
    if std::env::var_os("UPDATE_VECTORS").is_some() {
        std::fs::write(path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap();
    assert_eq!(committed, text, "the link code format changed");
    for line in committed.lines().filter_map(|l| l.strip_prefix("text: ")) {
        let code: LinkCode = line.parse().unwrap();
        assert_eq!(code.secret(), &secret);
        assert!(code.may_be_issued_by(&issuer));
    }
}
