//! The GATT service layout and the advertisement payload, as constants and a codec.
//!
//! # Service
//! One primary service, [`SERVICE_UUID`], with two characteristics:
//! - [`WRITE_CHAR_UUID`] (write without response): the GATT client writes its
//!   fragments ([`crate::frag`]) to the server;
//! - [`NOTIFY_CHAR_UUID`] (notify): the server notifies its fragments to the client.
//!
//! So one connection carries both directions, whichever side connected; each device
//! runs the service (server) and connects to others (client) at once. A device that
//! offers an L2CAP connection-oriented channel also serves [`PSM_CHAR_UUID`] (read:
//! its PSM); a client that offers one too opens the channel and runs the link over it
//! instead of the characteristics ([`crate::frag::Channel`]).
//!
//! # Advertisement (legacy advertising data, at most 31 bytes)
//! Three AD structures, 31 bytes in all ([`ADVERTISEMENT_LEN`]):
//! - Flags (`0x01`): `0x06` (LE General Discoverable, BR/EDR not supported), 3 bytes;
//! - Complete List of 128-bit Service UUIDs (`0x07`): [`SERVICE_UUID`], 18 bytes;
//! - Manufacturer Specific Data (`0xFF`): company [`COMPANY_ID`] (`0xFFFF`, the value the
//!   Bluetooth SIG reserves for tests and unassigned use) then the 6-byte
//!   [`PresenceTag`], 10 bytes.
//!
//! The service UUID names the protocol version: a later format gets a new UUID.
//! The tag carries nothing else (no version, no stable byte), so advertisements of one
//! device in two epochs share only the constant service UUID every device sends.

use crate::error::BleError;
use crate::presence::{PresenceTag, TAG_LEN};

/// The ecomesh BLE service, version 1 (a random v4 UUID).
pub const SERVICE_UUID: u128 = 0x6c9e_4c1a_3b5f_4f2e_9d0a_7e21_b4c8_e001;
/// The write characteristic: client to server fragments.
pub const WRITE_CHAR_UUID: u128 = 0x6c9e_4c1a_3b5f_4f2e_9d0a_7e21_b4c8_e002;
/// The notify characteristic: server to client fragments.
pub const NOTIFY_CHAR_UUID: u128 = 0x6c9e_4c1a_3b5f_4f2e_9d0a_7e21_b4c8_e003;
/// The L2CAP LE connection-oriented channel PSM (LE dynamic range `0x80..=0xFF`) a
/// device listens on when it offers a channel; the fragments stay the same, one per SDU.
pub const L2CAP_PSM: u16 = 0x00C5;
/// The optional read characteristic of a device offering an L2CAP channel: its PSM,
/// `u16` little-endian. Absent: the device offers GATT only. (The 31 bytes of the
/// advertisement are all taken, so the offer is read over GATT once connected.)
pub const PSM_CHAR_UUID: u128 = 0x6c9e_4c1a_3b5f_4f2e_9d0a_7e21_b4c8_e004;

/// The PSM a [`PSM_CHAR_UUID`] value offers: exactly two bytes, little-endian, in the
/// LE dynamic range; anything else offers nothing (GATT then).
pub fn psm_of_value(value: &[u8]) -> Option<u16> {
    let psm = u16::from_le_bytes(value.try_into().ok()?);
    (0x80..=0xFF).contains(&psm).then_some(psm)
}
/// Company identifier of the manufacturer data (`0xFFFF`: reserved by the SIG for
/// tests and unassigned use).
pub const COMPANY_ID: u16 = 0xFFFF;
/// Legacy advertising data limit.
pub const MAX_LEGACY_ADVERTISEMENT: usize = 31;
/// Length of [`Advertisement::encode`].
pub const ADVERTISEMENT_LEN: usize = 3 + 18 + 4 + TAG_LEN;

const AD_FLAGS: u8 = 0x01;
const AD_UUID128_INCOMPLETE: u8 = 0x06;
const AD_UUID128_COMPLETE: u8 = 0x07;
const AD_MANUFACTURER: u8 = 0xFF;
const FLAGS_LE_GENERAL_NO_BREDR: u8 = 0x06;

/// The text form (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`) of a UUID, as BlueZ takes it.
pub fn uuid_string(uuid: u128) -> String {
    let h = format!("{uuid:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What an ecomesh device advertises: the service (implied) and its presence tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Advertisement {
    /// The rotating presence tag of this epoch.
    pub tag: PresenceTag,
}

impl Advertisement {
    /// The 31 bytes of legacy advertising data (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ADVERTISEMENT_LEN);
        out.extend_from_slice(&[2, AD_FLAGS, FLAGS_LE_GENERAL_NO_BREDR]);
        out.extend_from_slice(&[17, AD_UUID128_COMPLETE]);
        out.extend_from_slice(&SERVICE_UUID.to_le_bytes());
        out.extend_from_slice(&[3 + TAG_LEN as u8, AD_MANUFACTURER]);
        out.extend_from_slice(&COMPANY_ID.to_le_bytes());
        out.extend_from_slice(&self.tag.0);
        out
    }

    /// Parses advertising data (ours or anyone's, in any order, with other AD
    /// structures): `Ok(None)` if it is well formed but not an ecomesh advertisement
    /// (no [`SERVICE_UUID`], or no tag), an error if the AD structures are malformed.
    pub fn decode(data: &[u8]) -> Result<Option<Self>, BleError> {
        if data.len() > MAX_LEGACY_ADVERTISEMENT {
            return Err(BleError::Malformed("advertising data over 31 bytes"));
        }
        let mut rest = data;
        let mut ours = false;
        let mut tag = None;
        while let [len, tail @ ..] = rest {
            let len = usize::from(*len);
            if len == 0 {
                // Zero padding ends the significant part.
                break;
            }
            let Some((ad, next)) = tail.split_at_checked(len) else {
                return Err(BleError::Malformed("AD structure overruns the data"));
            };
            rest = next;
            let (kind, body) = (ad[0], &ad[1..]);
            match kind {
                AD_UUID128_COMPLETE | AD_UUID128_INCOMPLETE => {
                    if body.len() % 16 != 0 {
                        return Err(BleError::Malformed("128-bit UUID list length"));
                    }
                    ours |= body
                        .chunks_exact(16)
                        .any(|c| c == SERVICE_UUID.to_le_bytes());
                }
                AD_MANUFACTURER => {
                    if let Some(t) = Self::tag_of_manufacturer_data(body) {
                        tag = Some(t);
                    }
                }
                _ => {}
            }
        }
        Ok(match (ours, tag) {
            (true, Some(tag)) => Some(Advertisement { tag }),
            _ => None,
        })
    }

    /// The tag in one manufacturer-data body (`company (u16 LE) || data`), if it is
    /// ours; the form BlueZ reports (`ManufacturerData[COMPANY_ID] = data`) goes through
    /// [`Advertisement::from_manufacturer_data`].
    fn tag_of_manufacturer_data(body: &[u8]) -> Option<PresenceTag> {
        let (company, data) = body.split_at_checked(2)?;
        if company != COMPANY_ID.to_le_bytes() {
            return None;
        }
        Self::from_manufacturer_data(data).map(|a| a.tag)
    }

    /// The advertisement from the manufacturer data of [`COMPANY_ID`] as a backend
    /// reports it (without the company bytes): exactly [`TAG_LEN`] bytes.
    pub fn from_manufacturer_data(data: &[u8]) -> Option<Self> {
        let tag: [u8; TAG_LEN] = data.try_into().ok()?;
        Some(Advertisement {
            tag: PresenceTag(tag),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn advertisement_fits_legacy_advertising_and_round_trips() {
        let a = Advertisement {
            tag: PresenceTag([1, 2, 3, 4, 5, 6]),
        };
        let bytes = a.encode();
        assert_eq!(bytes.len(), ADVERTISEMENT_LEN);
        assert!(bytes.len() <= MAX_LEGACY_ADVERTISEMENT);
        assert_eq!(Advertisement::decode(&bytes).unwrap(), Some(a));
    }

    #[test]
    fn other_advertisements_are_not_ours() {
        // Flags and a heart-rate 16-bit UUID list: well formed, not ours.
        assert_eq!(
            Advertisement::decode(&[2, 1, 6, 3, 3, 0x0D, 0x18]).unwrap(),
            None
        );
        // Our UUID without a tag.
        let mut v = vec![17, AD_UUID128_COMPLETE];
        v.extend_from_slice(&SERVICE_UUID.to_le_bytes());
        assert_eq!(Advertisement::decode(&v).unwrap(), None);
        // Our tag under another company.
        let mut a = Advertisement {
            tag: PresenceTag([9; 6]),
        }
        .encode();
        a[23] = 0x4C;
        assert_eq!(Advertisement::decode(&a).unwrap(), None);
    }

    #[test]
    fn malformed_advertising_data_is_a_typed_error() {
        for bad in [
            vec![5, 1, 6],
            vec![3, AD_UUID128_COMPLETE, 1, 2],
            vec![0; 32],
        ] {
            assert!(matches!(
                Advertisement::decode(&bad),
                Err(BleError::Malformed(_))
            ));
        }
    }

    #[test]
    fn psm_value_is_two_bytes_in_the_le_dynamic_range() {
        assert_eq!(psm_of_value(&L2CAP_PSM.to_le_bytes()), Some(L2CAP_PSM));
        assert_eq!(psm_of_value(&[0xC5]), None);
        assert_eq!(psm_of_value(&[0xC5, 0, 0]), None);
        assert_eq!(psm_of_value(&0x0025u16.to_le_bytes()), None);
        assert_eq!(psm_of_value(&0x0100u16.to_le_bytes()), None);
    }

    #[test]
    fn uuid_text_form() {
        assert_eq!(
            uuid_string(SERVICE_UUID),
            "6c9e4c1a-3b5f-4f2e-9d0a-7e21b4c8e001"
        );
    }
}
