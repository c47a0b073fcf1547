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
//! - L2CAP CoC rows (both sides offer a channel): each fragment is one SDU; the SDU
//!   plus its 2-byte length is cut into K-frames of at most MPS = 247 bytes, each with
//!   its 4-byte L2CAP header (so one 251-byte LL PDU), costed as above. The SDU MTU is
//!   4099 (one whole unit). The receiver returns one LE Flow Control Credit packet
//!   (12-byte L2CAP signalling PDU) per SDU, costed on the reverse direction. The CoC
//!   floor: the encoded bytes as raw SDUs of at most 4099 bytes in the same K-frames.
//!
//! Measured on the sans-io link (Noise XX established, ordered session), one direction.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::frag::{ATT_HEADER_LEN, Channel};
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

const MPS: usize = 247;
const SDU_MTU: u16 = 4099;
const CREDIT_PDU: usize = 4 + 4 + 4;

/// Airtime in microseconds of one ATT value of `v` bytes.
fn value_us(v: usize) -> f64 {
    ll_us(v + ATT_HEADER_LEN + L2CAP)
}

/// Airtime of one SDU of `v` bytes on an L2CAP channel (K-frames of MPS), plus the
/// credit packet the receiver returns for it.
fn sdu_us(v: usize) -> f64 {
    let mut left = v + 2;
    let mut us = 0.0;
    while left > 0 {
        let n = left.min(MPS);
        us += ll_us(n + L2CAP);
        left -= n;
    }
    us + ll_us(CREDIT_PDU)
}

/// Airtime of one L2CAP PDU of `pdu` bytes (header included) in LL PDUs.
fn ll_us(pdu: usize) -> f64 {
    let mut left = pdu;
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
    println!(
        "channel     message  values  our_us     floor_us   goodput_kB/s  floor_kB/s  efficiency"
    );
    let mut rows = Vec::new();
    for ch in [23u16, 185, 247, 517]
        .map(|mtu| Channel::Gatt { mtu })
        .into_iter()
        .chain([Channel::Coc {
            psm: ecomesh_transport_ble::gatt::L2CAP_PSM,
            sdu_mtu: SDU_MTU,
        }])
    {
        for size in [1024usize, 64 * 1024 - 64] {
            let (encoded, values, us, floor_us) = run(ch, size);
            let kbps = |t: f64| encoded as f64 / 1024.0 / (t / 1e6);
            let name = match ch {
                Channel::Gatt { mtu } => format!("gatt {mtu}"),
                _ => format!("coc {SDU_MTU}"),
            };
            println!(
                "{name:<11} {encoded:<8} {values:<7} {us:<10.0} {floor_us:<10.0} {:<13.1} {:<11.1} {:.3}",
                kbps(us),
                kbps(floor_us),
                floor_us / us
            );
            rows.push((ch, size, us));
        }
    }
    for size in [1024usize, 64 * 1024 - 64] {
        let t = |c: &Channel| {
            rows.iter()
                .find(|(ch, s, _)| ch == c && *s == size)
                .map_or(f64::NAN, |r| r.2)
        };
        let coc = t(&Channel::Coc {
            psm: ecomesh_transport_ble::gatt::L2CAP_PSM,
            sdu_mtu: SDU_MTU,
        });
        println!(
            "message ~{size} B: CoC airtime / GATT airtime = {:.3} (MTU 247), {:.3} (MTU 517)",
            coc / t(&Channel::Gatt { mtu: 247 }),
            coc / t(&Channel::Gatt { mtu: 517 })
        );
    }
}

/// One message of about `size` encoded bytes over a fresh link on `ch`: (encoded
/// bytes, values or SDUs sent, airtime with credits both ways, floor airtime).
fn run(ch: Channel, size: usize) -> (usize, usize, f64, f64) {
    let cost = |v: usize| match ch {
        Channel::Gatt { .. } => value_us(v),
        _ => sdu_us(v),
    };
    let open = Arc::new(AccessPolicy::Open);
    let (ia, ib) = (
        Identity::from_secret_bytes(&[1; 32]),
        Identity::from_secret_bytes(&[2; 32]),
    );
    let sender = ia.peer_id();
    let mut a = BleLink::initiator(ia, open.clone(), None, LinkConfig::default(), ch, 0).unwrap();
    let mut b = BleLink::responder(ib, open, LinkConfig::default(), ch, 0).unwrap();
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
            us += cost(f.len());
            b.receive(&f, 0).unwrap();
            moved = true;
        }
        // Credits flow back on the other direction.
        while let Some(f) = b.poll_transmit() {
            us += cost(f.len());
            a.receive(&f, 0).unwrap();
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let payload = match ch {
        Channel::Gatt { mtu } => usize::from(mtu) - ATT_HEADER_LEN,
        _ => usize::from(SDU_MTU),
    };
    let floor_us: f64 = (0..encoded.div_ceil(payload))
        .map(|i| cost(payload.min(encoded - i * payload)))
        .sum();
    (encoded, values, us, floor_us)
}
