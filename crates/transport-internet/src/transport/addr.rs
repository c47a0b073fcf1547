//! Multiaddr helpers: routability, the TCP socket address, bound ports and the `/p2p/`
//! suffix.

use std::net::SocketAddr;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;

/// An address others may reach: not loopback, not unspecified.
pub(super) fn is_routable_listen_addr(a: &Multiaddr) -> bool {
    a.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        _ => true,
    })
}

pub(super) fn socket_addr_of_tcp(a: &Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    for p in a.iter() {
        match p {
            Protocol::Ip4(v4) => ip = Some(std::net::IpAddr::V4(v4)),
            Protocol::Ip6(v6) => ip = Some(std::net::IpAddr::V6(v6)),
            Protocol::Tcp(port) => return ip.map(|ip| SocketAddr::new(ip, port)),
            _ => return None,
        }
    }
    None
}

/// `configured` with its port 0 replaced by the port of `bound` (same protocol).
pub(super) fn with_bound_port(configured: &Multiaddr, bound: &Multiaddr) -> Multiaddr {
    let bound_tcp = bound.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(port),
        _ => None,
    });
    let bound_udp = bound.iter().find_map(|p| match p {
        Protocol::Udp(port) => Some(port),
        _ => None,
    });
    configured
        .iter()
        .map(|p| match (p, bound_tcp, bound_udp) {
            (Protocol::Tcp(0), Some(port), _) => Protocol::Tcp(port),
            (Protocol::Udp(0), _, Some(port)) => Protocol::Udp(port),
            (p, _, _) => p,
        })
        .collect()
}

pub(super) fn without_p2p(addr: &Multiaddr) -> (Multiaddr, Option<libp2p::PeerId>) {
    let mut a = addr.clone();
    match a.iter().last() {
        Some(Protocol::P2p(id)) => {
            a.pop();
            (a, Some(id))
        }
        _ => (a, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer_id::keypair_from_seed;

    #[test]
    fn bound_ports_replace_zero() {
        let c: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let b: Multiaddr = "/ip4/127.0.0.1/tcp/4242".parse().unwrap();
        assert_eq!(
            with_bound_port(&c, &b).to_string(),
            "/ip4/127.0.0.1/tcp/4242"
        );
        let c: Multiaddr = "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.1/udp/999/quic-v1".parse().unwrap();
        assert_eq!(
            with_bound_port(&c, &b).to_string(),
            "/ip4/0.0.0.0/udp/999/quic-v1"
        );
        let fixed: Multiaddr = "/ip4/0.0.0.0/tcp/7".parse().unwrap();
        assert_eq!(with_bound_port(&fixed, &b), fixed);
    }

    #[test]
    fn tcp_socket_addrs_and_p2p_suffix() {
        let a: Multiaddr = "/ip4/127.0.0.1/tcp/4000".parse().unwrap();
        assert_eq!(
            socket_addr_of_tcp(&a),
            Some("127.0.0.1:4000".parse().unwrap())
        );
        let q: Multiaddr = "/ip4/127.0.0.1/udp/4000/quic-v1".parse().unwrap();
        assert_eq!(socket_addr_of_tcp(&q), None);
        let id = keypair_from_seed(&[1; 32]).unwrap().public().to_peer_id();
        let (bare, got) = without_p2p(&a.clone().with(Protocol::P2p(id)));
        assert_eq!((bare, got), (a.clone(), Some(id)));
        assert_eq!(without_p2p(&a), (a, None));
    }
}
