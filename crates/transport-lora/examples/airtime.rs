//! Bytes on air and airtime of ecomesh LoRa frames at Meshtastic LongFast under the EU868
//! budget, measured by running real protocol engines in virtual time (no radio needed):
//!
//! ```text
//! cargo run -p ecomesh-transport-lora --example airtime
//! ```
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use ecomesh_transport_lora::airtime::{LoraParams, phy_len_of};
use ecomesh_transport_lora::engine::EngineConfig;
use ecomesh_transport_lora::frame::{self, Body, NotificationHeader, PermissionGrant};
use ecomesh_transport_lora::measure::{self, Line};
use ecomesh_types::Priority;

fn ms(params: &LoraParams, app_len: usize) -> f64 {
    measure::packet_ms(params, app_len)
}

/// The length of the first frame of `kind` node 0 sent after transmission `mark`.
fn first_len(line: &Line, mark: usize, kind: u8) -> usize {
    line.air[mark..]
        .iter()
        .find(|f| f.node == 0 && f.payload[0] == kind)
        .map_or(0, |f| f.payload.len())
}

fn main() {
    let params = LoraParams::LONG_FAST;
    let config = EngineConfig::default();
    println!(
        "LongFast: SF{} BW {} kHz CR 4/{} preamble {}; EU868 869.525 MHz budget {}% of {} s (allowance {} s); Meshtastic header {} B + Data protobuf 5-6 B per packet",
        params.spreading_factor,
        params.bandwidth_hz / 1000,
        params.coding_rate + 4,
        params.preamble,
        config.duty.permille / 10,
        config.duty.window_ms / 1000,
        config.duty.allowance_ms() / 1000,
        ecomesh_transport_lora::airtime::MESHTASTIC_HEADER_LEN,
    );

    // Sessions and routes form in (virtual) minutes of beacons.
    let mut line = measure::formed_line(4, &config).expect("no route along the line");
    let (a, b, e) = (line.id(0), line.id(1), line.id(4));

    // Single frames between neighbours.
    let mark = line.air.len();
    line.nodes[0]
        .send_compact(
            b,
            Body::Notification(NotificationHeader {
                collection: 0xDEAD_BEEF,
                document: 0x0123_4567_89AB_CDEF,
                change: 2,
                at_secs: 1_790_000_000,
            }),
            Priority::High,
            line.now,
        )
        .unwrap();
    line.run(line.now + 20_000);
    let notif = first_len(&line, mark, frame::K_SEALED);
    let mark = line.air.len();
    line.nodes[0]
        .send_compact(
            b,
            Body::Grant(PermissionGrant {
                grantee: b,
                resource: 0x0123_4567_89AB_CDEF,
                actions: 3,
                expires_secs: 1_800_000_000,
            }),
            Priority::High,
            line.now,
        )
        .unwrap();
    line.run(line.now + 20_000);
    let grant = first_len(&line, mark, frame::K_SEALED);
    let any_len = |kind: u8| {
        line.air
            .iter()
            .find(|f| f.payload[0] == kind)
            .map_or(0, |f| f.payload.len())
    };
    let presence = any_len(frame::K_PRESENCE);
    let announce = any_len(frame::K_ANNOUNCE);
    let hs: Vec<usize> = [frame::K_HS1, frame::K_HS2, frame::K_HS3]
        .iter()
        .map(|k| any_len(*k))
        .collect();

    println!();
    println!("| frame | budget | payload B | on-air PHY B | airtime ms |");
    println!("|---|---|---|---|---|");
    for (name, budget, len) in [
        ("presence beacon", "32", presence),
        ("notification header", "64", notif),
        ("permission grant", "96", grant),
        ("announce (key, every 10th beacon)", "-", announce),
        ("Noise IK msg 1 (once per neighbour)", "-", hs[0]),
        ("Noise IK msg 2", "-", hs[1]),
        ("Noise IK msg 3", "-", hs[2]),
    ] {
        println!(
            "| {name} | {budget} | {len} | {} | {:.1} |",
            phy_len_of(len),
            ms(&params, len)
        );
    }

    // A 1 KB CRDT delta as a signed NetworkMessage from A to E, 4 hops.
    let delta = measure::delta_message(a, e, 1024);
    let compact = ecomesh_wire::encode_message_compact(&delta).len();
    let full = ecomesh_wire::encode_message(&delta).len();
    let envelope = ecomesh_transport_lora::envelope::encode_envelope(&delta, &e)
        .unwrap()
        .len();
    let r = measure::send_along(&mut line, &delta).expect("delta delivered");
    let per_hop_packets: Vec<usize> = (0..1024usize.div_ceil(233))
        .map(|i| (1024 - i * 233).min(233))
        .collect();
    println!();
    println!(
        "1 KB CRDT delta A->E over 4 hops (signed NetworkMessage: {full} B full encoding, {compact} B compact, {envelope} B LoRa envelope; {} frames per hop, {:.1} B of overhead per frame):",
        r.frames / r.hops,
        r.overhead_per_frame(),
    );
    println!("| | payload B on air | PHY B on air | airtime s | ratio to floor (airtime) |");
    println!("|---|---|---|---|---|");
    println!(
        "| ecomesh frames (4 hops) | {} | {} | {:.2} | {:.2} |",
        r.bytes,
        r.phy_bytes,
        r.airtime_ms / 1000.0,
        r.ratio()
    );
    println!(
        "| floor: 1024 B payload x 4 hops in full packets | {} | {} | {:.2} | 1.00 |",
        1024 * 4,
        4 * per_hop_packets
            .iter()
            .map(|l| phy_len_of(*l))
            .sum::<usize>(),
        r.floor_ms / 1000.0
    );
    let air = r.airtime_ms;
    println!(
        "delivery latency in this harness (no loss, no half-duplex or collisions; each hop forwards once it has the whole unit): {:.1} s; with one transmitter at a time on the channel at least the total airtime, {:.1} s; per-hop airtime {:.1} s = {:.1}% of the 10% band's hourly allowance ({:.0}% of the 1% bands')",
        r.latency_ms as f64 / 1000.0,
        air / 1000.0,
        air / 4000.0,
        air / 4.0 / config.duty.allowance_ms() as f64 * 100.0,
        air / 4.0 / 36_000.0 * 100.0,
    );
    println!(
        "deltas of 1 KB one node can send per hour within the budget: {:.0} (10% band), {:.0} (1% bands)",
        config.duty.allowance_ms() as f64 / (air / 4.0),
        36_000.0 / (air / 4.0)
    );
}
