//! The admin listener through real HTTP: the probes, `/metrics` (checked with `promtool`), the
//! token, and the admin API (sessions, channels, closing a channel, drain, configuration).

use std::net::SocketAddr;
use std::time::Duration;

use wspair::Role;

use crate::harness::client::Ending;
use crate::harness::http::{RawResponse, request};
use crate::harness::redis::RedisServer;
use crate::harness::v1flow::{self, base_url};
use crate::harness::{TestNode, random_channel_id, wait_until};

const TOKEN: &str = "an-admin-token-for-tests";

async fn node_with_token() -> TestNode {
    TestNode::start(|config| config.admin.token = TOKEN.into()).await
}

fn admin(node: &TestNode) -> SocketAddr {
    node.admin_addr.expect("the admin listener is on")
}

/// `method target` on the admin listener, with the token.
async fn call(node: &TestNode, method: &str, target: &str) -> RawResponse {
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    request(admin(node), method, target, &auth).await
}

fn body(response: &RawResponse) -> serde_json::Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

/// Polls `GET /admin/drain` until the drain is done, at most `within`; returns the last
/// progress read (not done if it timed out).
async fn drain_progress_once_done(node: &TestNode, within: Duration) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let progress = body(&call(node, "GET", "/admin/drain").await);
        if progress["done"] == true || std::time::Instant::now() >= deadline {
            return progress;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn probes_are_open_and_everything_else_needs_the_token() {
    let node = node_with_token().await;
    let healthz = request(admin(&node), "GET", "/healthz", "").await;
    assert_eq!(healthz.status, 200);
    let readyz = request(admin(&node), "GET", "/readyz", "").await;
    assert_eq!(
        (readyz.status, body(&readyz)["ready"].as_bool()),
        (200, Some(true))
    );
    for target in ["/metrics", "/admin/sessions", "/admin/config"] {
        let refused = request(admin(&node), "GET", target, "").await;
        assert_eq!(refused.status, 401, "{target}");
        assert_eq!(refused.header("WWW-Authenticate"), Some("Bearer"));
        let wrong = request(
            admin(&node),
            "GET",
            target,
            "Authorization: Bearer wrong-token-of-length\r\n",
        )
        .await;
        assert_eq!(wrong.status, 401, "{target}");
    }
    let config = call(&node, "GET", "/admin/config").await;
    assert_eq!(config.status, 200);
    let config = body(&config);
    // Secrets are redacted (tests set the token after loading; `tools::` checks the redaction).
    assert!(config["admin.token"].is_string());
    assert_eq!(config["outer.path"], "/channel");
    assert_eq!(call(&node, "GET", "/admin/nothing").await.status, 404);
    assert_eq!(call(&node, "DELETE", "/admin/sessions").await.status, 405);
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_count_what_happened_and_pass_promtool() {
    let node = node_with_token().await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    app.send_text("nobody here yet").await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("hello").await;
    assert_eq!(web.recv_text().await, "hello");
    let refused = request(node.addr, "GET", "/channel?type=app", "").await;
    assert_eq!(refused.status, 400);
    wait_until("the drop is counted", || {
        crate::harness::read(&node.metrics.messages_dropped_no_peer) == 1
    })
    .await;

    // The app leaves: its session's message sizes and duration are in the histograms.
    app.close().await;
    wait_until("the app's session ends", || node.router.hub.counts().0 == 1).await;

    let scrape = call(&node, "GET", "/metrics").await;
    assert_eq!(scrape.status, 200);
    let text = scrape.body;
    for line in [
        "wspair_sessions_opened_total 2",
        "wspair_messages_relayed_total 1",
        "wspair_messages_dropped_total{reason=\"no_peer\"} 1",
        "wspair_handshakes_refused_total 1",
        "wspair_handshakes_refused_by_status_total{status=\"400\"} 1",
        "wspair_sessions_closed_total{by=\"client\",code=\"1000\"} 1",
        "wspair_connections 1",
        "wspair_pairs 0",
        "wspair_cross_node_pairs 0",
        "wspair_ready 1",
        "wspair_pairing_wait_seconds_count 1",
        "wspair_session_duration_seconds_count 1",
        "wspair_message_size_bytes_count 2",
        "wspair_message_size_bytes_sum 20.0",
        "wspair_message_size_bytes_bucket{le=\"64\"} 2",
        "wspair_message_size_bytes_bucket{le=\"+Inf\"} 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("wspair_build_info{version=\""), "{text}");

    // The format check operators run: promtool (Debian package `prometheus`).
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs: install the Debian package `prometheus` (scripts/test.sh does)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    drop(web);
    node.shutdown().await;
}

#[tokio::test]
async fn sessions_are_listed_in_pages_and_a_channel_is_closed_with_4004() {
    let node = node_with_token().await;
    let mut pairs = Vec::new();
    for _ in 0..3 {
        let id = random_channel_id();
        let app = node.connect(Role::App, &id).await;
        let web = node.connect(Role::Web, &id).await;
        pairs.push((id, app, web));
    }
    pairs.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let first = body(&call(&node, "GET", "/admin/sessions?limit=4").await);
    assert_eq!(first["total"], 6);
    let listed: Vec<(String, String)> = first["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |name: &str| s[name].as_str().unwrap().to_owned();
            (field("channel_id"), field("role"))
        })
        .collect();
    let expected: Vec<(String, String)> = pairs[..2]
        .iter()
        .flat_map(|(id, _, _)| {
            [
                (id.to_string(), "app".into()),
                (id.to_string(), "web".into()),
            ]
        })
        .collect();
    assert_eq!(listed, expected, "ordered by channel id, then role");
    let rest = body(&call(&node, "GET", "/admin/sessions?offset=4&limit=4").await);
    assert_eq!(rest["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(
        call(&node, "GET", "/admin/sessions?limit=x").await.status,
        400
    );

    let located = body(&call(&node, "GET", &format!("/admin/channels/{}", pairs[1].0)).await);
    assert_eq!(located["app"]["here"], true);
    assert_eq!(located["web"]["v1"], serde_json::Value::Null);
    let nobody = call(
        &node,
        "GET",
        &format!("/admin/channels/{}", random_channel_id()),
    )
    .await;
    let nobody = body(&nobody);
    assert!(nobody["app"].is_null() && nobody["web"].is_null());
    assert_eq!(
        call(&node, "GET", "/admin/channels/short").await.status,
        400
    );

    // Closing the first channel closes its two sessions with the operator's reason, no other.
    let (closed_id, mut app, mut web) = pairs.remove(0);
    let target = format!("/admin/channels/{closed_id}/close?reason=moving%20to%20maintenance");
    let closed = call(&node, "POST", &target).await;
    assert_eq!(body(&closed)["closed"], serde_json::json!(["app", "web"]));
    for client in [&mut app, &mut web] {
        match client.ending().await {
            Ending::Close(code, reason) => {
                assert_eq!((code, reason.as_str()), (4004, "moving to maintenance"));
            }
            Ending::NoCloseFrame => panic!("closed without a close frame"),
        }
    }
    let (_, other_app, other_web) = &mut pairs[0];
    other_app.send_text("still here").await;
    assert_eq!(other_web.recv_text().await, "still here");
    node.shutdown().await;
}

#[tokio::test]
async fn a_drain_from_the_admin_api_moves_v1_clients_under_load_and_loses_nothing() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |config| {
        config.admin.token = TOKEN.into();
        config.drain.spread = Duration::from_millis(300);
        config.drain.timeout = Duration::from_secs(20);
    })
    .await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    // Each client tries node A first, then B.
    let urls = [base_url(a.addr), base_url(b.addr)];
    let app = v1flow::connect(&urls, id.as_str(), wspair_client::Role::App).await;
    let web = v1flow::connect(&urls, id.as_str(), wspair_client::Role::Web).await;
    let raw_id = random_channel_id();
    let mut raw = a.connect(Role::App, &raw_id).await;
    let flow = v1flow::start_paced(app, web, 3000, 1000);
    flow.wait_for(300, Duration::from_secs(10)).await;

    let started = call(&a, "POST", "/admin/drain").await;
    assert_eq!(started.status, 202);
    assert_eq!(body(&started)["started_now"], true);
    let again = body(&call(&a, "POST", "/admin/drain").await);
    assert_eq!(again["started_now"], false, "a drain starts once");
    // Raw clients keep today's 1001 (drain.raw = "close"), and the node is not ready.
    assert!(matches!(raw.ending().await, Ending::Close(1001, _)));
    let readyz = request(a.admin_addr.unwrap(), "GET", "/readyz", "").await;
    assert_eq!(readyz.status, 503);
    assert_eq!(body(&readyz)["reasons"], serde_json::json!(["draining"]));
    let refused = request(
        a.addr,
        "GET",
        &format!("/channel?type=app&channelId={}", random_channel_id()),
        crate::harness::http::UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(refused.status, 503);

    let progress = drain_progress_once_done(&a, Duration::from_secs(15)).await;
    assert_eq!(progress["done"], true, "{progress}");
    assert_eq!(progress["v1_left"], 0, "{progress}");
    assert_eq!(progress["goaway_sent"], 2, "{progress}");
    // The node still runs after its drain: its admin API answers, and it has no session.
    assert_eq!(body(&call(&a, "GET", "/admin/sessions").await)["total"], 0);

    // Every message arrived exactly once and in order, each way, and every one was acked.
    let outcome = flow.finish().await;
    assert_eq!(outcome.app.stats().reconnects, 1);
    assert_eq!(outcome.web.stats().reconnects, 1);
    wait_until("the node stays up after the drain", || {
        a.admin_addr.is_some()
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The metric names in a scrape: its samples' (`name{labels} value` or `name value`), and
/// those of families declared with no sample yet (`# TYPE name counter`: a labelled family
/// nothing has counted in).
fn exported_names(scrape: &str) -> std::collections::HashSet<String> {
    let samples = scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next());
    let declared = scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next());
    samples.chain(declared).map(str::to_owned).collect()
}

#[tokio::test]
async fn the_dashboard_and_the_alert_rules_use_metrics_a_node_exports() {
    let node = node_with_token().await;
    // A labelled family shows once it has counted something: one refusal.
    assert_eq!(
        request(node.addr, "GET", "/channel?type=app", "")
            .await
            .status,
        400
    );
    let exported = exported_names(&call(&node, "GET", "/metrics").await.body);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = root.join("deploy/prometheus/wspair-alerts.yml");
    for file in [root.join("deploy/grafana/wspair.json"), rules.clone()] {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut named = 0;
        for (at, _) in text.match_indices("wspair_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            named += 1;
            assert!(
                exported.contains(&name),
                "{} uses {name}, which no node exports",
                file.display()
            );
        }
        assert!(named >= 6, "{} names few metrics", file.display());
    }
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
        .expect("promtool runs: install the Debian package `prometheus` (scripts/test.sh does)");
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    node.shutdown().await;
}

#[tokio::test]
async fn wspair_drain_asks_the_node_and_waits_until_it_has_drained() {
    let node = node_with_token().await;
    let mut raw = node.connect(Role::App, &random_channel_id()).await;
    let admin = admin(&node).to_string();
    let drain = |token: &str, wait: bool| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_wspair"));
        command.args(["drain", "--admin", &admin, "--token", token]);
        if wait {
            command.arg("--wait");
        }
        command.output()
    };
    let refused = drain("not-the-admin-token", true).await.unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let drained = tokio::time::timeout(Duration::from_secs(10), drain(TOKEN, true))
        .await
        .expect("the drain ends within drain.timeout")
        .unwrap();
    let stdout = String::from_utf8_lossy(&drained.stdout);
    assert_eq!(
        drained.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&drained.stderr)
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["done"].as_bool(), last["raw_left"].as_u64()),
        (Some(true), Some(0))
    );
    assert!(matches!(raw.ending().await, Ending::Close(1001, _)));
    node.shutdown().await;
}

/// The value of the sample `name` (exactly, labels included) in a scrape.
fn sample(scrape: &str, name: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn cluster_metrics_show_the_cross_node_pair_its_link_and_redis() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |config| {
        config.admin.token = TOKEN.into();
    })
    .await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    // The app waits on A for its web, which connects to B.
    let mut app = a.connect(Role::App, &id).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut web = b.connect(Role::Web, &id).await;
    app.send_text("across").await;
    assert_eq!(web.recv_text().await, "across");
    // A link ping goes every inner.heartbeat-interval.
    let mut scrape = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        scrape = call(&a, "GET", "/metrics").await.body;
        if sample(&scrape, "wspair_link_round_trip_seconds_count").unwrap_or(0.0) >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sample(&scrape, "wspair_cross_node_pairs"),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "wspair_links"), Some(1.0), "{scrape}");
    assert_eq!(
        sample(&scrape, "wspair_pairing_wait_seconds_count"),
        Some(1.0),
        "{scrape}"
    );
    let waited = sample(&scrape, "wspair_pairing_wait_seconds_sum").unwrap();
    assert!(waited >= 0.05, "the app waited at least 50 ms: {waited}");
    assert!(
        sample(&scrape, "wspair_link_round_trip_seconds_count").unwrap() >= 1.0,
        "{scrape}"
    );
    assert!(
        sample(&scrape, "wspair_registry_call_duration_seconds_count").unwrap() >= 2.0,
        "{scrape}"
    );
    assert_eq!(sample(&scrape, "wspair_ready"), Some(1.0));
    drop((app, web));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_drain_that_waits_for_raw_clients_ends_when_they_leave() {
    let node = TestNode::start(|config| {
        config.admin.token = TOKEN.into();
        config.drain.timeout = Duration::from_secs(20);
    })
    .await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    assert_eq!(
        call(&node, "POST", "/admin/drain?raw=maybe").await.status,
        400
    );
    assert_eq!(
        call(&node, "POST", "/admin/drain?raw=wait").await.status,
        202
    );
    // The pair is left alone and keeps relaying; the node takes no one new.
    app.send_text("still relaying").await;
    assert_eq!(web.recv_text().await, "still relaying");
    let refused = request(
        node.addr,
        "GET",
        &format!("/channel?type=app&channelId={}", random_channel_id()),
        crate::harness::http::UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(refused.status, 503);
    let progress = body(&call(&node, "GET", "/admin/drain").await);
    assert_eq!(
        (progress["raw_left"].as_u64(), progress["done"].as_bool()),
        (Some(2), Some(false))
    );
    app.close().await;
    web.close().await;
    wait_until("the drain ends once the raw clients left", || {
        node.router.hub.counts().0 == 0
    })
    .await;
    let progress = drain_progress_once_done(&node, Duration::from_secs(5)).await;
    assert_eq!(progress["done"], true, "{progress}");
    assert_eq!(progress["raw_left"], 0);
    node.shutdown().await;
}

#[tokio::test]
async fn idle_admin_connections_neither_hold_the_probes_up_nor_stay_open() {
    let node = node_with_token().await;
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(admin(&node)).await.unwrap());
    }
    let probe = tokio::time::timeout(
        Duration::from_secs(2),
        request(admin(&node), "GET", "/readyz", ""),
    )
    .await
    .expect("the probe is answered while 100 connections sit idle");
    assert_eq!(probe.status, 200);
    // A connection that sends no request head is closed after 5 s.
    use tokio::io::AsyncReadExt;
    let mut first = idle.remove(0);
    let mut answer = Vec::new();
    // Closed (after a 408, if the server says why): reading to the end finishes.
    tokio::time::timeout(Duration::from_secs(8), first.read_to_end(&mut answer))
        .await
        .expect("the node closes an idle admin connection")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_cross_node_pairing_is_one_wait_observed_by_the_node_that_waited() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |c| c.admin.token = TOKEN.into()).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |c| c.admin.token = TOKEN.into()).await;
    let id = random_channel_id();
    let mut app = a.connect(Role::App, &id).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut web = b.connect(Role::Web, &id).await;
    app.send_text("across").await;
    assert_eq!(web.recv_text().await, "across");
    let count = |s: &str| sample(s, "wspair_pairing_wait_seconds_count").unwrap();
    let on_a = count(&call(&a, "GET", "/metrics").await.body);
    let scrape_b = call(&b, "GET", "/metrics").await.body;
    let on_b = count(&scrape_b);
    drop((app, web));
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(on_a + on_b, 1.0, "one pairing, one client that waited");
}

#[tokio::test]
async fn closing_a_channel_held_elsewhere_names_the_nodes_holding_it() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |c| c.admin.token = TOKEN.into()).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = b.connect(Role::App, &id).await;
    let mut web = b.connect(Role::Web, &id).await;
    app.send_text("x").await;
    assert_eq!(web.recv_text().await, "x");
    let located: serde_json::Value =
        serde_json::from_str(&call(&a, "GET", &format!("/admin/channels/{id}")).await.body)
            .unwrap();
    assert_eq!(located["app"]["here"], false, "{located}");
    let closed = call(&a, "POST", &format!("/admin/channels/{id}/close")).await;
    let closed: serde_json::Value = serde_json::from_str(&closed.body).unwrap();
    drop((app, web));
    a.shutdown().await;
    b.shutdown().await;
    assert_eq!(
        closed["elsewhere"].as_array().map(Vec::len),
        Some(2),
        "both roles are held by node B"
    );
}

#[tokio::test]
async fn closes_are_counted_by_who_closed_and_clients_cannot_choose_series() {
    let node = TestNode::start(|c| c.admin.token = TOKEN.into()).await;
    for code in [1001u16, 4004, 4999, 3123] {
        let id = random_channel_id();
        let mut app = node.connect(Role::App, &id).await;
        use futures::SinkExt;
        app.ws
            .send(tokio_tungstenite::tungstenite::Message::Close(Some(
                tokio_tungstenite::tungstenite::protocol::CloseFrame {
                    code: code.into(),
                    reason: "bye".into(),
                },
            )))
            .await
            .unwrap();
        let _ = app.ending().await;
    }
    wait_until("sessions end", || node.router.hub.counts().0 == 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let scrape = call(&node, "GET", "/metrics").await.body;
    let lines: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("wspair_sessions_closed_total{"))
        .collect();
    node.shutdown().await;
    for (code, series) in [
        (1001, "by=\"client\",code=\"1001\""),
        (4004, "by=\"client\",code=\"application\""),
    ] {
        assert!(
            lines.iter().any(|l| l.contains(series)),
            "{code}: {lines:#?}"
        );
    }
    assert!(
        !lines.iter().any(|l| l.contains("by=\"server\"")),
        "{lines:#?}"
    );
    assert!(
        lines.contains(&"wspair_sessions_closed_total{by=\"client\",code=\"application\"} 3"),
        "4004, 4999 and 3123 share one series: {lines:#?}"
    );
}

#[tokio::test]
async fn a_route_left_by_an_ended_session_of_this_node_is_not_shown_live() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |c| c.admin.token = TOKEN.into()).await;
    let id = random_channel_id();
    let node: serde_json::Value =
        serde_json::from_str(&call(&a, "GET", "/admin/sessions").await.body).unwrap();
    let node = node["node"].as_str().unwrap().to_owned();
    // Session 7 of this node held the app and ended while Redis was unreachable.
    redis
        .cli(&["SET", &format!("wspair:{{{id}}}:app"), &format!("{node}:7")])
        .expect("redis-cli");
    let located = call(&a, "GET", &format!("/admin/channels/{id}")).await;
    let located: serde_json::Value = serde_json::from_str(&located.body).unwrap();
    a.shutdown().await;
    assert!(
        located["app"].is_null() || located["app"]["live"] == false,
        "this node holds no app: {located}"
    );
}

#[tokio::test]
async fn a_wait_for_a_peer_that_comes_back_is_observed() {
    let node = TestNode::start(|c| c.admin.token = TOKEN.into()).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let web = node.connect(Role::Web, &id).await;
    web.close().await;
    wait_until("the web's session ends", || node.router.hub.counts().0 == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_text("back").await;
    assert_eq!(web.recv_text().await, "back");
    let scrape = call(&node, "GET", "/metrics").await.body;
    let count = sample(&scrape, "wspair_pairing_wait_seconds_count").unwrap();
    assert_eq!(
        count, 2.0,
        "the first wait, and the wait for the web coming back"
    );
    let sum = sample(&scrape, "wspair_pairing_wait_seconds_sum").unwrap();
    node.shutdown().await;
    assert!(sum >= 0.3, "the app waited 300 ms for its web to come back");
}

#[tokio::test]
async fn a_v1_client_whose_channel_an_operator_closed_stops_instead_of_reconnecting() {
    let node = node_with_token().await;
    let id = random_channel_id();
    let urls = [base_url(node.addr)];
    let mut app = v1flow::connect(&urls, id.as_str(), wspair_client::Role::App).await;
    let target = format!("/admin/channels/{id}/close?reason=maintenance");
    assert_eq!(call(&node, "POST", &target).await.status, 200);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut code = None;
        while let Some(event) = app.next_event().await {
            if let wspair_client::Event::Disconnected { code: c, .. } = event {
                code = c;
            }
        }
        code
    })
    .await
    .expect("the client stops");
    assert_eq!(ended, Some(4004));
    assert_eq!(app.stats().reconnects, 0);
    wait_until("the closed session is released", || {
        node.router.hub.counts().0 == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.router.hub.counts().0, 0, "it did not come back");
    node.shutdown().await;
}
