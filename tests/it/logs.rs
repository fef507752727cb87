//! The log as operators read it, from a real process's stderr: one line per session open and
//! close with what it carried, JSON when asked, and an outage that is a few lines, not one per
//! session.

use std::time::Duration;

use wspair::Role;

use crate::harness::process::ProcessNode;
use crate::harness::redis::RedisServer;
use crate::harness::{Client, process_cluster_args, random_channel_id};

/// Waits until `node` has logged `count` lines containing `fragment`; returns them.
async fn logged(node: &ProcessNode, fragment: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let lines = node.log_lines(fragment);
        if lines.len() >= count {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {count} lines with {fragment:?}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_with_what_each_session_carried() {
    let node = ProcessNode::start(&["--log-format", "json"]);
    let id = random_channel_id();
    let mut app = Client::connect(&node.url(Role::App, &id)).await;
    let mut web = Client::connect(&node.url(Role::Web, &id)).await;
    app.send_text("twelve bytes").await;
    assert_eq!(web.recv_text().await, "twelve bytes");
    app.close().await;
    web.close().await;
    let closed = logged(&node, "session closed", 2).await;
    for line in node.log_lines("") {
        serde_json::from_str::<serde_json::Value>(&line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    let app_line: serde_json::Value = closed
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["role"] == "app")
        .expect("the app's closing line");
    assert_eq!(app_line["channel_id"], id.to_string());
    assert_eq!(app_line["messages_in"], 1);
    assert_eq!(app_line["bytes_in"], 12);
    assert_eq!(app_line["messages_out"], 0);
    assert_eq!(app_line["code"], 1000);
    assert!(app_line["duration_ms"].is_u64(), "{app_line}");
    assert!(
        app_line["node"].as_str().is_some_and(|n| n.len() == 16),
        "{app_line}"
    );
    assert!(
        app_line["remote_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
    let opened = node.log_lines("session opened");
    assert_eq!(opened.len(), 2, "{opened:?}");
}

#[tokio::test]
async fn a_redis_outage_is_a_few_lines_not_one_per_session() {
    let mut redis = RedisServer::start();
    let args = process_cluster_args(&redis.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = ProcessNode::start(&args);
    let mut clients = Vec::new();
    for _ in 0..100 {
        let id = random_channel_id();
        clients.push(Client::connect(&node.url(Role::App, &id)).await);
        clients.push(Client::connect(&node.url(Role::Web, &id)).await);
    }
    redis.stop();
    // Heartbeats fail every 400 ms (registry.node-ttl 2 s) and each closing session fails to
    // release its route: without the throttle, over two hundred lines.
    for client in clients {
        client.close().await;
    }
    logged(&node, "session closed", 200).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let releases = node.log_lines("route release failed");
    let heartbeats = node.log_lines("registry heartbeat failed");
    assert_eq!(releases.len(), 1, "{releases:?}");
    assert!(
        !heartbeats.is_empty() && heartbeats.len() <= 2,
        "{heartbeats:?}"
    );
    let warnings = node.log_lines("WARN");
    assert!(
        warnings.len() <= 6,
        "{} warnings: {warnings:#?}",
        warnings.len()
    );
}
