//! Pairing and relaying: both directions, order, opcodes, reconnects and duplicates.

use wspair::Role;
use wspair::config::DuplicatePolicy;

use crate::harness::client::Ending;
use crate::harness::http::{UPGRADE_HEADERS, abandoned_upgrade, request};
use crate::harness::{TestNode, random_channel_id, read, wait_until};

#[tokio::test]
async fn app_and_web_of_one_channel_relay_both_ways() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("hello from app").await;
    assert_eq!(web.recv_text().await, "hello from app");
    web.send_text("hello from web").await;
    assert_eq!(app.recv_text().await, "hello from web");
    node.shutdown().await;
}

#[tokio::test]
async fn text_and_binary_keep_their_opcode_and_bytes() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let binary: Vec<u8> = (0..=255).collect();
    app.send_binary(&binary).await;
    app.send_text("текст ✓").await;
    app.send_binary(&[]).await;
    assert_eq!(web.recv_binary().await, binary);
    assert_eq!(web.recv_text().await, "текст ✓");
    assert_eq!(web.recv_binary().await, Vec::<u8>::new());
    node.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_messages_each_way_arrive_complete_and_in_order() {
    const N: usize = 10_000;
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let app = node.connect(Role::App, &id).await;
    let web = node.connect(Role::Web, &id).await;
    crate::harness::client::exchange(app, web, N).await;
    node.shutdown().await;
}

#[tokio::test]
async fn messages_without_a_peer_are_dropped_and_counted() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    app.send_text("nobody hears this").await;
    let metrics = node.metrics.clone();
    crate::harness::wait_until("the drop to be counted", || {
        crate::harness::read(&metrics.messages_dropped_no_peer) == 1
    })
    .await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("now you do").await;
    assert_eq!(web.recv_text().await, "now you do");
    node.shutdown().await;
}

#[tokio::test]
async fn peer_close_leaves_the_other_connected_and_a_reconnect_pairs_again() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let web = node.connect(Role::Web, &id).await;
    web.close().await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("after reconnect").await;
    assert_eq!(web.recv_text().await, "after reconnect");
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
    node.shutdown().await;
}

#[tokio::test]
async fn duplicate_with_replace_closes_the_old_client_with_4001() {
    let node = TestNode::start(|c| c.outer.on_duplicate = DuplicatePolicy::Replace).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut old_web = node.connect(Role::Web, &id).await;
    let mut new_web = node.connect(Role::Web, &id).await;
    assert_eq!(
        old_web.ending().await,
        Ending::Close(4001, "replaced by a newer connection".into())
    );
    app.send_text("to the newest").await;
    assert_eq!(new_web.recv_text().await, "to the newest");
    node.shutdown().await;
}

/// Regression: with `replace`, the old session was evicted when the new one was claimed, before
/// its 101 was on the wire; a client that gave up mid-upgrade closed the working one for nothing.
#[tokio::test]
async fn a_replacement_that_gives_up_mid_upgrade_leaves_the_old_client_paired() {
    let node = TestNode::start(|c| c.outer.on_duplicate = DuplicatePolicy::Replace).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    abandoned_upgrade(node.addr, &format!("/channel?type=web&channelId={id}")).await;
    wait_until("the abandoned upgrade to fail", || {
        read(&node.metrics.upgrades_failed) == 1
    })
    .await;
    app.send_text("still paired").await;
    assert_eq!(web.recv_text().await, "still paired");
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
    assert_eq!(read(&node.metrics.sessions_replaced), 0);
    node.shutdown().await;
}

#[tokio::test]
async fn duplicate_with_reject_answers_409_and_keeps_the_first() {
    let node = TestNode::start(|c| c.outer.on_duplicate = DuplicatePolicy::Reject).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let target = format!("/channel?type=web&channelId={id}");
    let response = request(node.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(response.status, 409);
    assert_eq!(
        response.body.trim(),
        format!("channel {id} already has a connected web")
    );
    app.send_text("still paired").await;
    assert_eq!(web.recv_text().await, "still paired");
    node.shutdown().await;
}
