//! Shared helpers of the integration tests: fast test settings and a transport on a
//! simulated radio.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_lora::sim::{SimChannel, SimRadio};
use ecomesh_transport_lora::{EngineConfig, LoraConfig, LoraTransport};
use ecomesh_types::{Error, TransportAdapter};

/// Engine settings for tests (the crate's simulation preset).
pub(crate) fn fast_engine() -> EngineConfig {
    EngineConfig::for_simulation()
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
