//! Device linking between two nodes on the in-memory network: a code made on
//! one and accepted on the other makes both own devices, durably; a wrong,
//! replayed, expired or mistyped code is refused with its typed error.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{immediate_net, node_on, test_config, wait_until};
use ecomesh_identity::Identity;
use ecomesh_sync::{DEFAULT_LINK_TTL, LinkCode, LinkError, SECRET_LEN, SyncError, Trust};

const LIMIT: Duration = Duration::from_secs(20);

fn link_error(r: Result<ecomesh_sync::OwnDevice, SyncError>) -> LinkError {
    match r {
        Err(SyncError::Link(e)) => e,
        other => panic!("expected a link error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_links_two_nodes_once_and_the_link_survives_a_restart() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ia, ib, ic) = (
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
        Identity::generate().unwrap(),
    );
    let dir_c = tempfile::tempdir().unwrap();
    let net = immediate_net();
    let a = node_on(&net, &ia, dirs.0.path(), test_config()).await;
    let b = node_on(&net, &ib, dirs.1.path(), test_config()).await;
    let c = node_on(&net, &ic, dir_c.path(), test_config()).await;
    wait_until(LIMIT, "the nodes see each other", || {
        let (a, b, c) = (a.clone(), b.clone(), c.clone());
        async move { a.peers().len() == 2 && b.peers().len() == 2 && c.peers().len() == 2 }
    })
    .await;
    assert_eq!(a.relationship(&ib.peer_id()), Trust::Stranger);
    assert_eq!(a.presence_key(), None);

    let code = a.link_new(None, DEFAULT_LINK_TTL).unwrap();
    let text = code.to_string();
    let typed: LinkCode = text.to_lowercase().parse().unwrap();
    let on_b = b.link_accept(&code, LIMIT).await.unwrap();
    assert_eq!(on_b.peer_id, ia.peer_id());
    let on_a = a.link_wait(&code, LIMIT).await.unwrap();
    assert_eq!(on_a.peer_id, ib.peer_id());
    assert_eq!(
        b.own_devices()
            .iter()
            .map(|d| d.peer_id)
            .collect::<Vec<_>>(),
        vec![ia.peer_id()]
    );
    assert_eq!(
        a.own_devices()
            .iter()
            .map(|d| d.peer_id)
            .collect::<Vec<_>>(),
        vec![ib.peer_id()]
    );
    assert_eq!(a.relationship(&ib.peer_id()), Trust::OwnDevice);
    assert_eq!(b.relationship(&ia.peer_id()), Trust::OwnDevice);
    assert_eq!(a.relationship(&ic.peer_id()), Trust::Stranger);
    assert_eq!(a.user_label(), Some(format!("user:{}", ia.peer_id())));
    assert_eq!(a.user_label(), b.user_label());
    assert!(a.presence_key().is_some());
    assert_eq!(a.presence_key(), b.presence_key());

    // The same code again, from another device: used.
    assert_eq!(
        link_error(c.link_accept(&typed, LIMIT).await),
        LinkError::AlreadyUsed
    );
    // Another secret naming A: A knows no such code.
    let wrong = LinkCode::new([0x5A; SECRET_LEN], &ia.peer_id(), None);
    assert_eq!(
        link_error(c.link_accept(&wrong, LIMIT).await),
        LinkError::WrongCode
    );
    // A code whose lifetime (1 ms) is over by the time it is presented:
    // waiting on it on A returns once the lifetime has passed (presenting it
    // within the same millisecond would still be in time).
    let short = a.link_new(None, Duration::from_millis(1)).unwrap();
    assert_eq!(
        link_error(a.link_wait(&short, LIMIT).await),
        LinkError::Expired
    );
    assert_eq!(
        link_error(c.link_accept(&short, LIMIT).await),
        LinkError::Expired
    );
    // A node's own code.
    let own = a.link_new(None, DEFAULT_LINK_TTL).unwrap();
    assert_eq!(
        link_error(a.link_accept(&own, LIMIT).await),
        LinkError::OwnCode
    );
    // A mistyped code never leaves the device.
    let mut chars: Vec<char> = own.to_string().chars().collect();
    chars[3] = if chars[3] == '7' { '8' } else { '7' };
    assert!(matches!(
        chars.into_iter().collect::<String>().parse::<LinkCode>(),
        Err(LinkError::InvalidCode(_))
    ));
    assert!(c.own_devices().is_empty());
    assert_eq!(c.relationship(&ia.peer_id()), Trust::Stranger);

    // Durable: both read the link back after a restart.
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    drop((a, b));
    let net2 = immediate_net();
    let a = node_on(&net2, &ia, dirs.0.path(), test_config()).await;
    let b = node_on(&net2, &ib, dirs.1.path(), test_config()).await;
    assert_eq!(a.relationship(&ib.peer_id()), Trust::OwnDevice);
    assert_eq!(b.relationship(&ia.peer_id()), Trust::OwnDevice);
    assert_eq!(a.presence_key(), b.presence_key());
    // The issuer's open codes do not survive its restart.
    assert_eq!(
        link_error(a.link_wait(&own, LIMIT).await),
        LinkError::WrongCode
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepting_waits_for_the_issuer_and_gives_up_when_it_never_appears() {
    let dir = tempfile::tempdir().unwrap();
    let net = immediate_net();
    let b = node_on(
        &net,
        &Identity::generate().unwrap(),
        dir.path(),
        test_config(),
    )
    .await;
    let absent = Identity::generate().unwrap();
    let code = LinkCode::new([1; SECRET_LEN], &absent.peer_id(), None);
    assert_eq!(
        link_error(b.link_accept(&code, Duration::from_millis(300)).await),
        LinkError::Unreachable
    );
    b.shutdown().await.unwrap();
}
