//! What the server answers before an upgrade: every refusal's status and reason, the health
//! document, and the handshake timeout.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::http::{UPGRADE_HEADERS, request};
use crate::harness::{EVENT_TIMEOUT, TestNode, random_channel_id};

async fn refusal(node: &TestNode, method: &str, target: &str, headers: &str) -> (u16, String) {
    let response = request(node.addr, method, target, headers).await;
    (response.status, response.body.trim_end().to_owned())
}

#[tokio::test]
async fn bad_queries_get_400_with_a_reason_naming_the_parameter() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let cases = [
        (
            format!("/channel?channelId={id}"),
            "missing query parameter `type`",
        ),
        (
            "/channel?type=app".to_owned(),
            "missing query parameter `channelId`",
        ),
        (
            format!("/channel?type=phone&channelId={id}"),
            "query parameter `type` must be `app` or `web`, got \"phone\"",
        ),
        (
            "/channel?type=app&channelId=abc".to_owned(),
            "query parameter `channelId` must be 32 characters, got 3",
        ),
        (
            format!("/channel?type=app&channelId={}-", &id.as_str()[..31]),
            "query parameter `channelId` must match [A-Za-z0-9_]{32}, found '-' at position 31",
        ),
        (
            format!("/channel?type=app&channelId={id}&channelId={id}"),
            "query parameter `channelId` is repeated",
        ),
    ];
    for (target, reason) in cases {
        assert_eq!(
            refusal(&node, "GET", &target, UPGRADE_HEADERS).await,
            (400, reason.to_owned()),
            "for {target}"
        );
    }
    node.shutdown().await;
}

#[tokio::test]
async fn wrong_path_gets_404() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let target = format!("/chat?type=app&channelId={id}");
    assert_eq!(
        refusal(&node, "GET", &target, UPGRADE_HEADERS).await,
        (
            404,
            "no such path \"/chat\"; WebSocket upgrades are served on /channel".to_owned()
        )
    );
    node.shutdown().await;
}

#[tokio::test]
async fn plain_http_to_the_path_gets_426() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let response = request(
        node.addr,
        "GET",
        &format!("/channel?type=app&channelId={id}"),
        "",
    )
    .await;
    assert_eq!(response.status, 426);
    assert_eq!(
        response.body.trim_end(),
        "this path accepts only WebSocket upgrades"
    );
    assert_eq!(response.header("upgrade"), Some("websocket"));
    node.shutdown().await;
}

#[tokio::test]
async fn other_methods_get_405() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let (status, reason) = refusal(
        &node,
        "POST",
        &format!("/channel?type=app&channelId={id}"),
        "",
    )
    .await;
    assert_eq!(
        (status, reason.as_str()),
        (
            405,
            "method POST not allowed; use GET with a WebSocket upgrade"
        )
    );
    node.shutdown().await;
}

#[tokio::test]
async fn unsupported_websocket_version_gets_426_naming_13() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let headers = UPGRADE_HEADERS.replace("Version: 13", "Version: 8");
    let response = request(
        node.addr,
        "GET",
        &format!("/channel?type=app&channelId={id}"),
        &headers,
    )
    .await;
    assert_eq!(response.status, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
    node.shutdown().await;
}

#[tokio::test]
async fn refusals_are_counted() {
    let node = TestNode::start(|_| {}).await;
    refusal(&node, "GET", "/channel", UPGRADE_HEADERS).await;
    assert_eq!(crate::harness::read(&node.metrics.handshakes_refused), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn healthz_reports_version_connections_and_pairs() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let _app = node.connect(wspair::Role::App, &id).await;
    let _web = node.connect(wspair::Role::Web, &id).await;
    let response = request(node.addr, "GET", "/healthz", "").await;
    assert_eq!(response.status, 200);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["connections"], 2);
    assert_eq!(body["pairs"], 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_connection_that_never_sends_its_request_is_dropped_after_handshake_timeout() {
    let node =
        TestNode::start(|c| c.outer.handshake_timeout = std::time::Duration::from_millis(300))
            .await;
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buffer = [0u8; 1024];
    // The server either closes silently or answers 408; both end the connection.
    loop {
        let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("the server drops the connection in time")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
    }
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    node.shutdown().await;
}

#[tokio::test]
async fn pages_from_origins_not_allowed_get_403_and_the_slot_is_untouched() {
    let node = crate::harness::TestNode::start(|config| {
        config.outer.allowed_origins =
            wspair::origins::AllowedOrigins::parse("https://app.example.com,https://*.example.org")
                .unwrap();
    })
    .await;
    let id = crate::harness::random_channel_id();
    let mut app = node.connect(wspair::Role::App, &id).await;
    let mut web = node.connect(wspair::Role::Web, &id).await;
    let target = format!("/channel?type=app&channelId={id}");
    let upgrade = |origin: &str| {
        format!(
            "{}Origin: {origin}\r\n",
            crate::harness::http::UPGRADE_HEADERS
        )
    };

    let refused = crate::harness::http::request(
        node.addr,
        "GET",
        &target,
        &upgrade("https://evil.example.com"),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body,
        "origin \"https://evil.example.com\" is not allowed (outer.allowed-origins)\n"
    );
    app.send_text("the refused upgrade took nothing").await;
    assert_eq!(web.recv_text().await, "the refused upgrade took nothing");

    let other = crate::harness::random_channel_id();
    for origin in ["https://app.example.com", "https://shop.example.org"] {
        let target = format!("/channel?type=web&channelId={other}");
        let allowed =
            crate::harness::http::request(node.addr, "GET", &target, &upgrade(origin)).await;
        assert_eq!(allowed.status, 101, "{origin}");
    }
    // No Origin: not a browser, so nothing to check.
    let mut native = node
        .connect(wspair::Role::App, &crate::harness::random_channel_id())
        .await;
    native.send_text("native").await;
    node.shutdown().await;
}
