//! Cluster mode with a real `redis-server`: pairs across nodes, duplicates, failures of nodes,
//! links and Redis.

use std::time::Duration;

use wspair::Role;
use wspair::config::DuplicatePolicy;

use crate::harness::client::Ending;
use crate::harness::http::{UPGRADE_HEADERS, request};
use crate::harness::redis::RedisServer;
use crate::harness::{TestNode, random_channel_id, wait_until};

#[tokio::test]
async fn app_and_web_on_different_nodes_relay_both_ways() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("hello across nodes").await;
    assert_eq!(web.recv_text().await, "hello across nodes");
    web.send_binary(b"and back").await;
    assert_eq!(app.recv_binary().await, b"and back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn ten_thousand_messages_each_way_cross_nodes_arrive_in_order() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let app = node_a.connect(Role::App, &id).await;
    let web = node_b.connect(Role::Web, &id).await;
    crate::harness::client::exchange(app, web, 10_000).await;
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn relaying_costs_no_redis_command_per_message() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let app = node_a.connect(Role::App, &id).await;
    let web = node_b.connect(Role::Web, &id).await;
    let route_commands =
        || redis.calls("get") + redis.calls("evalsha") + redis.calls("eval") + redis.calls("set");
    let before = route_commands();
    crate::harness::client::exchange(app, web, 2_000).await;
    // Heartbeats use evalsha on the nodes key; allow the ones that ran meanwhile, a few per
    // second per node, but nothing proportional to the 4 000 messages.
    let during = route_commands() - before;
    assert!(
        during < 40,
        "{during} route commands while relaying 4 000 messages"
    );
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn duplicate_on_another_node_with_reject_answers_409() {
    let redis = RedisServer::start();
    let reject = |c: &mut wspair::Config| c.outer.on_duplicate = DuplicatePolicy::Reject;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], reject).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], reject).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    let response = request(
        node_b.addr,
        "GET",
        &format!("/channel?type=app&channelId={id}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 409);
    assert_eq!(
        response.body.trim(),
        format!("channel {id} already has a connected app")
    );
    app.send_text("first app still paired").await;
    assert_eq!(web.recv_text().await, "first app still paired");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn duplicate_on_another_node_with_replace_closes_the_old_one_with_4001() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_c = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut old_app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    let mut new_app = node_c.connect(Role::App, &id).await;
    assert_eq!(
        old_app.ending().await,
        Ending::Close(4001, "replaced by a newer connection".into())
    );
    web.send_text("to the new app").await;
    assert_eq!(new_app.recv_text().await, "to the new app");
    new_app.send_text("from the new app").await;
    assert_eq!(web.recv_text().await, "from the new app");
    node_a.shutdown().await;
    node_b.shutdown().await;
    node_c.shutdown().await;
}

#[tokio::test]
async fn redis_down_refuses_new_connections_with_503_and_existing_pairs_keep_relaying() {
    let mut redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    redis.stop();
    let other = random_channel_id();
    let response = request(
        node_a.addr,
        "GET",
        &format!("/channel?type=app&channelId={other}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 503);
    assert!(
        response.body.starts_with("registry unavailable: "),
        "{}",
        response.body
    );
    // Past several heartbeats and node-ttls without Redis, the pair still relays.
    tokio::time::sleep(node_a.config.registry.node_ttl * 2).await;
    for i in 0..100 {
        app.send_text(&format!("during outage {i}")).await;
        assert_eq!(web.recv_text().await, format!("during outage {i}"));
    }
    web.send_text("back").await;
    assert_eq!(app.recv_text().await, "back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn redis_restarted_empty_keeps_pairs_and_every_node_registers_again() {
    let mut redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    redis.restart();
    assert_eq!(redis.cli(&["DBSIZE"]).unwrap().trim(), "0");
    app.send_text("after the restart").await;
    assert_eq!(web.recv_text().await, "after the restart");
    // The nodes notice at their next heartbeat and write their routes again.
    let app_key = format!("wspair:{{{id}}}:app");
    wait_until("the app's route to be registered again", || {
        redis
            .cli(&["EXISTS", &app_key])
            .is_some_and(|reply| reply.trim() == "1")
    })
    .await;
    // A new web on node B finds the app through the re-registered route.
    drop(web);
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("to the new web").await;
    assert_eq!(web.recv_text().await, "to the new web");
    node_a.shutdown().await;
    node_b.shutdown().await;
}
