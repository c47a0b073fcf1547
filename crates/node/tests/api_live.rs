//! The WebSocket API (`/api/v1/ws`) against real node processes: document
//! and query subscriptions, pending writes, sync events between two peers,
//! and every limit refused with a typed error while other clients are served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

mod common;

use std::time::{Duration, Instant};

use common::{Node, curl, wait_for};
use ecomesh_node::api::live::{MAX_CONNECTIONS, MAX_FRAME, MAX_SUBSCRIPTIONS};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The longest a test waits for one message.
const MESSAGE_DEADLINE: Duration = Duration::from_secs(30);

fn url(node: &Node) -> String {
    format!(
        "ws://{}/api/v1/ws?access_token={}",
        node.api_addr(),
        node.api_token()
    )
}

async fn connect(node: &Node) -> Ws {
    let (ws, resp) = tokio_tungstenite::connect_async(url(node)).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next JSON message (pings and pongs skipped); fails after [`MESSAGE_DEADLINE`].
async fn recv(ws: &mut Ws) -> Value {
    let deadline = tokio::time::Instant::now() + MESSAGE_DEADLINE;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("a message within the deadline")
            .expect("the connection is open")
            .expect("a readable frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads messages until one satisfies `pred`, returning it.
async fn recv_until(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < MESSAGE_DEADLINE, "waiting for {what}");
        let v = recv(ws).await;
        if pred(&v) {
            return v;
        }
    }
}

fn put(node: &Node, collection: &str, id: &str, fields: Value) {
    common::ok_json(
        &node.data,
        &["doc", "put", collection, id, &fields.to_string()],
    );
}

fn kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or_default()
}

fn ids(snapshot: &Value) -> Vec<String> {
    snapshot["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doc_and_query_subscriptions_follow_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);

    // The token as a header works as well as `?access_token=`.
    let mut req = format!("ws://{}/api/v1/ws", n.api_addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Authorization",
        format!("Bearer {}", n.api_token()).parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();

    send(
        &mut ws,
        json!({"type": "subscribe", "sub": "d", "doc": {"collection": "c", "id": "x"}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "subscribed", "sub": "d"})
    );
    let first = recv(&mut ws).await;
    assert_eq!(first["type"], "snapshot");
    assert_eq!(first["sub"], "d");
    assert_eq!(first["doc"], Value::Null, "x does not exist yet");
    assert_eq!(first["pending_writes"], false);

    put(&n, "c", "x", json!({"n": 1}));
    let written = recv_until(&mut ws, "x's write", |v| !v["doc"].is_null()).await;
    assert_eq!(
        written["doc"],
        json!({"collection": "c", "id": "x", "fields": {"n": 1}})
    );
    assert_eq!(
        written["pending_writes"], true,
        "no peer acknowledged the local write"
    );

    // A query: y enters it, then leaves it.
    send(
        &mut ws,
        json!({"type": "subscribe", "sub": "q", "query": {"collection": "c",
            "query": {"where": [["amount", ">", 5]], "order_by": [["amount"]]}}}),
    )
    .await;
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "subscribed", "sub": "q"})
    );
    let empty = recv(&mut ws).await;
    assert_eq!(empty["sub"], "q");
    assert_eq!(ids(&empty), Vec::<String>::new());
    put(&n, "c", "y", json!({"amount": 7}));
    let entered = recv_until(&mut ws, "y entering the query", |v| {
        v["sub"] == "q" && v["documents"].as_array().is_some_and(|d| !d.is_empty())
    })
    .await;
    assert_eq!(ids(&entered), ["y"]);
    assert_eq!(entered["documents"][0]["fields"]["amount"], 7);
    assert_eq!(entered["pending_writes"], true);
    put(&n, "c", "y", json!({"amount": 1}));
    let left = recv_until(&mut ws, "y leaving the query", |v| {
        v["sub"] == "q" && v["documents"].as_array().is_some_and(|d| d.is_empty())
    })
    .await;
    assert_eq!(
        left["pending_writes"], false,
        "no document, no pending write"
    );

    // Unsubscribe, then reuse the id for another document.
    send(&mut ws, json!({"type": "unsubscribe", "sub": "d"})).await;
    recv_until(&mut ws, "the unsubscribe ack", |v| {
        *v == json!({"type": "unsubscribed", "sub": "d"})
    })
    .await;
    send(
        &mut ws,
        json!({"type": "subscribe", "sub": "d", "doc": {"collection": "c", "id": "y"}}),
    )
    .await;
    recv_until(&mut ws, "the new ack", |v| v["type"] == "subscribed").await;
    let y = recv(&mut ws).await;
    assert_eq!(y["doc"]["id"], "y");
    assert_eq!(y["doc"]["fields"]["amount"], 1);

    // Open subscriptions do not hold up a clean shutdown, and the client sees the end.
    n.terminate();
    let end = tokio::time::timeout(MESSAGE_DEADLINE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the connection ends with the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_events_and_acknowledged_writes_between_two_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    let addr_a = a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0", "--peer", &addr_a]);
    wait_for("a and b to see each other", || {
        (a.peers() == [idb.clone()] && b.peers() == [ida.clone()]).then_some(())
    });

    let mut on_a = connect(&a).await;
    send(
        &mut on_a,
        json!({"type": "subscribe", "sub": "x", "doc": {"collection": "c", "id": "x"}}),
    )
    .await;
    assert_eq!(recv(&mut on_a).await["type"], "subscribed");
    assert_eq!(recv(&mut on_a).await["doc"], Value::Null);

    let mut on_b = connect(&b).await;
    send(
        &mut on_b,
        json!({"type": "subscribe", "sub": "ev", "sync": true}),
    )
    .await;
    assert_eq!(
        recv(&mut on_b).await,
        json!({"type": "subscribed", "sub": "ev"})
    );

    put(&a, "c", "x", json!({"from": "a"}));
    // On A: the write is pending until B acknowledges it (the pending
    // snapshot itself may be coalesced away if the acknowledgement is quicker
    // than this client; the single-node test asserts it).
    let acked = recv_until(&mut on_a, "x acknowledged by b", |v| {
        !v["doc"].is_null() && v["pending_writes"] == false
    })
    .await;
    assert_eq!(acked["doc"]["fields"]["from"], "a");

    // On B: the version arrives from A as a sync event.
    let received = recv_until(&mut on_b, "the version from a", |v| {
        v["event"]["kind"] == "version_received"
    })
    .await;
    assert_eq!(received["type"], "event");
    assert_eq!(received["sub"], "ev");
    let ev = &received["event"];
    assert_eq!(ev["collection"], "c");
    assert_eq!(ev["id"], "x");
    assert_eq!(ev["operation"], "create");
    assert_eq!(ev["peer"], ida.as_str());
    assert_eq!(ev["transport"], "wired");
    assert!(
        ev["version"]["/"]
            .as_str()
            .is_some_and(|c| c.starts_with('b'))
    );
}

/// Sends `count` subscribe frames for documents `prefix0..` while reading the
/// answers, and returns (acknowledged, refused with too_many_subscriptions).
async fn subscribe_many(ws: Ws, prefix: &str, count: usize) -> (Ws, usize, usize) {
    let (mut tx, mut rx) = ws.split();
    let frames: Vec<Message> = (0..count)
        .map(|i| {
            Message::text(
                json!({"type": "subscribe", "sub": format!("{prefix}{i}"),
                       "doc": {"collection": "many", "id": format!("{prefix}{i}")}})
                .to_string(),
            )
        })
        .collect();
    let sender = tokio::spawn(async move {
        for f in frames {
            tx.send(f).await.unwrap();
        }
        tx
    });
    let (mut acked, mut refused) = (0, 0);
    let start = Instant::now();
    while acked + refused < count {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "answers to {count} subscribes"
        );
        let m = tokio::time::timeout(MESSAGE_DEADLINE, rx.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v["type"].as_str().unwrap() {
            "subscribed" => acked += 1,
            "error" => {
                assert_eq!(kind(&v), "too_many_subscriptions", "{v}");
                assert!(v["sub"].as_str().unwrap().starts_with(prefix));
                refused += 1;
            }
            "snapshot" => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
    let tx = sender.await.unwrap();
    (tx.reunite(rx).unwrap(), acked, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_limits_get_typed_errors_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let (mut n, _) = Node::init(dir.path(), "n");
    n.start(&["--listen", "127.0.0.1:0"]);
    let mut ws = connect(&n).await;

    let cases = [
        ("{not json", None, "bad_json"),
        (
            r#"{"type": "shout", "sub": "a"}"#,
            Some("a"),
            "unknown_type",
        ),
        (r#"{"sub": "a"}"#, Some("a"), "bad_request"),
        (r#"{"type": "subscribe"}"#, None, "bad_request"),
        (
            r#"{"type": "subscribe", "sub": "a"}"#,
            Some("a"),
            "bad_request",
        ),
        (
            r#"{"type": "subscribe", "sub": "a", "doc": {"collection": "c", "id": "x"}, "sync": true}"#,
            Some("a"),
            "bad_request",
        ),
        (
            r#"{"type": "unsubscribe", "sub": "nope"}"#,
            Some("nope"),
            "unknown_subscription",
        ),
        (
            r#"{"type": "subscribe", "sub": "q", "query": {"collection": "c", "query": {"limit": 5000}}}"#,
            Some("q"),
            "page_too_large",
        ),
        (
            r#"{"type": "subscribe", "sub": "q", "query": {"collection": "c", "query": {"start_after": "!!"}}}"#,
            Some("q"),
            "bad_cursor",
        ),
    ];
    for (frame, sub, expected) in cases {
        ws.send(Message::text(frame)).await.unwrap();
        let v = recv(&mut ws).await;
        assert_eq!(v["type"], "error", "{frame}: {v}");
        assert_eq!(kind(&v), expected, "{frame}: {v}");
        assert_eq!(v["sub"].as_str(), sub, "{frame}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let long_id = "s".repeat(1000);
    send(
        &mut ws,
        json!({"type": "subscribe", "sub": long_id, "sync": true}),
    )
    .await;
    assert_eq!(kind(&recv(&mut ws).await), "bad_request");
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(kind(&recv(&mut ws).await), "bad_frame");

    // A duplicate id is refused; the first subscription stays.
    let sub = json!({"type": "subscribe", "sub": "dup", "doc": {"collection": "c", "id": "x"}});
    send(&mut ws, sub.clone()).await;
    assert_eq!(recv(&mut ws).await["type"], "subscribed");
    assert_eq!(recv(&mut ws).await["type"], "snapshot");
    send(&mut ws, sub).await;
    let dup = recv(&mut ws).await;
    assert_eq!(kind(&dup), "duplicate_subscription");
    assert_eq!(dup["sub"], "dup");

    // Thousands of subscriptions: the ones beyond the limit are refused.
    let (mut ws, acked, refused) = subscribe_many(ws, "m", 3000).await;
    assert_eq!(acked, MAX_SUBSCRIPTIONS - 1, "one was already open");
    assert_eq!(refused, 3000 - acked);
    // The connection still works: the first subscription still follows writes.
    put(&n, "c", "x", json!({"still": true}));
    let v = recv_until(&mut ws, "dup's snapshot", |v| v["sub"] == "dup").await;
    assert_eq!(v["doc"]["fields"]["still"], true);

    // Hundreds of connections: beyond the node's limit, an HTTP 503 with a typed error.
    let mut open = vec![ws];
    while open.len() < MAX_CONNECTIONS {
        open.push(connect(&n).await);
    }
    for _ in 0..50 {
        match tokio_tungstenite::connect_async(url(&n)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 503);
                let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
                assert_eq!(body["error"]["kind"], "too_many_connections");
            }
            other => panic!("expected a 503, got {:?}", other.map(|r| r.1)),
        }
    }
    // Plain HTTP is still served, and a closed connection frees its slot.
    let api = n.api_addr();
    let status = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", n.api_token()),
        &format!("http://{api}/api/v1/status"),
    ]);
    assert_eq!(status.status, 200);
    let mut first = open.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    let start = Instant::now();
    let mut fresh = loop {
        assert!(
            start.elapsed() < MESSAGE_DEADLINE,
            "a freed connection slot"
        );
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(url(&n)).await {
            break ws;
        }
        tokio::task::yield_now().await;
    };
    send(
        &mut fresh,
        json!({"type": "subscribe", "sub": "x", "doc": {"collection": "c", "id": "x"}}),
    )
    .await;
    assert_eq!(recv(&mut fresh).await["type"], "subscribed");
    assert_eq!(recv(&mut fresh).await["doc"]["fields"]["still"], true);

    // An oversized frame: a typed error, then the server closes that connection.
    let big = json!({"type": "subscribe", "sub": "big", "pad": "x".repeat(MAX_FRAME + 1)});
    fresh.send(Message::text(big.to_string())).await.unwrap();
    let v = recv(&mut fresh).await;
    assert_eq!(kind(&v), "frame_too_large", "{v}");
    let closed = tokio::time::timeout(MESSAGE_DEADLINE, fresh.next())
        .await
        .unwrap();
    assert!(
        matches!(closed, Some(Ok(Message::Close(Some(ref f)))) if u16::from(f.code) == 1009)
            || matches!(closed, None | Some(Err(_))),
        "{closed:?}"
    );
    // The other connections are unaffected.
    let mut other = open.pop().unwrap();
    send(
        &mut other,
        json!({"type": "subscribe", "sub": "s", "sync": true}),
    )
    .await;
    assert_eq!(
        recv(&mut other).await,
        json!({"type": "subscribed", "sub": "s"})
    );

    // Not an upgrade: a typed error, not a panic.
    let plain = curl(&[&format!(
        "http://{api}/api/v1/ws?access_token={}",
        n.api_token()
    )]);
    assert_eq!(plain.status, 426);
    assert_eq!(plain.json()["error"]["kind"], "upgrade_required");
    let no_token = tokio_tungstenite::connect_async(format!("ws://{api}/api/v1/ws")).await;
    assert!(matches!(
        no_token,
        Err(tokio_tungstenite::tungstenite::Error::Http(ref r)) if r.status() == 401
    ));
}

/// `PUT /api/v1/collections/{c}/docs/{id}` on `api` over one plain HTTP/1.1
/// connection; returns the status code.
async fn http_put(api: &str, token: &str, path: &str, body: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(api).await.unwrap();
    let req = format!(
        "PUT {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(MESSAGE_DEADLINE, s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// The figure of the issue's note: a write through node A's API until a
/// WebSocket query subscription on node B (peered over loopback) delivers
/// it. Run with
/// `cargo nextest run -p ecomesh-node --test api_live --run-ignored only --no-capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the latency figure"]
async fn latency_of_a_write_on_a_to_a_watched_query_on_b() {
    const WRITES: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let (mut a, ida) = Node::init(dir.path(), "a");
    let (mut b, idb) = Node::init(dir.path(), "b");
    let addr_a = a.start(&["--listen", "127.0.0.1:0"]);
    b.start(&["--listen", "127.0.0.1:0", "--peer", &addr_a]);
    wait_for("a and b to see each other", || {
        (a.peers() == [idb.clone()] && b.peers() == [ida.clone()]).then_some(())
    });
    let (api_a, token_a) = (a.api_addr(), a.api_token());
    let socket_a = a.data.join("control.sock");

    let mut on_b = connect(&b).await;
    send(
        &mut on_b,
        json!({"type": "subscribe", "sub": "lat", "query": {"collection": "lat",
            "query": {"where": [["i", ">=", 0]]}}}),
    )
    .await;
    assert_eq!(recv(&mut on_b).await["type"], "subscribed");
    assert_eq!(recv(&mut on_b).await["type"], "snapshot");

    let path = "/api/v1/collections/lat/docs/d";
    let mut through_rest = true;
    let mut took = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let body = json!({"fields": {"i": i}}).to_string();
        let start = Instant::now();
        if through_rest {
            let status = http_put(&api_a, &token_a, path, &body).await;
            if status == 404 || status == 405 {
                // The PUT route is not on this branch yet: write through the
                // control socket (what `ecomesh doc put` does) instead.
                through_rest = false;
            } else {
                assert_eq!(status, 200, "PUT {path}");
            }
        }
        if !through_rest {
            let socket = socket_a.clone();
            tokio::task::spawn_blocking(move || {
                ecomesh_node::control::call(
                    &socket,
                    &ecomesh_node::control::Request::DocPut {
                        collection: "lat".into(),
                        id: "d".into(),
                        json: json!({"i": i}).to_string(),
                        merge: false,
                    },
                )
                .unwrap()
            })
            .await
            .unwrap();
        }
        recv_until(&mut on_b, "the write on b", |v| {
            v["documents"][0]["fields"]["i"] == i
        })
        .await;
        took.push(start.elapsed());
    }
    took.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = took[WRITES / 2];
    let p95 = took[(WRITES * 95).div_ceil(100) - 1];
    eprintln!(
        "write on A ({}) until B's WebSocket query snapshot has it, {WRITES} writes over loopback: \
         median {:.1} ms, p95 {:.1} ms, min {:.1} ms, max {:.1} ms",
        if through_rest {
            "PUT /api/v1/collections/lat/docs/d"
        } else {
            "control socket DocPut, the PUT route being absent"
        },
        ms(median),
        ms(p95),
        ms(took[0]),
        ms(took[WRITES - 1]),
    );
    assert!(median < MESSAGE_DEADLINE);
}
