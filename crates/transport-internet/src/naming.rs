//! How the wider libp2p/IPFS world names things, kept apart from the swarm driver:
//! the DHT key of a content id (its multihash, as IPFS keys provider records) and
//! the DNS resolver behind `/dns4/`, `/dns6/`, `/dns/` and `/dnsaddr/` addresses.

use std::net::SocketAddr;

use ecomesh_types::ContentId;
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};

use crate::error::InternetError;

/// The Kademlia key under which providers of `cid` are announced and looked up: the
/// CID's multihash, not the whole CID, exactly as IPFS (kubo, helia, js-libp2p's
/// kad-dht) keys provider records, so their tools find ecomesh content and ecomesh
/// finds theirs whatever codec each side's CID names.
///
/// Fails with [`InternetError::Decode`] unless `cid` is one canonical binary CID.
pub fn provider_key(cid: &ContentId) -> Result<Vec<u8>, InternetError> {
    let cid = ecomesh_wire::cid::from_content_id(cid)?;
    Ok(cid.hash().to_bytes())
}

/// The resolver configuration for libp2p's DNS transport: the system's
/// (`/etc/resolv.conf` on Unix) when `servers` is empty, else exactly these
/// servers over UDP (and TCP for truncated answers), with no search domain. A
/// system configuration that cannot be read leaves no server (a warning is logged):
/// IP addresses still work, names then fail to resolve.
pub(crate) fn resolver_config(servers: &[SocketAddr]) -> (ResolverConfig, ResolverOpts) {
    if servers.is_empty() {
        return match hickory_resolver::system_conf::read_system_conf() {
            Ok(system) => system,
            Err(e) => {
                tracing::warn!(error = %e, "no system DNS configuration: names in multiaddrs will not resolve");
                (
                    ResolverConfig::from_name_servers(Vec::new()),
                    ResolverOpts::default(),
                )
            }
        };
    }
    let name_servers = servers
        .iter()
        .map(|s| {
            let mut ns = NameServerConfig::udp_and_tcp(s.ip());
            for c in &mut ns.connections {
                c.port = s.port();
            }
            ns
        })
        .collect();
    (
        ResolverConfig::from_name_servers(name_servers),
        ResolverOpts::default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_key_is_the_multihash_whatever_the_codec() {
        // CIDv1 raw + sha2-256 and CIDv1 dag-cbor + the same digest share one key.
        let digest = [7_u8; 32];
        let mut raw = vec![0x01, 0x55, 0x12, 0x20];
        raw.extend_from_slice(&digest);
        let mut cbor = vec![0x01, 0x71, 0x12, 0x20];
        cbor.extend_from_slice(&digest);
        let mut multihash = vec![0x12, 0x20];
        multihash.extend_from_slice(&digest);
        assert_eq!(provider_key(&ContentId(raw)).unwrap(), multihash);
        assert_eq!(provider_key(&ContentId(cbor)).unwrap(), multihash);
    }

    #[test]
    fn provider_key_refuses_what_is_not_a_cid() {
        assert!(matches!(
            provider_key(&ContentId(vec![0x01, 0x55, 0x12, 0x20, 1])),
            Err(InternetError::Decode(_))
        ));
        assert!(provider_key(&ContentId(Vec::new())).is_err());
    }

    #[test]
    fn configured_servers_are_used_with_their_ports() {
        let s: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        let (cfg, _) = resolver_config(&[s]);
        let ns = cfg.name_servers();
        assert_eq!(ns.len(), 1);
        assert_eq!(ns[0].ip, s.ip());
        assert!(!ns[0].connections.is_empty());
        assert!(ns[0].connections.iter().all(|c| c.port == 5353));
        assert!(cfg.search().is_empty());
    }
}
