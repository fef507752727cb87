//! wspair.v1 against hostile clients: frames a well-behaved library never sends, but any
//! client can. Each test states what a node must do and fails where it does not.

use std::time::Duration;

use wspair::Role;
use wspair::config::DuplicatePolicy;

use crate::harness::process::ProcessNode;
use crate::harness::v1wire::{self, APP_KEY, WEB_KEY, ack, data, sync};
use crate::harness::{TestNode, random_channel_id};

/// A client's `sync` with `tx.base == tx.next == 2^60` passes every check, but the node's
/// window acknowledges up to `base - 1` one position at a time: each such frame pins a runtime
/// worker. A handful of them (one per worker) and the node answers nobody.
#[tokio::test]
async fn a_sync_far_ahead_does_not_pin_the_node() {
    let node = ProcessNode::start(&[]);
    let far = 1u64 << 60;
    let mut attackers = Vec::new();
    for i in 0..8u64 {
        let id = random_channel_id();
        let mut wire = v1wire::connect(&node.url(Role::App, &id), APP_KEY + u128::from(i), 1).await;
        wire.welcomed().await;
        attackers.push(wire);
    }
    for (i, wire) in (0u128..).zip(attackers.iter_mut()) {
        wire.send(sync(v1wire::sid(APP_KEY + i), 1, far, far, None))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Anyone else: upgraded and welcomed within 5 s, as on an idle node.
    let id = random_channel_id();
    let url = node.url(Role::Web, &id);
    let served = tokio::time::timeout(Duration::from_secs(5), async move {
        let mut wire = v1wire::try_connect(&url, WEB_KEY, 1).await?;
        wire.welcomed().await;
        Ok::<_, String>(())
    })
    .await;
    assert!(
        matches!(served, Ok(Ok(()))),
        "a node that got {} syncs with tx.base = 2^60 no longer serves others: {served:?}",
        attackers.len()
    );
}

/// The peer sends an ACK naming this client's sid with `hw = 2^64 - 1` before this client's
/// `sync`; the node's window for this client computes `acked + 1` and overflows. In a debug
/// build the session task panics (the victim's connection drops without a close frame); in a
/// release build the window wraps and is off for good. Either way, the victim must keep
/// working: here it syncs and its first message reaches the peer.
#[tokio::test]
async fn an_ack_of_the_largest_mark_does_not_break_the_peers_session() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;
    // The web knows the app's sid from its `peer` frame.
    web.send(ack(v1wire::sid(APP_KEY), u64::MAX)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    app.send(sync(v1wire::sid(APP_KEY), 1, 1, 1, None)).await;
    app.send(data(1, false, b"after")).await;
    let got = tokio::time::timeout(Duration::from_secs(3), web.recv()).await;
    assert!(
        got.is_ok(),
        "the app's session died after its peer relayed ACK(app sid, 2^64-1): nothing reached the web"
    );
    node.shutdown().await;
}

/// The `peer` frame tells a client its peer's sid. With `outer.on-duplicate = "reject"` a
/// client must not be able to take its peer's role with it: a connection takes over a slot as
/// the same client only by presenting that client's key, from which the sid is derived, and a
/// sid does not give the key away. (Were the sid enough, a connection with the largest
/// generation would close the real client with 4001 and refuse its reconnects with 409.)
#[tokio::test]
async fn a_peer_cannot_take_the_other_role_with_the_sid_it_was_told() {
    let node = TestNode::start(|config| config.outer.on_duplicate = DuplicatePolicy::Reject).await;
    let id = random_channel_id();
    let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 1).await;
    app.welcomed().await;
    let mut web = v1wire::connect(&node.url(Role::Web, id.as_str()), WEB_KEY, 1).await;
    let told = web.welcomed().await;
    let learnt = u64::from_str_radix(told["sid"].as_str().unwrap(), 16).unwrap();
    assert_eq!(learnt, v1wire::sid(APP_KEY));

    // The best the web can do: present what it knows as a key.
    let hijack = v1wire::try_connect(
        &node.url(Role::App, id.as_str()),
        u128::from(learnt),
        u32::MAX,
    )
    .await;
    let taken = hijack.is_ok();
    let app_ending = if taken {
        Some(app.ending().await)
    } else {
        None
    };
    let retry = v1wire::try_connect(&node.url(Role::App, id.as_str()), APP_KEY, 2)
        .await
        .err();
    assert!(
        !taken,
        "under `reject` the web took the app's slot with the app's sid (learnt from `peer`) and gen 2^32-1; \
         the app was closed with {app_ending:?}, and its next connection (gen 2) was refused: {retry:?}"
    );
    node.shutdown().await;
}
