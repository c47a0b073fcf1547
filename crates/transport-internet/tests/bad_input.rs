//! Bad request-response input: a raw libp2p peer speaks `/ecomesh/req/1.0.0` with
//! malformed and oversized frames; each is refused (the stream is reset without a
//! response), nothing is buffered beyond the configured limit, and the node keeps
//! serving well-formed requests. An ecomesh node also refuses one oversized request
//! end to end.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::io;
use std::time::Duration;

use ecomesh_transport_internet::protocol::{self, PROTOCOL};
use ecomesh_transport_internet::{InternetConfig, InternetTransport, Request, Response};
use ecomesh_types::ContentId;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, StreamProtocol, Swarm, request_response};

/// Writes the request bytes as given (no framing) and reads the raw response bytes.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        Err(io::Error::other("the raw peer serves nothing"))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut out = Vec::new();
        io.take(1 << 20).read_to_end(&mut out).await?;
        if out.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
        }
        Ok(out)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _io: &mut T,
        _res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

fn raw_swarm() -> Swarm<request_response::Behaviour<RawCodec>> {
    common::raw_swarm(request_response::Behaviour::with_codec(
        RawCodec,
        [(PROTOCOL, request_response::ProtocolSupport::Outbound)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
    ))
}

/// Sends `bytes` and returns the raw response, or the failure text.
async fn exchange(
    swarm: &mut Swarm<request_response::Behaviour<RawCodec>>,
    peer: libp2p::PeerId,
    bytes: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let id = swarm.behaviour_mut().send_request(&peer, bytes);
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                }) if request_id == id => return Ok(response),
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                    request_id,
                    error,
                    ..
                }) if request_id == id => return Err(error.to_string()),
                _ => {}
            }
        }
    })
    .await
    .expect("the exchange ends")
}

fn framed(body: &[u8]) -> Vec<u8> {
    protocol::frame(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_frames_are_refused_and_the_node_keeps_serving() {
    common::trace();
    let limit = 64 << 10;
    let node = common::node(InternetConfig {
        max_message_size: limit,
        ..common::loopback_config(false)
    })
    .await;
    let target: Multiaddr = common::tcp_addr(&node);
    let peer = node.libp2p_peer_id();
    let mut raw = raw_swarm();
    raw.dial(target).unwrap();

    let have = |n: u8| {
        protocol::encode_request(
            &Request::ShardHave {
                cid: ContentId(vec![n; 4]),
            },
            1 << 20,
        )
        .unwrap()
    };
    // Well-formed first: no handler is set, so Have(false).
    let ok = exchange(&mut raw, peer, framed(&have(1))).await.unwrap();
    assert_eq!(
        protocol::split_frame(&ok, 1 << 20)
            .unwrap()
            .map(|(b, _)| protocol::decode_response(b, 1 << 20).unwrap()),
        Some(Response::Have(false))
    );

    let mut over_limit_head = ((limit + protocol::BODY_OVERHEAD + 1) as u32)
        .to_be_bytes()
        .to_vec();
    over_limit_head.extend_from_slice(&[0x03; 1000]);
    let mut huge_push = vec![0x05, 1, 7];
    huge_push.extend(std::iter::repeat_n(0xAB, limit + protocol::BODY_OVERHEAD));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown tag", framed(&[0x7f, 1, 2, 3])),
        ("empty frame", vec![0, 0, 0, 0]),
        ("4 GiB length head", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("head just over the limit", over_limit_head),
        ("oversized push body", framed(&huge_push)),
        ("truncated body", vec![0, 0, 0, 100, 0x03, 1, 2]),
        (
            "CID too long",
            framed(&[&[0x03][..], &[9; 200][..]].concat()),
        ),
        ("garbage message", framed(&[0x01, 0xa1, 0x00])),
        ("have without CID", framed(&[0x04])),
    ];
    for (what, bytes) in cases {
        let r = exchange(&mut raw, peer, bytes).await;
        eprintln!("{what}: {r:?}");
        assert!(r.is_err(), "{what}: got a response {r:?}");
    }
    // Still serving, on the same connection or a new one.
    let ok = exchange(&mut raw, peer, framed(&have(2))).await.unwrap();
    assert_eq!(ok, framed(&[0x83, 0]));
    assert!(ecomesh_types::TransportAdapter::is_active(&node));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_between_nodes_is_refused_by_the_receiver() {
    common::trace();
    let small = common::node(InternetConfig {
        max_message_size: 64 << 10,
        ..common::loopback_config(false)
    })
    .await;
    let big = common::node(common::loopback_config(false)).await;
    let small_id = big.dial(common::tcp_addr(&small)).await.unwrap();
    let r = big
        .request(
            small_id,
            Request::ShardPush {
                cid: ContentId(vec![1; 8]),
                data: vec![0; 1 << 20],
            },
        )
        .await;
    assert!(
        r.is_err(),
        "the receiver refuses a 1 MiB push over its 64 KiB limit: {r:?}"
    );
    // The link still carries requests within the limit.
    let r = big
        .request(
            small_id,
            Request::ShardHave {
                cid: ContentId(vec![1; 8]),
            },
        )
        .await
        .unwrap();
    assert_eq!(r, Response::Have(false));
    // And the sender refuses to build a request over its own limit.
    let r = small
        .request(
            big.peer_id(),
            Request::ShardPush {
                cid: ContentId(vec![1; 8]),
                data: vec![0; 1 << 20],
            },
        )
        .await;
    assert!(r.is_err());
    let _ = InternetTransport::peer_id(&big);
}
