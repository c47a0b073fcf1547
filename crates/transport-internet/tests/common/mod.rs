//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::print_stderr)]

use std::time::Duration;

use ecomesh_identity::Identity;
use ecomesh_transport_internet::{InternetConfig, InternetTransport, Multiaddr};
use ecomesh_types::TransportAdapter;

/// The 32-byte Ed25519 secret seed of `identity`.
///
/// `ecomesh-identity` has no secret accessor yet, so this goes through its documented key
/// file (`MAGIC (8) || secret seed (32) || public key (32)`, mode 0600, in a private
/// temporary directory removed at once) and checks the result re-derives the identity.
pub(crate) fn seed_of(identity: &Identity) -> [u8; 32] {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    identity.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let mut seed = [0_u8; 32];
    seed.copy_from_slice(&bytes[8..40]);
    assert_eq!(
        Identity::from_secret_bytes(&seed).peer_id(),
        identity.peer_id()
    );
    seed
}

/// A loopback configuration with fast redials and quick DHT walks.
pub(crate) fn loopback_config(dht: bool) -> InternetConfig {
    InternetConfig {
        dht,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..InternetConfig::loopback()
    }
}

/// A started transport with a fresh identity.
pub(crate) async fn node(config: InternetConfig) -> InternetTransport {
    let id = Identity::generate().unwrap();
    let t = InternetTransport::new(&seed_of(&id), ecomesh_identity::AccessPolicy::Open, config)
        .unwrap();
    t.start().await.unwrap();
    t
}

/// `t`'s TCP listen address with `/p2p/<id>`.
pub(crate) fn tcp_addr(t: &InternetTransport) -> Multiaddr {
    t.dial_addr(|a| a.iter().any(|p| matches!(p, libp2p_protocol::Tcp(_))))
        .unwrap()
}

/// `t`'s QUIC listen address with `/p2p/<id>`.
pub(crate) fn quic_addr(t: &InternetTransport) -> Multiaddr {
    t.dial_addr(|a| a.iter().any(|p| matches!(p, libp2p_protocol::QuicV1)))
        .unwrap()
}

/// A raw libp2p peer for the tests: a swarm with a fresh Ed25519 identity over TCP
/// (Noise, Yamux) running only `behaviour`.
pub(crate) fn raw_swarm<B: libp2p::swarm::NetworkBehaviour>(behaviour: B) -> libp2p::Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour)
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// Re-export of the multiaddr protocol enum.
pub(crate) use ecomesh_transport_internet::multiaddr_protocol as libp2p_protocol;

/// The js-libp2p interop project (`interop/`, pinned in its `package-lock.json`).
pub(crate) fn interop_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Whether the interop project is installed. When it is not, a test skips with a
/// message (returns `false`), unless `ECOMESH_REQUIRE_INTEROP=1` (CI), when it fails.
pub(crate) fn interop_installed() -> bool {
    let dir = interop_dir();
    let required = std::env::var("ECOMESH_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
    if dir.join("node_modules").is_dir() {
        return true;
    }
    let msg = format!(
        "interop: {} is missing; run `npm ci --prefix crates/transport-internet/interop`",
        dir.join("node_modules").display()
    );
    assert!(!required, "{msg} (ECOMESH_REQUIRE_INTEROP=1)");
    eprintln!("SKIPPED {msg}");
    false
}

/// Installs a tracing subscriber once (RUST_LOG selects).
pub(crate) fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
