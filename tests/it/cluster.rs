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
