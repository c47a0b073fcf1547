//! The `lora` rows of the compare report (issue 16 goal 2, airtime half): a signed 1 KB
//! CRDT delta sent over a line of 4 hops of real protocol engines at Meshtastic LongFast
//! (EU868), its airtime against the frame floor (the 1024 payload bytes alone, per hop,
//! in full Meshtastic packets), and what each frame spends besides the payload. Both come
//! from `ecomesh_transport_lora::measure`, as the crate's `airtime` example does; the
//! figures are airtime from the Semtech formula over the frames that went on air, so
//! they do not depend on the machine and `--quick` changes nothing.

use ecomesh_transport_lora::EngineConfig;
use ecomesh_transport_lora::airtime::MAX_APP_PAYLOAD;
use ecomesh_transport_lora::measure;

use super::{Options, Row, Target};

/// Hops of the line.
const HOPS: usize = 4;
/// Payload bytes of the delta.
const DELTA: usize = 1024;

/// The rows of this area: the airtime ratio (goal: at most 1.2), and for context the
/// frames per hop against the floor's and the overhead bytes per frame against a full
/// frame.
pub fn rows(_options: &Options) -> Vec<Row> {
    let config = EngineConfig::default();
    let report = measure::formed_line(HOPS, &config).and_then(|mut line| {
        let m = measure::delta_message(line.id(0), line.id(HOPS), DELTA);
        measure::send_along(&mut line, &m)
    });
    let r = match report {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "the lora line did not deliver the delta");
            return vec![Row {
                goal: "2 lora".into(),
                what: format!("1 KB delta over {HOPS} hops: not delivered ({e})"),
                value: f64::INFINITY,
                baseline: 1.0,
                baseline_what: "frame floor".into(),
                unit: "s",
                target: Target::AtMost(1.2),
            }];
        }
    };
    let floor_frames = DELTA.div_ceil(MAX_APP_PAYLOAD) as f64;
    vec![
        Row {
            goal: "2 lora airtime".into(),
            what: format!(
                "signed 1 KB delta over {HOPS} hops, LongFast EU868: airtime of its {} frames",
                r.frames
            ),
            value: r.airtime_ms / 1000.0,
            baseline: r.floor_ms / 1000.0,
            baseline_what: "frame floor (1024 B alone per hop in full packets)".into(),
            unit: "s",
            target: Target::AtMost(1.2),
        },
        Row {
            goal: "2 lora frames".into(),
            what: "data frames per hop of that delta".into(),
            value: r.frames as f64 / r.hops as f64,
            baseline: floor_frames,
            baseline_what: "frames per hop of the floor".into(),
            unit: "frames",
            target: Target::Info,
        },
        Row {
            goal: "2 lora overhead".into(),
            what: "bytes per frame besides the payload (headers, tag, envelope)".into(),
            value: r.overhead_per_frame(),
            baseline: MAX_APP_PAYLOAD as f64,
            baseline_what: "a full frame".into(),
            unit: "B",
            target: Target::Info,
        },
    ]
}
