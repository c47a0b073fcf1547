//! Message streams (`/ecomesh/msg/1.0.0`): nodes negotiate them by protocol id, so a
//! node that does not offer them (an older node, here `message_streams: false`) still
//! exchanges messages in order with one that does, over request-response; and hostile
//! frames on a message stream (a length head over the limit, a body that is not a
//! message, garbage) end that stream without harming the node, which keeps taking
//! well-formed frames on new streams.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod common;

use std::time::Duration;

use ecomesh_transport_internet::protocol::{self, MESSAGE_PROTOCOL};
use ecomesh_transport_internet::{InternetConfig, InternetTransport};
use ecomesh_transport_tests::{EventLog, WAIT, test_message};
use ecomesh_types::{MessageId, NetworkMessage, PeerId, TransportAdapter, TransportEvent};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::Stream;
use libp2p_stream::{Control, OpenStreamError};

fn config(streams: bool) -> InternetConfig {
    InternetConfig {
        message_streams: streams,
        ..common::loopback_config(false)
    }
}

/// The ids of the messages `log` received from `peer` after `mark`, in arrival order.
fn received(log: &EventLog, mark: usize, peer: PeerId) -> Vec<MessageId> {
    log.events()[mark..]
        .iter()
        .filter_map(|e| match e {
            TransportEvent::Message { from, message } if *from == peer => Some(message.id),
            _ => None,
        })
        .collect()
}

/// Sends 60 messages of growing size from `a` to `b` one after the other and checks
/// they all arrive, in order.
async fn burst(a: &InternetTransport, b: &InternetTransport, lb: &EventLog, what: &str) {
    let mark = lb.mark();
    let sent: Vec<NetworkMessage> = (0..60_usize)
        .map(|i| test_message(a.peer_id(), Some(b.peer_id()), vec![i as u8; 10 + i * 1500]))
        .collect();
    for m in &sent {
        a.send(b.peer_id(), m.clone()).await.unwrap();
    }
    let last = sent.last().unwrap().id;
    lb.wait_message(mark, a.peer_id(), last, what)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let want: Vec<MessageId> = sent.iter().map(|m| m.id).collect();
    assert_eq!(received(lb, mark, a.peer_id()), want, "{what}: order");
}

/// A raw libp2p peer with only the stream behaviour, driven by its own task.
fn raw_peer(target: libp2p::Multiaddr) -> (libp2p::PeerId, Control) {
    let mut swarm = common::raw_swarm(libp2p_stream::Behaviour::new());
    let id = *swarm.local_peer_id();
    let control = swarm.behaviour().new_control();
    swarm.dial(target).unwrap();
    tokio::spawn(async move {
        loop {
            let ev = swarm.select_next_some().await;
            eprintln!("raw peer: {ev:?}");
        }
    });
    (id, control)
}

/// Opens a message stream to `peer`, retrying while the connection comes up.
async fn open(control: &mut Control, peer: libp2p::PeerId) -> Result<Stream, OpenStreamError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match control.open_stream(peer, MESSAGE_PROTOCOL).await {
            Err(OpenStreamError::Io(e)) if tokio::time::Instant::now() < deadline => {
                eprintln!("opening a stream to {peer}: {e}; again");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// Waits until the node ends `stream` (a read returns end-of-stream or an error).
async fn wait_ended(stream: &mut Stream, what: &str) {
    let mut buf = [0_u8; 16];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(n)) => panic!("{what}: the node wrote {n} bytes on a message stream"),
        Err(_) => panic!("{what}: the node kept the stream open"),
    }
}

fn frame_of(m: &NetworkMessage) -> Vec<u8> {
    let enc = ecomesh_wire::encode_message(m);
    let mut out = protocol::message_frame_head(enc.len(), usize::MAX >> 1)
        .unwrap()
        .to_vec();
    out.extend_from_slice(&enc);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_and_new_nodes_exchange_messages_in_order() {
    common::trace();
    let new_a = common::node(config(true)).await;
    let new_b = common::node(config(true)).await;
    let old = common::node(config(false)).await;
    let (la, lb, lo) = (
        EventLog::attach(&new_a),
        EventLog::attach(&new_b),
        EventLog::attach(&old),
    );
    eprintln!(
        "new a {} on {:?}, new b {} on {:?}, old {} on {:?}",
        new_a.peer_id(),
        new_a.listen_addrs(),
        new_b.peer_id(),
        new_b.listen_addrs(),
        old.peer_id(),
        old.listen_addrs()
    );
    new_a.dial(common::tcp_addr(&new_b)).await.unwrap();
    new_a.dial(common::tcp_addr(&old)).await.unwrap();
    lb.wait_discovered(0, new_a.peer_id(), "new b")
        .await
        .unwrap();
    lo.wait_discovered(0, new_a.peer_id(), "old").await.unwrap();
    // Streams between new nodes, requests with the old one, in both directions.
    burst(&new_a, &new_b, &lb, "new a to new b").await;
    burst(&new_b, &new_a, &la, "new b to new a").await;
    burst(&new_a, &old, &lo, "new a to old").await;
    burst(&old, &new_a, &la, "old to new a").await;

    // The protocol is negotiated by its id: offered by the new node, not by the old one.
    let (_, mut control) = raw_peer(common::tcp_addr(&new_b));
    open(&mut control, new_b.libp2p_peer_id()).await.unwrap();
    let (_, mut control) = raw_peer(common::tcp_addr(&old));
    match open(&mut control, old.libp2p_peer_id()).await {
        Err(OpenStreamError::UnsupportedProtocol(p)) => assert_eq!(p, MESSAGE_PROTOCOL),
        other => panic!(
            "the old node took a message stream: {:?}",
            other.map(|_| ())
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_end_the_stream_and_the_node_keeps_serving() {
    common::trace();
    let max_message = 64 << 10;
    let node = common::node(InternetConfig {
        max_message_size: max_message,
        ..config(true)
    })
    .await;
    let log = EventLog::attach(&node);
    let (raw, mut control) = raw_peer(common::tcp_addr(&node));
    let raw_id = ecomesh_transport_internet::peer_id::ecomesh_peer_id(&raw).unwrap();
    eprintln!(
        "node {} on {:?}, raw peer {raw_id}",
        node.peer_id(),
        node.listen_addrs()
    );
    let me = node.libp2p_peer_id();
    let ok = |n: u8| test_message(raw_id, None, vec![n; 100]);

    let mut hostile: Vec<(&str, Vec<u8>)> = vec![
        ("a 4 GiB length head", vec![0xff; 4]),
        ("a head one byte over the limit", {
            let over = u32::try_from(max_message + protocol::BODY_OVERHEAD + 1).unwrap();
            over.to_be_bytes().to_vec()
        }),
        ("an empty frame", vec![0, 0, 0, 0]),
        (
            "a hello on a message stream",
            protocol::frame(&[0x06]).unwrap(),
        ),
        (
            "a message body that does not decode",
            protocol::frame(&[0x01, 0xff, 0x00]).unwrap(),
        ),
    ];
    // A good frame ahead of garbage: the good one is delivered, then the stream ends.
    let first = ok(1);
    let mut mixed = frame_of(&first);
    mixed.extend_from_slice(&protocol::frame(&[0x7f; 9]).unwrap());
    hostile.push(("a good frame then an unknown tag", mixed));

    for (what, bytes) in hostile {
        let mut s = open(&mut control, me).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        // The node may already have reset the stream: a flush error is fine.
        let _ = s.flush().await;
        wait_ended(&mut s, what).await;
        // The node still takes a well-formed message on a fresh stream.
        let good = ok(2);
        let mark = log.mark();
        let mut s = open(&mut control, me).await.unwrap();
        s.write_all(&frame_of(&good)).await.unwrap();
        s.close().await.unwrap();
        log.wait_message(mark, raw_id, good.id, what)
            .await
            .unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
    assert!(
        received(&log, 0, raw_id).contains(&first.id),
        "the good frame before the garbage was not delivered"
    );
}
