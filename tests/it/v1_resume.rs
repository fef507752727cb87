//! wspair.v1 under faults, with the Rust client library: reconnects to the same and to
//! another node, nodes killed with -9 (separate processes), both sides moving at once. Every
//! test checks, per direction, that each message arrived exactly once and in order, that
//! nothing was acknowledged before it was delivered, and that both outboxes emptied.

use std::time::Duration;

use wspair_client::Role;

use crate::harness::process::ProcessNode;
use crate::harness::redis::RedisServer;
use crate::harness::v1flow::{self, base_url};
use crate::harness::{TestNode, random_channel_id};

#[tokio::test]
async fn reconnects_to_the_same_and_to_another_node_lose_and_repeat_nothing() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    // The app alternates between the nodes; the web always comes back to B.
    let app = v1flow::connect(
        &[base_url(a.addr), base_url(b.addr)],
        id.as_str(),
        Role::App,
    )
    .await;
    let web = v1flow::connect(&[base_url(b.addr)], id.as_str(), Role::Web).await;
    let n = 20_000;
    let flow = v1flow::start(app, web, n);
    for round in 1..=6 {
        flow.wait_for(n * round / 8, Duration::from_secs(30)).await;
        if round % 2 == 0 {
            flow.web.handle.reconnect().await;
        } else {
            flow.app.handle.reconnect().await;
        }
    }
    let outcome = flow.finish().await;
    assert!(outcome.app.stats().reconnects >= 3);
    assert!(outcome.web.stats().reconnects >= 3);
    a.shutdown().await;
    b.shutdown().await;
}

/// Which node a kill takes down.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The node of the app, which sends as much as it receives.
    AppsNode,
    /// The node of the web.
    WebsNode,
    /// The node holding both.
    Both,
}

/// Three nodes as processes; the app and the web on the nodes `victim` says, a load both
/// ways, and the victim killed with -9 mid-stream.
async fn kill_mid_stream(victim: Victim) {
    let redis = RedisServer::start();
    let args = crate::harness::process_cluster_args(&redis.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut nodes: Vec<ProcessNode> = (0..3).map(|_| ProcessNode::start(&args)).collect();
    let urls: Vec<String> = nodes.iter().map(|node| base_url(node.addr)).collect();
    // Node 0 is the victim; each client lists its first node, then the others.
    let (app_first, web_first) = match victim {
        Victim::AppsNode => (0, 1),
        Victim::WebsNode => (1, 0),
        Victim::Both => (0, 0),
    };
    let rotate =
        |first: usize| -> Vec<String> { (0..3).map(|i| urls[(first + i) % 3].clone()).collect() };
    let id = random_channel_id();
    let app = v1flow::connect(&rotate(app_first), id.as_str(), Role::App).await;
    let web = v1flow::connect(&rotate(web_first), id.as_str(), Role::Web).await;
    let n = 20_000;
    let flow = v1flow::start(app, web, n);
    flow.wait_for(n / 3, Duration::from_secs(30)).await;
    nodes[0].kill9();
    assert!(
        flow.app.delivered() < n && flow.web.delivered() < n,
        "the kill came mid-stream"
    );
    let outcome = flow.finish().await;
    let moved = |stats: wspair_client::Stats| stats.reconnects;
    match victim {
        Victim::AppsNode => assert!(moved(outcome.app.stats()) >= 1),
        Victim::WebsNode => assert!(moved(outcome.web.stats()) >= 1),
        Victim::Both => {
            assert!(moved(outcome.app.stats()) >= 1);
            assert!(moved(outcome.web.stats()) >= 1);
        }
    }
}

#[tokio::test]
async fn killing_the_senders_node_loses_and_repeats_nothing() {
    kill_mid_stream(Victim::AppsNode).await;
}

#[tokio::test]
async fn killing_the_receivers_node_loses_and_repeats_nothing() {
    kill_mid_stream(Victim::WebsNode).await;
}

#[tokio::test]
async fn killing_the_node_holding_both_loses_and_repeats_nothing() {
    kill_mid_stream(Victim::Both).await;
}
