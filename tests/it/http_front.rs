//! The HTTP side before the upgrade is bounded and strict: one deadline from accept to
//! upgrade, one request per connection, a request head of at most `outer.max-request-head`
//! bytes, and upgrade headers checked as RFC 6455 §4 asks, each refusal with its reason.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wspair::Role;

use crate::harness::http::{RawResponse, UPGRADE_HEADERS, request, send_head};
use crate::harness::{EVENT_TIMEOUT, TestNode, random_channel_id, read};

const DEADLINE: Duration = Duration::from_millis(500);

async fn node_with_short_deadline() -> TestNode {
    TestNode::start(|c| c.outer.handshake_timeout = DEADLINE).await
}

/// A full upgrade request head for a fresh channel id, with `headers` after the request line.
fn upgrade_head(version: &str, headers: &str) -> String {
    let id = random_channel_id();
    format!("GET /channel?type=app&channelId={id} {version}\r\n{headers}\r\n")
}

fn refusal(response: &RawResponse) -> (u16, &str) {
    (response.status, response.body.trim_end())
}

/// Reads until the server closes the connection, discarding what it sends, and returns when.
async fn closed_at(stream: &mut TcpStream) -> Instant {
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut buffer))
            .await
            .expect("the server closes the connection in time");
        if !matches!(read, Ok(n) if n > 0) {
            return Instant::now();
        }
    }
}

async fn health(addr: SocketAddr) -> serde_json::Value {
    let response = request(addr, "GET", "/healthz", "").await;
    assert_eq!(response.status, 200);
    serde_json::from_str(&response.body).expect("healthz is JSON")
}

#[tokio::test]
async fn a_client_pipelining_requests_without_reading_is_closed_by_the_deadline() {
    // The bug: hyper served pipelined keep-alive requests for ever, since its header timeout
    // restarted with each request; such connections held their permit and memory forever.
    let node = node_with_short_deadline().await;
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    let requests = "GET /healthz HTTP/1.1\r\nHost: wspair\r\n\r\n".repeat(1000);
    let started = Instant::now();
    // Writes fail once the server has closed; they would block for ever on a server that
    // kept answering into a socket nobody reads.
    let writing = async { while stream.write_all(requests.as_bytes()).await.is_ok() {} };
    tokio::time::timeout(DEADLINE + Duration::from_secs(2), writing)
        .await
        .expect("the server closes a pipelining connection by its deadline");
    assert!(started.elapsed() < DEADLINE + Duration::from_secs(2));
    node.shutdown().await;
}

#[tokio::test]
async fn a_slow_head_is_closed_at_the_deadline_while_the_client_keeps_sending() {
    let node = node_with_short_deadline().await;
    let stream = TcpStream::connect(node.addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = stream.into_split();
    let writing = async move {
        let _ = writer.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").await;
        // One byte every 20 ms: the head would take minutes to reach the limit.
        while writer.write_all(b"a").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut buffer = [0u8; 256];
    let closed = tokio::select! {
        _ = writing => unreachable!("the writer never finishes"),
        read = tokio::time::timeout(EVENT_TIMEOUT, reader.read(&mut buffer)) => {
            read.expect("the server closes the connection in time")
        }
    };
    assert!(matches!(closed, Ok(0) | Err(_)), "closed without an answer");
    let elapsed = started.elapsed();
    assert!(elapsed >= DEADLINE, "closed after {elapsed:?}");
    assert!(
        elapsed < DEADLINE + Duration::from_secs(1),
        "closed after {elapsed:?}"
    );
    assert_eq!(read(&node.metrics.handshakes_timed_out), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_head_over_the_limit_gets_431_naming_the_limit() {
    let node = TestNode::start(|_| {}).await;
    let big = format!("X-Big: {}\r\n", "a".repeat(9 * 1024));
    let response = request(node.addr, "GET", "/healthz", &big).await;
    assert_eq!(
        refusal(&response),
        (
            431,
            "request head exceeds outer.max-request-head (8192 bytes)"
        )
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert_eq!(
        response.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert!(response.header("date").is_some());
    assert_eq!(read(&node.metrics.request_heads_too_large), 1);
    assert_eq!(read(&node.metrics.handshakes_refused), 1);
    node.shutdown().await;
}

#[tokio::test]
async fn a_request_target_over_the_limit_gets_414_naming_the_limit() {
    let node = TestNode::start(|_| {}).await;
    let target = format!("/channel?pad={}", "a".repeat(9 * 1024));
    let response = request(node.addr, "GET", &target, UPGRADE_HEADERS).await;
    assert_eq!(
        refusal(&response),
        (
            414,
            "request line exceeds outer.max-request-head (8192 bytes)"
        )
    );
    assert_eq!(response.header("connection"), Some("close"));
    node.shutdown().await;
}

#[tokio::test]
async fn a_head_of_exactly_the_limit_upgrades_and_one_byte_more_gets_431() {
    let node = TestNode::start(|c| c.outer.max_request_head = 2048).await;
    let padded = |length: usize| {
        let head = upgrade_head(
            "HTTP/1.1",
            &format!("Host: wspair\r\n{UPGRADE_HEADERS}X-Pad: \r\n"),
        );
        let pad = "p".repeat(length - head.len());
        let head = head.replace("X-Pad: ", &format!("X-Pad: {pad}"));
        assert_eq!(head.len(), length);
        head
    };
    assert_eq!(send_head(node.addr, &padded(2048)).await.status, 101);
    let response = send_head(node.addr, &padded(2049)).await;
    assert_eq!(
        refusal(&response),
        (
            431,
            "request head exceeds outer.max-request-head (2048 bytes)"
        )
    );
    node.shutdown().await;
}

#[tokio::test]
async fn more_than_100_header_fields_get_431_with_a_reason() {
    let node = TestNode::start(|_| {}).await;
    // The upgrade itself has 5 fields (Host and UPGRADE_HEADERS).
    let fields = |n: usize| (0..n).map(|i| format!("X-{i}: x\r\n")).collect::<String>();
    let head = |n| {
        upgrade_head(
            "HTTP/1.1",
            &format!("Host: wspair\r\n{UPGRADE_HEADERS}{}", fields(n)),
        )
    };
    assert_eq!(send_head(node.addr, &head(95)).await.status, 101);
    assert_eq!(
        refusal(&send_head(node.addr, &head(96)).await),
        (431, "request head has more than 100 header fields")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_malformed_head_gets_400_with_a_reason() {
    let node = TestNode::start(|_| {}).await;
    let response = send_head(node.addr, "GET /healthz HTTP/1.1\r\nBad Name: x\r\n\r\n").await;
    assert_eq!(
        refusal(&response),
        (400, "malformed request head: invalid header name")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_upgrade_without_host_gets_400_naming_the_header() {
    let node = TestNode::start(|_| {}).await;
    let response = send_head(node.addr, &upgrade_head("HTTP/1.1", UPGRADE_HEADERS)).await;
    assert_eq!(refusal(&response), (400, "missing header `Host`"));
    let twice = format!("Host: a\r\nHost: b\r\n{UPGRADE_HEADERS}");
    let response = send_head(node.addr, &upgrade_head("HTTP/1.1", &twice)).await;
    assert_eq!(refusal(&response), (400, "header `Host` is repeated"));
    node.shutdown().await;
}

#[tokio::test]
async fn keys_that_are_not_base64_of_16_bytes_get_400_with_a_reason() {
    let node = TestNode::start(|_| {}).await;
    let not_base64 = "header `Sec-WebSocket-Key` is not the base64 encoding of 16 bytes";
    let cases = [
        (
            "abc",
            "header `Sec-WebSocket-Key` must be 24 characters (base64 of 16 bytes), got 3",
        ),
        // base64 of 15 bytes.
        (
            "AAECAwQFBgcICQoLDA0O",
            "header `Sec-WebSocket-Key` must be 24 characters (base64 of 16 bytes), got 20",
        ),
        // base64 of 17 bytes.
        ("AAECAwQFBgcICQoLDA0ODxA=", not_base64),
        ("AAECAwQFBgcICQoLDA0O!!==", not_base64),
    ];
    for (key, reason) in cases {
        let headers =
            format!("Host: wspair\r\n{UPGRADE_HEADERS}").replace("dGhlIHNhbXBsZSBub25jZQ==", key);
        let response = send_head(node.addr, &upgrade_head("HTTP/1.1", &headers)).await;
        assert_eq!(refusal(&response), (400, reason), "for key {key}");
    }
    let without = format!("Host: wspair\r\n{UPGRADE_HEADERS}")
        .replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
    let response = send_head(node.addr, &upgrade_head("HTTP/1.1", &without)).await;
    assert_eq!(
        refusal(&response),
        (400, "missing header `Sec-WebSocket-Key`")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn an_http_1_0_upgrade_gets_400() {
    let node = TestNode::start(|_| {}).await;
    let headers = format!("Host: wspair\r\n{UPGRADE_HEADERS}");
    let response = send_head(node.addr, &upgrade_head("HTTP/1.0", &headers)).await;
    assert_eq!(
        refusal(&response),
        (400, "WebSocket upgrades need HTTP/1.1, got HTTP/1.0")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn healthz_answers_get_and_head_closes_and_refuses_other_methods_with_405() {
    let node = TestNode::start(|_| {}).await;
    let response = request(node.addr, "GET", "/healthz", "").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));

    let response = request(node.addr, "POST", "/healthz", "").await;
    assert_eq!(
        refusal(&response),
        (405, "method POST not allowed on /healthz; use GET or HEAD")
    );
    assert_eq!(response.header("allow"), Some("GET, HEAD"));

    // HEAD: the headers of the GET answer and no body; the server then closes.
    let mut stream = TcpStream::connect(node.addr).await.unwrap();
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: wspair\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("content-length: "), "{answer}");
    assert!(answer.ends_with("\r\n\r\n"), "no body: {answer}");
    node.shutdown().await;
}

/// Polls `/healthz` until it reports `n` connections handshaking; panics naming `what`.
async fn wait_for_handshaking(addr: SocketAddr, n: u64, what: &str) {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let seen = health(addr).await["handshaking"].as_u64().unwrap();
        if seen == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: handshaking is {seen}, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn healthz_counts_connections_until_they_upgrade_or_close() {
    let node = TestNode::start(|_| {}).await;
    // The connection asking is one of them.
    wait_for_handshaking(node.addr, 1, "no other connection").await;
    let idle = TcpStream::connect(node.addr).await.unwrap();
    wait_for_handshaking(node.addr, 2, "an idle connection is counted").await;
    drop(idle);
    wait_for_handshaking(node.addr, 1, "a closed connection is not counted").await;
    let _app = node.connect(Role::App, &random_channel_id()).await;
    wait_for_handshaking(node.addr, 1, "an upgraded connection is not counted").await;
    assert_eq!(health(node.addr).await["connections"], 1);
    node.shutdown().await;
}

#[tokio::test]
async fn idle_connections_holding_every_permit_are_dropped_at_the_deadline() {
    let node = TestNode::start(|c| {
        c.outer.handshake_timeout = DEADLINE;
        c.outer.max_connections = 3;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(node.addr).await.unwrap());
    }
    // Once the three are accepted, a fourth connection is told at once that the node is full,
    // instead of waiting in the backlog.
    let started = Instant::now();
    let full = loop {
        let answer = request(node.addr, "GET", "/healthz", "").await;
        if answer.status != 200 || started.elapsed() > EVENT_TIMEOUT {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        refusal(&full),
        (
            503,
            "this node is full: outer.max-connections (3) connections are open; retry or connect to another node"
        )
    );
    assert_eq!(read(&node.metrics.connections_refused_full), 1);
    for stream in &mut idle {
        closed_at(stream).await;
    }
    assert_eq!(read(&node.metrics.handshakes_timed_out), 3);
    // Their permits are back.
    let _app = node.connect(Role::App, &random_channel_id()).await;
    node.shutdown().await;
}

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("a loopback source address");
    socket.connect(addr).await.unwrap()
}

/// Sends a health request on `stream` and reads the answer.
async fn ask(mut stream: TcpStream) -> RawResponse {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: wspair\r\n\r\n")
        .await
        .unwrap();
    crate::harness::http::read_response(&mut stream).await
}

#[tokio::test]
async fn one_address_gets_429_over_its_connection_limit_while_others_connect() {
    let node = TestNode::start(|c| c.outer.max_connections_per_ip = 2).await;
    let held = [
        connect_from([127, 0, 0, 1], node.addr).await,
        connect_from([127, 0, 0, 1], node.addr).await,
    ];
    let refused = ask(connect_from([127, 0, 0, 1], node.addr).await).await;
    assert_eq!(
        refusal(&refused),
        (
            429,
            "too many connections from 127.0.0.1: outer.max-connections-per-ip is 2"
        )
    );
    assert_eq!(refused.header("retry-after"), Some("1"));
    let other = ask(connect_from([127, 0, 0, 2], node.addr).await).await;
    assert_eq!(other.status, 200, "another address is not limited");
    assert_eq!(read(&node.metrics.connections_refused_per_ip), 1);
    drop(held);
    let _app = node.connect(Role::App, &random_channel_id()).await;
    node.shutdown().await;
}

#[tokio::test]
async fn one_address_gets_429_over_its_connection_rate() {
    let node = TestNode::start(|c| c.outer.connections_per_second_per_ip = 3).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            ask(connect_from([127, 0, 0, 3], node.addr).await)
                .await
                .status,
        );
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    let other = ask(connect_from([127, 0, 0, 4], node.addr).await).await;
    assert_eq!(other.status, 200, "another address has its own bucket");
    node.shutdown().await;
}
