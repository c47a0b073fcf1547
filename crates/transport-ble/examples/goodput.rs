//! Goodput of messages over BLE links on a stated link model, against the link-layer
//! floor: `cargo run -p ecomesh-transport-ble --example goodput`.
//!
//! Model (computed from the exact values a link emits, not timed):
//! - 2M PHY, 4 us per byte on air; LE Data Length Extension (251-byte LL payloads);
//!   link-layer encryption off (no MIC).
//! - Each ATT value travels as a write command or notification: 3 bytes of ATT header
//!   and 4 of L2CAP header, split into LL PDUs of at most 251 bytes; each LL PDU costs
//!   its bytes plus 2 (LL header) + 9 (preamble, access address, CRC), then T_IFS
//!   (150 us), the peer's empty PDU (11 bytes, 44 us) and T_IFS again.
//! - The floor: the message's encoded bytes as raw values of MTU - 3 bytes each, with
//!   nothing of ours (no fragment header, no Noise tag, no record byte).
//!
//! Measured on the sans-io link (Noise XX established, ordered session), one direction.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::frag::ATT_HEADER_LEN;
use ecomesh_transport_ble::gatt::{ADVERTISEMENT_LEN, Advertisement};
use ecomesh_transport_ble::link::{BleLink, LinkConfig};
use ecomesh_transport_ble::presence::PresenceTag;
use ecomesh_types::{MessageId, NetworkMessage, PeerId, Priority, Signature};
use ecomesh_wire::encode_message;

const LL_MAX: usize = 251;
const L2CAP: usize = 4;
const PER_PDU: usize = 2 + 9;
const US_PER_BYTE: f64 = 4.0;
const T_IFS: f64 = 150.0;
const EMPTY_PDU_US: f64 = 44.0;

/// Airtime in microseconds of one ATT value of `v` bytes.
fn value_us(v: usize) -> f64 {
    let sdu = v + ATT_HEADER_LEN + L2CAP;
    let mut left = sdu;
    let mut us = 0.0;
    while left > 0 {
        let n = left.min(LL_MAX);
        us += (n + PER_PDU) as f64 * US_PER_BYTE + 2.0 * T_IFS + EMPTY_PDU_US;
        left -= n;
    }
    us
}

fn message(sender: PeerId, target: usize) -> NetworkMessage {
    let mut m = NetworkMessage {
        id: MessageId([1; 16]),
        message_type: "crdt/delta".into(),
        payload: Vec::new(),
        sender,
        recipient: None,
        timestamp_ms: 1,
        ttl_secs: 3600,
        hop_count: 0,
        max_hops: 5,
        signature: Signature([7; 64]),
    };
    let base = encode_message(&m).len();
    m.payload = vec![0x5A; target.saturating_sub(base + 4)];
    m
}

fn main() {
    let adv = Advertisement {
        tag: PresenceTag([0; 6]),
    }
    .encode();
    assert_eq!(adv.len(), ADVERTISEMENT_LEN);
    println!(
        "advertisement: {} bytes of legacy advertising data (limit 31)",
        adv.len()
    );
    println!("mtu  message  values  our_us     floor_us   goodput_kB/s  floor_kB/s  efficiency");
    for mtu in [23u16, 185, 247, 517] {
        for size in [1024usize, 64 * 1024 - 64] {
            let open = Arc::new(AccessPolicy::Open);
            let (ia, ib) = (
                Identity::from_secret_bytes(&[1; 32]),
                Identity::from_secret_bytes(&[2; 32]),
            );
            let sender = ia.peer_id();
            let mut a =
                BleLink::initiator(ia, open.clone(), None, LinkConfig::default(), mtu, 0).unwrap();
            let mut b = BleLink::responder(ib, open, LinkConfig::default(), mtu, 0).unwrap();
            loop {
                let mut moved = false;
                while let Some(f) = a.poll_transmit() {
                    b.receive(&f, 0).unwrap();
                    moved = true;
                }
                while let Some(f) = b.poll_transmit() {
                    a.receive(&f, 0).unwrap();
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            let m = message(sender, size);
            let encoded = encode_message(&m).len();
            a.send_message(&m, Priority::Normal).unwrap();
            let (mut values, mut us) = (0usize, 0.0f64);
            loop {
                let mut moved = false;
                while let Some(f) = a.poll_transmit() {
                    values += 1;
                    us += value_us(f.len());
                    b.receive(&f, 0).unwrap();
                    moved = true;
                }
                // Credits flow back on the other direction's notifications.
                while let Some(f) = b.poll_transmit() {
                    us += value_us(f.len());
                    a.receive(&f, 0).unwrap();
                    moved = true;
                }
                if !moved {
                    break;
                }
            }
            let payload = usize::from(mtu) - ATT_HEADER_LEN;
            let floor_us: f64 = (0..encoded.div_ceil(payload))
                .map(|i| value_us(payload.min(encoded - i * payload)))
                .sum();
            let kbps = |t: f64| encoded as f64 / 1024.0 / (t / 1e6);
            println!(
                "{mtu:<4} {encoded:<8} {values:<7} {us:<10.0} {floor_us:<10.0} {:<13.1} {:<11.1} {:.3}",
                kbps(us),
                kbps(floor_us),
                floor_us / us
            );
        }
    }
}
