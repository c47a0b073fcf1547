//! The link code a person types (or scans as text) on the second device.
//!
//! ```text
//! bytes  = head (u8: version 1 << 4 | address kind: 0 none, 1 IPv4, 2 IPv6)
//!          || secret (10 bytes, 80 bits, fresh per code)
//!          || issuer (first 6 bytes of the issuing node's peer id)
//!          || address (IPv4: 4 + port u16 BE; IPv6: 16 + port; none: nothing)
//!          || check (first 2 bytes of BLAKE3("ecomesh link code v1" || everything before))
//! text   = Crockford base32 of bytes, upper case, in groups of 5 joined by '-'
//! ```
//!
//! 19 bytes (31 characters) without an address, 25 bytes (40 characters)
//! with an IPv4 one. The secret is the only part that must stay private:
//! whoever holds the code before it is used or expires can link. The issuer
//! prefix lets the accepting node pick the issuer among its peers (the issuer
//! then proves it holds the secret); the address, when given, is where the
//! accepting side dials first. The check catches typos before anything is
//! sent: a mistyped code is [`LinkError::InvalidCode`], not a refused one.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ecomesh_types::PeerId;

use super::LinkError;

/// Bytes of a code's one-time secret (80 bits).
pub const SECRET_LEN: usize = 10;
/// Bytes of the issuer's peer id a code carries.
pub const ISSUER_PREFIX_LEN: usize = 6;
const VERSION: u8 = 1;
const CHECK_LEN: usize = 2;
/// Longest code text accepted, separators included.
pub const MAX_CODE_TEXT: usize = 96;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A decoded link code: the one-time secret, who issued it and where it
/// may be reached.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode {
    secret: [u8; SECRET_LEN],
    issuer: [u8; ISSUER_PREFIX_LEN],
    address: Option<SocketAddr>,
}

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret is never logged.
        f.debug_struct("LinkCode")
            .field("issuer", &self.issuer)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl LinkCode {
    /// A code of `secret`, issued by `issuer`, reachable at `address`.
    pub fn new(secret: [u8; SECRET_LEN], issuer: &PeerId, address: Option<SocketAddr>) -> Self {
        let mut prefix = [0u8; ISSUER_PREFIX_LEN];
        prefix.copy_from_slice(&issuer.as_bytes()[..ISSUER_PREFIX_LEN]);
        LinkCode {
            secret,
            issuer: prefix,
            address,
        }
    }

    /// The one-time secret.
    pub fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// Where the issuer listens, when the code says.
    pub fn address(&self) -> Option<SocketAddr> {
        self.address
    }

    /// Whether `peer` could be the issuer (its id starts with the code's prefix).
    pub fn may_be_issued_by(&self, peer: &PeerId) -> bool {
        peer.as_bytes()[..ISSUER_PREFIX_LEN] == self.issuer
    }

    /// The code's bytes (see the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let kind = match self.address {
            None => 0,
            Some(SocketAddr::V4(_)) => 1,
            Some(SocketAddr::V6(_)) => 2,
        };
        let mut out = Vec::with_capacity(1 + SECRET_LEN + ISSUER_PREFIX_LEN + 18 + CHECK_LEN);
        out.push(VERSION << 4 | kind);
        out.extend_from_slice(&self.secret);
        out.extend_from_slice(&self.issuer);
        match self.address {
            None => {}
            Some(SocketAddr::V4(a)) => out.extend_from_slice(&a.ip().octets()),
            Some(SocketAddr::V6(a)) => out.extend_from_slice(&a.ip().octets()),
        }
        if let Some(a) = self.address {
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        let check = check_of(&out);
        out.extend_from_slice(&check);
        out
    }

    /// Decodes a code's bytes; strict (version, length, check).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LinkError> {
        let bad = |why: &str| LinkError::InvalidCode(why.to_owned());
        let (&head, _) = bytes.split_first().ok_or_else(|| bad("empty"))?;
        if head >> 4 != VERSION {
            return Err(bad("unknown code version"));
        }
        let addr_len = match head & 0x0f {
            0 => 0,
            1 => 6,
            2 => 18,
            _ => return Err(bad("unknown address kind")),
        };
        let want = 1 + SECRET_LEN + ISSUER_PREFIX_LEN + addr_len + CHECK_LEN;
        if bytes.len() != want {
            return Err(bad("wrong length"));
        }
        let (body, check) = bytes.split_at(want - CHECK_LEN);
        if check_of(body) != check {
            return Err(bad("check digits do not match (a typo?)"));
        }
        let mut secret = [0u8; SECRET_LEN];
        secret.copy_from_slice(&body[1..=SECRET_LEN]);
        let mut issuer = [0u8; ISSUER_PREFIX_LEN];
        issuer.copy_from_slice(&body[1 + SECRET_LEN..1 + SECRET_LEN + ISSUER_PREFIX_LEN]);
        let a = &body[1 + SECRET_LEN + ISSUER_PREFIX_LEN..];
        let address = match addr_len {
            6 => {
                let ip: [u8; 4] = a[..4].try_into().map_err(|_| bad("address"))?;
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(ip)),
                    u16::from_be_bytes([a[4], a[5]]),
                ))
            }
            18 => {
                let ip: [u8; 16] = a[..16].try_into().map_err(|_| bad("address"))?;
                Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(ip)),
                    u16::from_be_bytes([a[16], a[17]]),
                ))
            }
            _ => None,
        };
        Ok(LinkCode {
            secret,
            issuer,
            address,
        })
    }
}

impl fmt::Display for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = encode_base32(&self.to_bytes());
        let groups: Vec<&str> = text
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        f.write_str(&groups.join("-"))
    }
}

impl FromStr for LinkCode {
    type Err = LinkError;

    /// Parses a typed code: case, dashes and spaces do not matter, and the
    /// letters O, I and L read as 0, 1 and 1 (Crockford).
    fn from_str(s: &str) -> Result<Self, LinkError> {
        if s.len() > MAX_CODE_TEXT {
            return Err(LinkError::InvalidCode("too long".to_owned()));
        }
        LinkCode::from_bytes(&decode_base32(s)?)
    }
}

fn check_of(body: &[u8]) -> [u8; CHECK_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(b"ecomesh link code v1");
    h.update(body);
    let d = h.finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&d.as_bytes()[..CHECK_LEN]);
    out
}

fn encode_base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 8 / 5 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
    }
    out
}

fn decode_base32(s: &str) -> Result<Vec<u8>, LinkError> {
    let mut out = Vec::with_capacity(s.len() * 5 / 8 + 1);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.chars() {
        let v = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => 0,
            'I' | 'L' => 1,
            c => ALPHABET
                .iter()
                .position(|&a| char::from(a) == c)
                .ok_or_else(|| LinkError::InvalidCode(format!("{c:?} is not a code letter")))?
                as u32,
        };
        acc = (acc << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
        acc &= (1 << bits) - 1;
    }
    if acc != 0 {
        return Err(LinkError::InvalidCode("trailing bits".to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        PeerId::from_digest([7; 32])
    }

    #[test]
    fn round_trips_with_and_without_an_address() {
        for address in [
            None,
            Some("127.0.0.1:7733".parse().unwrap()),
            Some("[::1]:9".parse().unwrap()),
        ] {
            let code = LinkCode::new([0xA5; SECRET_LEN], &peer(), address);
            let text = code.to_string();
            assert_eq!(text.parse::<LinkCode>().unwrap(), code);
            assert_eq!(
                text.to_lowercase()
                    .replace('-', " ")
                    .parse::<LinkCode>()
                    .unwrap(),
                code
            );
            assert!(code.may_be_issued_by(&peer()));
            assert!(!code.may_be_issued_by(&PeerId::from_digest([8; 32])));
        }
        let short = LinkCode::new([1; SECRET_LEN], &peer(), None).to_string();
        assert_eq!(short.replace('-', "").len(), 31, "{short}");
        let v4 = LinkCode::new(
            [1; SECRET_LEN],
            &peer(),
            Some("10.0.0.1:7733".parse().unwrap()),
        );
        assert_eq!(v4.to_string().replace('-', "").len(), 40);
    }

    #[test]
    fn a_typo_is_caught_by_the_check() {
        let text = LinkCode::new([3; SECRET_LEN], &peer(), None).to_string();
        let mut typo: Vec<char> = text.chars().collect();
        typo[2] = if typo[2] == 'X' { 'Y' } else { 'X' };
        let typo: String = typo.into_iter().collect();
        assert!(matches!(
            typo.parse::<LinkCode>(),
            Err(LinkError::InvalidCode(_))
        ));
        assert!(matches!(
            "".parse::<LinkCode>(),
            Err(LinkError::InvalidCode(_))
        ));
        assert!(matches!(
            "U!".parse::<LinkCode>(),
            Err(LinkError::InvalidCode(_))
        ));
        assert!(matches!(
            "0".repeat(MAX_CODE_TEXT + 1).parse::<LinkCode>(),
            Err(LinkError::InvalidCode(_))
        ));
    }
}
