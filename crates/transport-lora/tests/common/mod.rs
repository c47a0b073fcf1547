//! Shared helpers of the integration tests: fast test settings and a transport on a
//! simulated radio.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_lora::airtime::{DutyBudget, LoraParams};
use ecomesh_transport_lora::sched::SchedulerConfig;
use ecomesh_transport_lora::sim::{SimChannel, SimRadio};
use ecomesh_transport_lora::{EngineConfig, LoraConfig, LoraTransport};
use ecomesh_types::{Error, TransportAdapter};

/// Engine settings for tests: a fast modem (SF7/500 kHz), short timers, no duty limit.
pub(crate) fn fast_engine() -> EngineConfig {
    let radio = LoraParams::SHORT_TURBO;
    EngineConfig {
        radio,
        duty: DutyBudget {
            permille: 1000,
            window_ms: 3_600_000,
        },
        duty_guard_ms: radio.max_packet_airtime_ms() + 100,
        scheduler: SchedulerConfig {
            slot_ms: 10,
            max_backoff_slots: 2,
            queue_limit: 1024,
        },
        beacon_interval_ms: 2_000,
        announce_every: 5,
        peer_timeout_ms: 15_000,
        handshake_timeout_ms: 6_000,
        handshake_retry_ms: 1_000,
        announce_min_interval_ms: 300,
        ..EngineConfig::default()
    }
}

/// A started transport on a new radio of `chan`.
pub(crate) async fn transport_on(
    chan: &SimChannel,
    identity: Identity,
    policy: AccessPolicy,
    engine: EngineConfig,
) -> Result<(LoraTransport, SimRadio), Error> {
    let radio = chan.add_radio().map_err(Error::backend)?;
    let mut config = LoraConfig::new(radio.path.to_string_lossy().into_owned());
    config.engine = engine;
    config.heartbeat = Duration::from_secs(5);
    config.ready_timeout = Duration::from_secs(10);
    let t = LoraTransport::new(identity, policy, config);
    t.start().await?;
    Ok((t, radio))
}
