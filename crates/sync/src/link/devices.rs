//! The durable record of this node's own devices (`devices.bin`).
//!
//! ```text
//! file  = "EMDV" || version 1 || label len (u16 BE, <= 256) || label (UTF-8)
//!         || user key (32) || count (u16 BE, <= MAX_LINKS)
//!         || count x (u32 BE len (<= MAX_DECLARATION_LEN) || device-link declaration)
//! ```
//! Every declaration is verified when the file is read (all its devices
//! signed) and must name this node; the own devices are the other keys
//! the declarations name. The file is written atomically after every link.

use std::collections::BTreeMap;
use std::path::Path;

use ecomesh_identity::PublicKey;
use ecomesh_identity::device_link::{DeviceLinkDeclaration, MAX_DECLARATION_LEN};
use ecomesh_types::PeerId;

use super::proto::MAX_LABEL;

const MAGIC: &[u8; 4] = b"EMDV";
const VERSION: u8 = 1;
/// Most links (declarations) one node records.
pub const MAX_LINKS: usize = 64;

/// What the node knows of its user and own devices.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Devices {
    /// The user this node belongs to ("" until its first link).
    pub(crate) label: String,
    /// The secret every device of the user shares (zero until the first link).
    pub(crate) user_key: [u8; 32],
    /// Each link, in the order made.
    pub(crate) links: Vec<DeviceLinkDeclaration>,
}

impl Devices {
    /// Own devices (excluding `me`) with when each was first linked.
    pub(crate) fn own(&self, me: &PublicKey) -> BTreeMap<PeerId, (PublicKey, u64)> {
        let mut out = BTreeMap::new();
        for d in &self.links {
            for k in d.devices() {
                if k != me {
                    out.entry(k.peer_id()).or_insert((*k, d.issued_at_ms()));
                }
            }
        }
        out
    }

    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut w = Vec::new();
        w.extend_from_slice(MAGIC);
        w.push(VERSION);
        // Labels are at most MAX_LABEL bytes (checked where they are made).
        w.extend_from_slice(&(self.label.len() as u16).to_be_bytes());
        w.extend_from_slice(self.label.as_bytes());
        w.extend_from_slice(&self.user_key);
        // At most MAX_LINKS (checked before a link is added).
        w.extend_from_slice(&(self.links.len() as u16).to_be_bytes());
        for d in &self.links {
            // Only complete declarations are kept.
            let bytes = d.to_bytes().unwrap_or_default();
            w.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            w.extend_from_slice(&bytes);
        }
        w
    }

    /// Decodes and verifies a file; every declaration must name `me`.
    pub(crate) fn from_bytes(bytes: &[u8], me: &PublicKey) -> Result<Devices, String> {
        let max = 4 + 1 + 2 + MAX_LABEL + 32 + 2 + MAX_LINKS * (4 + MAX_DECLARATION_LEN);
        if bytes.len() > max {
            return Err(format!("{} bytes, more than {max}", bytes.len()));
        }
        let mut r = bytes;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if r.len() < n {
                return Err("truncated".to_owned());
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        if take(4)? != MAGIC || take(1)? != [VERSION] {
            return Err("not a devices file of version 1".to_owned());
        }
        let len = usize::from(u16::from_be_bytes([take(1)?[0], take(1)?[0]]));
        if len > MAX_LABEL {
            return Err("label too long".to_owned());
        }
        let label = std::str::from_utf8(take(len)?)
            .map_err(|_| "label is not UTF-8".to_owned())?
            .to_owned();
        let mut user_key = [0u8; 32];
        user_key.copy_from_slice(take(32)?);
        let count = usize::from(u16::from_be_bytes([take(1)?[0], take(1)?[0]]));
        if count > MAX_LINKS {
            return Err("too many links".to_owned());
        }
        let mut links = Vec::with_capacity(count);
        for _ in 0..count {
            let l = take(4)?;
            let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
            if len > MAX_DECLARATION_LEN {
                return Err("declaration too long".to_owned());
            }
            let d = DeviceLinkDeclaration::from_bytes(take(len)?).map_err(|e| e.to_string())?;
            d.verify().map_err(|e| e.to_string())?;
            if !d.devices().contains(me) {
                return Err("a declaration does not name this node".to_owned());
            }
            links.push(d);
        }
        if !r.is_empty() {
            return Err("trailing bytes".to_owned());
        }
        Ok(Devices {
            label,
            user_key,
            links,
        })
    }
}

/// Reads the file at `path` (none: no devices); an unreadable or invalid
/// file is moved aside and the node starts with no own devices.
pub(crate) fn load(path: &Path, me: &PublicKey) -> Devices {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Devices::default(),
        Err(e) => {
            crate::fsutil::quarantine(path, &e);
            return Devices::default();
        }
    };
    Devices::from_bytes(&bytes, me).unwrap_or_else(|e| {
        crate::fsutil::quarantine(path, &e);
        Devices::default()
    })
}

#[cfg(test)]
mod tests {
    use ecomesh_identity::Identity;

    use super::*;

    #[test]
    fn round_trips_and_refuses_what_does_not_name_this_node() {
        let a = Identity::from_secret_bytes(&[1; 32]);
        let b = Identity::from_secret_bytes(&[2; 32]);
        let c = Identity::from_secret_bytes(&[3; 32]);
        let mut d =
            DeviceLinkDeclaration::new(&[*a.public_key(), *b.public_key()], "user:a", 5).unwrap();
        d.sign(&a).unwrap();
        d.sign(&b).unwrap();
        let devices = Devices {
            label: "user:a".to_owned(),
            user_key: [9; 32],
            links: vec![d],
        };
        let bytes = devices.to_bytes();
        assert_eq!(
            Devices::from_bytes(&bytes, a.public_key()).unwrap(),
            devices
        );
        let own = devices.own(a.public_key());
        assert_eq!(own.keys().copied().collect::<Vec<_>>(), vec![b.peer_id()]);
        assert!(Devices::from_bytes(&bytes, c.public_key()).is_err());
        for cut in 0..bytes.len() {
            assert!(Devices::from_bytes(&bytes[..cut], a.public_key()).is_err());
        }
        let mut forged = bytes.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert!(Devices::from_bytes(&forged, a.public_key()).is_err());
    }
}
