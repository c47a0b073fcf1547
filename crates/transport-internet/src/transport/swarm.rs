//! Building the libp2p swarm from the configuration and binding its listeners.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, Swarm, autonat, dcutr, gossipsub, identify, kad, noise, ping, relay,
    request_response, tcp, yamux,
};
use tokio::time::Instant;

use crate::behaviour::{Behaviour, Gate};
use crate::error::InternetError;
use crate::protocol::{self, EcomeshCodec, Limits, PROTOCOL};

use super::addr::with_bound_port;
use super::state::{Carry, Inner};

type Built = Result<(Swarm<Behaviour>, Carry), Box<(InternetError, Carry)>>;

pub(super) fn build_swarm(inner: &Arc<Inner>, carry: Carry) -> Built {
    let cfg = &inner.config;
    let setup = |e: &dyn std::fmt::Display| InternetError::Setup(e.to_string());
    let built = (|| {
        let (dns_config, dns_opts) = crate::naming::resolver_config(&cfg.dns_servers);
        let swarm = libp2p::SwarmBuilder::with_existing_identity(inner.keypair.clone())
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| setup(&e))?
            .with_quic()
            .with_dns_config(dns_config, dns_opts)
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| setup(&e))?
            .with_behaviour(
                |key,
                 relay_client|
                 -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                    let me = key.public().to_peer_id();
                    let identify = identify::Behaviour::new(
                        identify::Config::new("/ecomesh/1.0.0".to_owned(), key.public())
                            .with_agent_version(format!("ecomesh/{}", env!("CARGO_PKG_VERSION"))),
                    );
                    let kad = if cfg.dht {
                        let mut kc = kad::Config::new(kad::PROTOCOL_NAME);
                        kc.set_periodic_bootstrap_interval(cfg.dht_walk_interval);
                        kc.set_query_timeout(cfg.dht_query_timeout);
                        let store = kad::store::MemoryStore::with_config(
                            me,
                            kad::store::MemoryStoreConfig {
                                max_value_bytes: cfg.max_record_size,
                                max_provided_keys: cfg.max_provider_keys,
                                ..kad::store::MemoryStoreConfig::default()
                            },
                        );
                        let mut k = kad::Behaviour::with_config(me, store, kc);
                        if cfg.dht_server {
                            k.set_mode(Some(kad::Mode::Server));
                        }
                        Some(k)
                    } else {
                        None
                    };
                    let gossip_cfg = gossipsub::ConfigBuilder::default()
                        .validation_mode(gossipsub::ValidationMode::Strict)
                        .max_transmit_size(cfg.max_gossip_size + 1024)
                        .build()?;
                    let gossipsub = gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Signed(key.clone()),
                        gossip_cfg,
                    )
                    .map_err(|e| setup(&e))?;
                    let limits = Limits {
                        max_request: cfg.max_message_size + protocol::BODY_OVERHEAD,
                        max_response: cfg.max_message_size + protocol::BODY_OVERHEAD,
                    };
                    let rr = request_response::Behaviour::with_codec(
                        EcomeshCodec { limits },
                        [(PROTOCOL, request_response::ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(cfg.request_timeout)
                            .with_max_concurrent_streams(cfg.max_inflight_requests.max(1) * 2),
                    );
                    Ok(Behaviour {
                        gate: Gate::new(inner.policy.clone()),
                        relay_client,
                        relay_server: Toggle::from(
                            cfg.relay_server
                                .then(|| relay::Behaviour::new(me, relay::Config::default())),
                        ),
                        identify,
                        ping: ping::Behaviour::new(ping::Config::new()),
                        kad: Toggle::from(kad),
                        gossipsub,
                        dcutr: dcutr::Behaviour::new(me),
                        autonat: autonat::Behaviour::new(me, autonat::Config::default()),
                        rr,
                        streams: libp2p_stream::Behaviour::new(),
                    })
                },
            )
            .map_err(|e| setup(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(cfg.idle_timeout))
            .build();
        Ok::<_, InternetError>(swarm)
    })();
    match built {
        Ok(s) => Ok((s, carry)),
        Err(e) => Err(Box::new((e, carry))),
    }
}

type Listened = Result<(Vec<Multiaddr>, Vec<Multiaddr>, Carry), Box<(InternetError, Carry)>>;

/// Listens on the configured (or previously bound) addresses and waits until each
/// listener reports its address. Returns the addresses to rebind after a restart and
/// every address listened on.
pub(super) async fn listen_all(
    inner: &Arc<Inner>,
    swarm: &mut Swarm<Behaviour>,
    carry: Carry,
) -> Listened {
    let targets: Vec<Multiaddr> = if carry.rebind.is_empty() {
        inner.config.listen.clone()
    } else {
        carry.rebind.clone()
    };
    let mut waiting = HashMap::new();
    for (i, a) in targets.iter().enumerate() {
        match swarm.listen_on(a.clone()) {
            Ok(id) => {
                waiting.insert(id, i);
            }
            Err(e) => {
                return Err(Box::new((
                    InternetError::Address {
                        addr: a.to_string(),
                        reason: e.to_string(),
                    },
                    carry,
                )));
            }
        }
    }
    let mut rebind = targets.clone();
    let mut addrs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !waiting.is_empty() {
        let ev = match tokio::time::timeout_at(deadline, swarm.select_next_some()).await {
            Ok(ev) => ev,
            Err(_) => {
                return Err(Box::new((
                    InternetError::Setup("listeners did not report an address in 10 s".into()),
                    carry,
                )));
            }
        };
        match ev {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                if let Some(i) = waiting.remove(&listener_id) {
                    rebind[i] = with_bound_port(&targets[i], &address);
                }
                addrs.push(address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(i) = waiting.remove(&listener_id) {
                    let reason = match reason {
                        Ok(()) => "closed".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(Box::new((
                        InternetError::Address {
                            addr: targets[i].to_string(),
                            reason,
                        },
                        carry,
                    )));
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(i) = waiting.remove(&listener_id) {
                    return Err(Box::new((
                        InternetError::Address {
                            addr: targets[i].to_string(),
                            reason: error.to_string(),
                        },
                        carry,
                    )));
                }
            }
            other => tracing::trace!(?other, "event while starting"),
        }
    }
    Ok((rebind, addrs, carry))
}
