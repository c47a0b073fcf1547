//! The BlueZ backend end to end over the stand-in BlueZ (`standin/bluez_standin.py`):
//! a private dbus-daemon with a small `org.bluez` service relaying between stand-in
//! adapters. The real bluer code path runs; only the controller is simulated.
//!
//! libdbus reads `DBUS_SYSTEM_BUS_ADDRESS` when it connects, and this crate forbids
//! `unsafe` (so no `set_var`): each test starts the stand-in, then runs its body in a
//! child process of this test binary (`--exact <name>-body --ignored`) with the
//! variable set, and asserts that child passed.
#![cfg(feature = "bluez")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ecomesh_identity::{AccessPolicy, Identity};
use ecomesh_transport_ble::bluez::BluezRadio;
use ecomesh_transport_ble::engine::EngineConfig;
use ecomesh_transport_ble::frag::Channel;
use ecomesh_transport_ble::presence::PresenceKey;
use ecomesh_transport_ble::{BleConfig, BleTransport};
use ecomesh_transport_tests::{EventLog, test_message};
use ecomesh_types::{TransportAdapter, TransportEvent};

mod standin;
use standin::Standin;

/// Runs the `#[ignore]`d test `body` of this binary with the stand-in's bus as the
/// system bus; panics (printing its output) unless it passed. Returns its stderr.
fn run_body(standin: &Standin, body: &str) -> String {
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let out = std::process::Command::new(exe)
        .args([body, "--exact", "--ignored", "--nocapture"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &standin.address)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info,ecomesh_transport_ble=debug".into()),
        )
        .output()
        .unwrap();
    eprintln!(
        "{body}: {:.1} s\n--- stdout\n{}\n--- stderr\n{}",
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{body} failed");
    // libtest reports a filtered-out name as 0 passed: make sure it ran.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 passed"),
        "{body} did not run"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `RUST_LOG` (default `info`) to stderr, which [`run_body`] prints.
fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn engine() -> EngineConfig {
    EngineConfig {
        dial_grace_ms: 600,
        reconnect_base_ms: 100,
        reconnect_max_ms: 1_000,
        connect_timeout_ms: 8_000,
        ..EngineConfig::default()
    }
}

fn transport(adapter: &str) -> BleTransport {
    let id = Identity::generate().unwrap();
    let mut cfg = BleConfig::new(PresenceKey::derive(id.peer_id().as_bytes()));
    cfg.engine = engine();
    let radio = BluezRadio::new(Some(adapter.to_owned())).unwrap();
    assert!(radio.offers_coc());
    BleTransport::new(id, AccessPolicy::Open, Arc::new(radio), cfg)
}

#[test]
fn two_transports_exchange_messages_over_standin_bluez() {
    let standin = Standin::start(2, &[]);
    let log = run_body(&standin, "two_transports_body");
    // Both radios tried to offer an L2CAP channel; the stand-in has no Bluetooth
    // sockets, so each fell back to GATT at start (and served no PSM characteristic).
    assert_eq!(
        log.matches("no L2CAP channel offered, GATT only").count(),
        2,
        "both radios fall back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by two_transports_exchange_messages_over_standin_bluez"]
async fn two_transports_body() {
    log_to_stderr();
    let (a, b) = (transport("hci0"), transport("hci1"));
    let (la, lb) = (EventLog::attach(&a), EventLog::attach(&b));
    a.start().await.unwrap();
    b.start().await.unwrap();
    let (ida, idb) = (a.peer_id(), b.peer_id());
    let t0 = Instant::now();
    // They hear each other's advertisements, one dials, Noise XX runs over the
    // stand-in's GATT writes: both report the other, authenticated.
    la.wait_discovered(0, idb, "a").await.unwrap();
    lb.wait_discovered(0, ida, "b").await.unwrap();
    eprintln!("discovered in {:.2} s", t0.elapsed().as_secs_f64());

    // Both directions, the second carrying several fragments at MTU 247.
    for (from, to, log, payload) in [
        (&a, idb, &lb, b"hello b".to_vec()),
        (&b, ida, &la, vec![7u8; 3000]),
    ] {
        let m = test_message(from.peer_id(), Some(to), payload.clone());
        let mark = log.mark();
        let t = Instant::now();
        from.send(to, m.clone()).await.unwrap();
        let got = log
            .wait_for(mark, "message", Duration::from_secs(10), |e| {
                matches!(e, TransportEvent::Message { message, .. }
                    | TransportEvent::LinkMessage { message, .. } if message.id == m.id)
            })
            .await
            .unwrap();
        match got {
            TransportEvent::Message { message, from: f }
            | TransportEvent::LinkMessage { message, from: f } => {
                assert_eq!(f, from.peer_id());
                assert_eq!(message.payload, payload);
            }
            other => panic!("unexpected {other:?}"),
        }
        eprintln!(
            "{} bytes delivered in {:.1} ms",
            payload.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    // The links run over GATT: neither side could open an L2CAP socket.
    assert!(matches!(
        a.link_channel(idb).await.unwrap(),
        Some(Channel::Gatt { .. })
    ));
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[test]
fn hostile_writes_into_the_backend_over_standin_bluez() {
    let standin = Standin::start(2, &[]);
    let log = run_body(&standin, "hostile_writes_body");
    // The engine refused what D-Bus let through, for the reasons the garbage had.
    // The stranger's flood: a device without our service loses its connection at our
    // first write to it (the credit grant), so its later fragments are each outside
    // a unit. The flood on the peer's link hits the fragment cap (the body asserts
    // the charge).
    for reason in [
        "short FIRST header",
        "unknown fragment kind",
        "CONT outside a unit",
        "unit needs more than 256 fragments",
    ] {
        assert!(log.contains(reason), "no link closed for {reason:?}");
    }
}

/// Runs `standin/hostile.py` against adapter `hci0` (ours), spoofing `peer` for the
/// garbage on the established link; returns case -> result.
fn hostile(peer: &str) -> std::collections::BTreeMap<String, String> {
    let script = standin::script().with_file_name("hostile.py");
    let bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS").unwrap();
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args([bus.as_str(), "hci0", peer])
        .output()
        .unwrap();
    eprintln!("hostile.py: {}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "hostile.py failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let case = l
                .split("\"case\": \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let result = l
                .split("\"result\": \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            (case.to_owned(), result.to_owned())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by hostile_writes_into_the_backend_over_standin_bluez"]
async fn hostile_writes_body() {
    log_to_stderr();
    let (a, b) = (transport("hci0"), transport("hci1"));
    let (la, lb) = (EventLog::attach(&a), EventLog::attach(&b));
    a.start().await.unwrap();
    b.start().await.unwrap();
    let (ida, idb) = (a.peer_id(), b.peer_id());
    la.wait_discovered(0, idb, "a").await.unwrap();
    lb.wait_discovered(0, ida, "b").await.unwrap();
    let mark = la.mark();
    // hci1's address as hci0 sees it (the stand-in numbers adapters from 02:..:01).
    let r = tokio::task::spawn_blocking(|| hostile("02:00:00:00:00:02"))
        .await
        .unwrap();
    eprintln!("{r:?}");
    let want = [
        ("offset", "org.bluez.Error.InvalidOffset"),
        ("oversized", "org.bluez.Error.InvalidValueLength"),
        ("mtu_as_string", "org.freedesktop.DBus.Error.InvalidArgs"),
        ("no_mtu", "org.freedesktop.DBus.Error.InvalidArgs"),
        (
            "device_not_a_device",
            "org.freedesktop.DBus.Error.InvalidArgs",
        ),
        // bluer reads a mistyped optional option as absent (offset 0): the value
        // passes D-Bus and the engine refuses it ("short FIRST header", outer test).
        ("offset_as_bytes", "ok"),
        ("type_unknown", "org.freedesktop.DBus.Error.InvalidArgs"),
        ("notify_without_connection", "org.bluez.Error.NotPermitted"),
    ];
    for (case, err) in want {
        assert_eq!(r.get(case).map(String::as_str), Some(err), "case {case}");
    }
    // Random bytes and the flood pass D-Bus (a write command has no answer to refuse
    // with) and are refused by the engine: see the reasons the outer test asserts.
    assert!(
        r["random_bytes"]
            .split(',')
            .all(|x| x == "ok" || x == "org.bluez.Error.Failed")
    );
    // The flood on the established link: the peer is known, so it is charged.
    let got = la
        .wait_for(
            mark,
            "misbehaved",
            Duration::from_secs(10),
            |e| matches!(e, TransportEvent::Misbehaved { peer, .. } if *peer == idb),
        )
        .await
        .unwrap();
    match got {
        TransportEvent::Misbehaved { reason, .. } => {
            assert!(
                reason.contains("unit needs more than 256 fragments"),
                "{reason}"
            )
        }
        other => panic!("unexpected {other:?}"),
    }
    // The well-behaved peer links again and traffic flows.
    la.wait_for(
        mark,
        "b back",
        Duration::from_secs(30),
        |e| matches!(e, TransportEvent::PeerDiscovered(i) if i.peer_id == idb),
    )
    .await
    .unwrap();
    let m = test_message(ida, Some(idb), b"after the garbage".to_vec());
    let mark_b = lb.mark();
    a.send(idb, m.clone()).await.unwrap();
    lb.wait_for(mark_b, "message", Duration::from_secs(10), |e| {
        matches!(e, TransportEvent::Message { message, .. }
            | TransportEvent::LinkMessage { message, .. } if message.id == m.id)
    })
    .await
    .unwrap();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}
