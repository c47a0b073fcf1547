//! The BLE transport's decoders of untrusted radio input: advertising data, GATT
//! fragments through the framer (split at the first byte's value, at the minimum and a
//! large ATT MTU and on an L2CAP channel of one unit per SDU), and a link in handshake
//! fed the same values.
//! Nothing may panic; the framer's buffered bytes stay within window x unit + one unit;
//! whatever decodes as a fragment re-encodes to exactly its input; an advertisement that
//! decodes re-encodes to the canonical 31 bytes that decode to it again.
#![no_main]

use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::frag::{Channel, Fragment, Framer, FramerConfig, MAX_UNIT_LEN};
use ecomesh_transport_ble::gatt::Advertisement;
use ecomesh_transport_ble::gatt::L2CAP_PSM;
use ecomesh_transport_ble::link::{BleLink, LinkConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(adv)) = Advertisement::decode(data) {
        assert_eq!(
            Advertisement::decode(&adv.encode()).ok().flatten(),
            Some(adv)
        );
    }
    let split = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for mtu in [
        Channel::Gatt { mtu: 23 },
        Channel::Gatt { mtu: 247 },
        Channel::Coc {
            psm: L2CAP_PSM,
            sdu_mtu: 4099,
        },
    ] {
        let config = FramerConfig::default();
        let Ok(mut framer) = Framer::new(config, mtu) else {
            return;
        };
        let Ok(mut link) = BleLink::responder(
            Identity::from_secret_bytes(&[7; 32]),
            Arc::new(AccessPolicy::Open),
            LinkConfig::default(),
            mtu,
            0,
        ) else {
            return;
        };
        let mut framer_alive = true;
        let mut link_alive = true;
        for (i, value) in data.chunks(split).enumerate() {
            if let Ok(f) = Fragment::decode(value) {
                let mut again = Vec::new();
                f.encode(&mut again);
                assert_eq!(again, value);
            }
            if framer_alive {
                framer_alive = framer.receive(value).is_ok();
                // Take every other unit only, so the window fills.
                if i % 2 == 0 {
                    while framer.next_unit().is_some() {}
                }
                assert!(framer.buffered_bytes() <= (usize::from(config.window) + 1) * MAX_UNIT_LEN);
            }
            if link_alive {
                link_alive = link.receive(value, i as u64).is_ok();
                while link.poll_transmit().is_some() {}
            }
        }
    }
});
