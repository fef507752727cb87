//! Behind a load balancer: the PROXY protocol (`outer.proxy-protocol`, v1 and v2 headers written
//! by hand before the upgrade, TLS after the header), and the forwarded headers of trusted HTTP
//! proxies (`outer.trusted-proxies`, `outer.forwarded-header`). Which address the node took for
//! the client shows in the per-address limit: with `outer.max-connections-per-ip = 1`, a second
//! connection of the same client gets 429 naming it, one of another client passes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::MaybeTlsStream;
use wspair::{Config, Role};

use crate::harness::http::{RawResponse, UPGRADE_HEADERS, read_response};
use crate::harness::{Client, EVENT_TIMEOUT, TestNode, random_channel_id, read, wait_until};

/// A PROXY v1 header naming `source` as the client.
fn v1(source: &str) -> Vec<u8> {
    let source: SocketAddr = source.parse().unwrap();
    let (family, destination) = match source {
        SocketAddr::V4(_) => ("TCP4", "127.0.0.1"),
        SocketAddr::V6(_) => ("TCP6", "::1"),
    };
    format!(
        "PROXY {family} {} {destination} {} 1024\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

/// A PROXY v2 header naming `source` (`None`: the LOCAL command of health checks).
fn v2(source: Option<&str>) -> Vec<u8> {
    let mut header = b"\r\n\r\n\x00\r\nQUIT\n".to_vec();
    let mut body = Vec::new();
    match source.map(|s| s.parse::<SocketAddr>().unwrap()) {
        None => header.extend_from_slice(&[0x20, 0x00]),
        Some(SocketAddr::V4(source)) => {
            header.extend_from_slice(&[0x21, 0x11]);
            body.extend_from_slice(&source.ip().octets());
            body.extend_from_slice(&[127, 0, 0, 1]);
            body.extend_from_slice(&source.port().to_be_bytes());
            body.extend_from_slice(&1024u16.to_be_bytes());
        }
        Some(SocketAddr::V6(source)) => {
            header.extend_from_slice(&[0x21, 0x21]);
            body.extend_from_slice(&source.ip().octets());
            body.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
            body.extend_from_slice(&source.port().to_be_bytes());
            body.extend_from_slice(&1024u16.to_be_bytes());
        }
    }
    header.extend_from_slice(&(body.len() as u16).to_be_bytes());
    header.extend_from_slice(&body);
    header
}

/// A TCP connection to `addr` from the loopback address `source` (127.0.0.x).
async fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Opens a connection from 127.0.0.1 and writes `header` on it.
async fn with_header(node: &TestNode, header: &[u8]) -> TcpStream {
    let mut stream = connect_from([127, 0, 0, 1], node.addr).await;
    stream.write_all(header).await.unwrap();
    stream
}

/// Upgrades `stream` as `role` of `id`; panics if the node refuses.
async fn upgrade_over(stream: TcpStream, node: &TestNode, role: Role, id: &str) -> Client {
    let url = node.url(role, id);
    let (ws, _) = tokio::time::timeout(
        EVENT_TIMEOUT,
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade accepted");
    Client { ws }
}

/// Sends a raw upgrade request with `extra` header lines on `stream` and reads the answer; the
/// stream stays open (a 101 holds its session, and its place among the limits).
async fn raw_upgrade(mut stream: TcpStream, extra: &str) -> (RawResponse, TcpStream) {
    let id = random_channel_id();
    let request = format!(
        "GET /channel?type=app&channelId={id} HTTP/1.1\r\nHost: wspair\r\n{UPGRADE_HEADERS}{extra}\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let response = read_response(&mut stream).await;
    (response, stream)
}

/// Whether the node closed `stream` without answering anything.
async fn closed_without_answer(stream: &mut (impl AsyncRead + Unpin)) {
    let mut buffer = [0u8; 256];
    match tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut buffer))
        .await
        .expect("closed in time")
    {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "expected a close, got {:?}",
            String::from_utf8_lossy(&buffer[..n])
        ),
    }
}

/// `configure`, with `outer.proxy-protocol` on.
fn proxied(configure: impl FnOnce(&mut Config)) -> impl FnOnce(&mut Config) {
    move |config| {
        config.outer.proxy_protocol = true;
        configure(config);
    }
}

/// Sends `text` from `from` and checks that `to` receives it.
async fn relays(from: &mut Client, to: &mut Client, text: &str) {
    from.send_text(text).await;
    assert_eq!(to.recv_text().await, text);
}

#[tokio::test]
async fn v1_and_v2_headers_for_ipv4_and_ipv6_clients_precede_a_working_upgrade() {
    let node = TestNode::start(proxied(|_| {})).await;
    let headers = [
        (v1("192.0.2.1:4000"), v2(Some("[2001:db8::1]:4000"))),
        (v2(Some("192.0.2.2:4000")), v1("[2001:db8::2]:4000")),
        // What balancers' health checks send: the TCP peer is the client.
        (b"PROXY UNKNOWN\r\n".to_vec(), v2(None)),
    ];
    for (app_header, web_header) in headers {
        let id = random_channel_id();
        let app = with_header(&node, &app_header).await;
        let mut app = upgrade_over(app, &node, Role::App, id.as_str()).await;
        let web = with_header(&node, &web_header).await;
        let mut web = upgrade_over(web, &node, Role::Web, id.as_str()).await;
        relays(&mut app, &mut web, "through the balancer").await;
        relays(&mut web, &mut app, "and back").await;
    }
    assert_eq!(read(&node.metrics.connections_refused_proxy), 0);
    node.shutdown().await;
}

#[tokio::test]
async fn per_address_limits_count_the_address_the_proxy_header_names() {
    let node = TestNode::start(proxied(|c| c.outer.max_connections_per_ip = 1)).await;
    // Every connection comes from 127.0.0.1, the balancer; the clients differ.
    let (first, held) = raw_upgrade(with_header(&node, &v1("192.0.2.1:4000")).await, "").await;
    assert_eq!(first.status, 101);
    let (other, held2) =
        raw_upgrade(with_header(&node, &v2(Some("192.0.2.2:4000"))).await, "").await;
    assert_eq!(other.status, 101, "another client is not limited");
    let (again, _) = raw_upgrade(with_header(&node, &v2(Some("192.0.2.1:4001"))).await, "").await;
    assert_eq!(again.status, 429);
    assert_eq!(
        again.body.trim_end(),
        "too many connections from 192.0.2.1: outer.max-connections-per-ip is 1"
    );
    assert_eq!(again.header("retry-after"), Some("1"));
    // IPv6 clients count by their /64.
    let (v6, held3) = raw_upgrade(with_header(&node, &v1("[2001:db8::1]:1")).await, "").await;
    assert_eq!(v6.status, 101);
    let (v6_again, _) =
        raw_upgrade(with_header(&node, &v2(Some("[2001:db8::2]:1"))).await, "").await;
    assert_eq!(v6_again.status, 429);
    assert!(v6_again.body.contains("2001:db8::/64"), "{}", v6_again.body);
    assert_eq!(read(&node.metrics.connections_refused_per_ip), 2);
    // Health checks (`PROXY UNKNOWN`, v2 `LOCAL`) name no client: several at once are not
    // counted under the balancer's address, however low the limit.
    let (check, held4) = raw_upgrade(with_header(&node, b"PROXY UNKNOWN\r\n").await, "").await;
    assert_eq!(check.status, 101);
    let (check2, held5) = raw_upgrade(with_header(&node, &v2(None)).await, "").await;
    assert_eq!(check2.status, 101, "{}", check2.body);
    assert_eq!(read(&node.metrics.connections_refused_per_ip), 2);
    // Closed before the node stops, which would otherwise wait for their close replies.
    drop((held, held2, held3, held4, held5));
    node.shutdown().await;
}

#[tokio::test]
async fn a_connection_without_a_valid_header_is_closed_and_the_node_serves_on() {
    let node = TestNode::start(proxied(|_| {})).await;
    // A plain request: no header at all.
    let mut plain = with_header(&node, b"GET /healthz HTTP/1.1\r\nHost: wspair\r\n\r\n").await;
    closed_without_answer(&mut plain).await;
    for malformed in [
        &b"PROXY TCP4 192.0.2.1 127.0.0.1 4000\r\n"[..],
        b"PROXY TCP4 not-an-address 127.0.0.1 4000 1024\r\n",
        b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 1024\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c",
    ] {
        let mut stream = with_header(&node, malformed).await;
        closed_without_answer(&mut stream).await;
    }
    wait_until("the refusals to be counted", || {
        read(&node.metrics.connections_refused_proxy) == 5
    })
    .await;
    // A balancer's TCP check (connect, close) is not a refusal.
    drop(with_header(&node, b"").await);
    let id = random_channel_id();
    let app = with_header(&node, &v1("192.0.2.1:4000")).await;
    let mut app = upgrade_over(app, &node, Role::App, id.as_str()).await;
    let web = with_header(&node, &v1("192.0.2.2:4000")).await;
    let mut web = upgrade_over(web, &node, Role::Web, id.as_str()).await;
    relays(&mut app, &mut web, "still serving").await;
    assert_eq!(read(&node.metrics.connections_refused_proxy), 5);
    drop((app, web));
    node.shutdown().await;
}

#[tokio::test]
async fn a_header_split_over_several_writes_is_read_whole() {
    let node = TestNode::start(proxied(|c| c.outer.max_connections_per_ip = 1)).await;
    for header in [v1("192.0.2.1:4000"), v2(Some("[2001:db8::1]:4000"))] {
        let mut stream = connect_from([127, 0, 0, 1], node.addr).await;
        // Split inside the signature, inside the length or an address, and at the end.
        for piece in header.chunks(header.len() / 3 + 1) {
            stream.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (response, _held) = raw_upgrade(stream, "").await;
        assert_eq!(response.status, 101);
        // The first connection's client holds its one place: the header named it.
        let (again, _) = raw_upgrade(with_header(&node, &header).await, "").await;
        assert_eq!(again.status, 429, "{}", again.body);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn a_header_slower_than_the_handshake_timeout_is_dropped() {
    let node = TestNode::start(proxied(|c| {
        c.outer.handshake_timeout = Duration::from_millis(300);
    }))
    .await;
    let started = std::time::Instant::now();
    let mut stream = with_header(&node, b"PROXY TCP4 192.0.2.1").await;
    closed_without_answer(&mut stream).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    wait_until("the timeout to be counted", || {
        read(&node.metrics.handshakes_timed_out) == 1
    })
    .await;
    assert_eq!(read(&node.metrics.connections_refused_proxy), 0);
    node.shutdown().await;
}

#[tokio::test]
async fn with_trusted_proxies_only_they_may_send_proxy_headers() {
    let node = TestNode::start(proxied(|c| {
        c.outer.trusted_proxies =
            wspair::outer::forwarded::TrustedProxies::parse(["127.0.0.2"]).unwrap();
    }))
    .await;
    let mut stranger = connect_from([127, 0, 0, 3], node.addr).await;
    stranger.write_all(&v1("192.0.2.1:4000")).await.unwrap();
    closed_without_answer(&mut stranger).await;
    assert_eq!(read(&node.metrics.connections_refused_proxy), 1);
    let mut balancer = connect_from([127, 0, 0, 2], node.addr).await;
    balancer.write_all(&v1("192.0.2.1:4000")).await.unwrap();
    let (response, held) = raw_upgrade(balancer, "").await;
    assert_eq!(response.status, 101);
    drop((held,));
    node.shutdown().await;
}

/// A CA made here, and a certificate it signed for 127.0.0.1.
fn test_ca(dir: &std::path::Path) -> (wspair::tls::TlsFiles, TlsConnector) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let root = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &root)
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let files = wspair::tls::TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, leaf.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(root.der().clone()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    (files, TlsConnector::from(Arc::new(config)))
}

/// Writes `header`, then the TLS handshake and a raw upgrade over it; returns the status.
async fn tls_upgrade_after(
    node: &TestNode,
    connector: &TlsConnector,
    header: &[u8],
) -> (u16, tokio_rustls::client::TlsStream<TcpStream>) {
    let stream = with_header(node, header).await;
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let mut tls = tokio::time::timeout(EVENT_TIMEOUT, connector.connect(name, stream))
        .await
        .expect("TLS in time")
        .expect("TLS handshake after the PROXY header");
    let id = random_channel_id();
    let request = format!(
        "GET /channel?type=app&channelId={id} HTTP/1.1\r\nHost: wspair\r\n{UPGRADE_HEADERS}\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tls.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head[9..12]).parse().unwrap();
    (status, tls)
}

#[tokio::test]
async fn the_proxy_header_precedes_tls() {
    let dir = std::env::temp_dir().join(format!("wspair-proxies-tls-{}", std::process::id()));
    let (files, connector) = test_ca(&dir);
    let node = TestNode::start(proxied(|c| {
        c.outer.tls = Some(files);
        c.outer.max_connections_per_ip = 1;
    }))
    .await;
    let (status, held) = tls_upgrade_after(&node, &connector, &v2(Some("192.0.2.1:1"))).await;
    assert_eq!(status, 101);
    let (status, held2) = tls_upgrade_after(&node, &connector, &v1("192.0.2.2:1")).await;
    assert_eq!(status, 101);
    // The same client again: over its limit, closed before TLS (as at accept on a TLS port).
    let mut again = with_header(&node, &v1("192.0.2.1:2")).await;
    closed_without_answer(&mut again).await;
    assert_eq!(read(&node.metrics.connections_refused_per_ip), 1);
    // TLS without a header first is no PROXY header.
    let mut bare = connect_from([127, 0, 0, 1], node.addr).await;
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let refused = tokio::time::timeout(EVENT_TIMEOUT, connector.connect(name, &mut bare)).await;
    assert!(matches!(refused, Ok(Err(_))), "TLS without a PROXY header");
    assert_eq!(read(&node.metrics.connections_refused_proxy), 1);
    drop((held, held2));
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A node that trusts 127.0.0.2 as an HTTP proxy, one connection per client address.
async fn behind_http_proxy(configure: impl FnOnce(&mut Config)) -> TestNode {
    TestNode::start(|c| {
        c.outer.trusted_proxies =
            wspair::outer::forwarded::TrustedProxies::parse(["127.0.0.2/32"]).unwrap();
        c.outer.max_connections_per_ip = 1;
        configure(c);
    })
    .await
}

#[tokio::test]
async fn x_forwarded_for_from_a_trusted_proxy_names_the_client() {
    let node = behind_http_proxy(|_| {}).await;
    let proxy = [127, 0, 0, 2];
    let (first, held) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "X-Forwarded-For: 203.0.113.1\r\n",
    )
    .await;
    assert_eq!(first.status, 101);
    // Two connections from the proxy: it is not counted itself.
    let (second, held2) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "X-Forwarded-For: 203.0.113.2\r\n",
    )
    .await;
    assert_eq!(second.status, 101);
    // The client spoofs a left-most entry; the proxy appended its real address.
    let (spoofed, _) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "X-Forwarded-For: 203.0.113.9, 203.0.113.1\r\n",
    )
    .await;
    assert_eq!(spoofed.status, 429);
    assert_eq!(
        spoofed.body.trim_end(),
        "too many connections from 203.0.113.1: outer.max-connections-per-ip is 1"
    );
    assert_eq!(spoofed.header("retry-after"), Some("1"));
    // Several lines make one list, in order.
    let (lines, _) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "X-Forwarded-For: 198.51.100.1\r\nX-Forwarded-For: 203.0.113.2, 127.0.0.2\r\n",
    )
    .await;
    assert_eq!(lines.status, 429);
    assert!(lines.body.contains("from 203.0.113.2:"), "{}", lines.body);
    // What a trusted proxy wrote must be an address.
    let (garbage, _) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "X-Forwarded-For: 203.0.113.3, unknown\r\n",
    )
    .await;
    assert_eq!(garbage.status, 400);
    assert_eq!(
        garbage.body.trim_end(),
        "X-Forwarded-For entry \"unknown\" names no client address (outer.trusted-proxies)"
    );
    assert_eq!(read(&node.metrics.connections_refused_per_ip), 2);
    drop((held, held2));
    node.shutdown().await;
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let node = behind_http_proxy(|_| {}).await;
    let stranger = [127, 0, 0, 3];
    let (first, held) = raw_upgrade(
        connect_from(stranger, node.addr).await,
        "X-Forwarded-For: 203.0.113.1\r\n",
    )
    .await;
    assert_eq!(first.status, 101);
    let (second, _) = raw_upgrade(
        connect_from(stranger, node.addr).await,
        "X-Forwarded-For: 203.0.113.2\r\n",
    )
    .await;
    assert_eq!(second.status, 429);
    assert!(second.body.contains("from 127.0.0.3:"), "{}", second.body);
    drop((held,));
    node.shutdown().await;
}

#[tokio::test]
async fn the_forwarded_header_is_read_when_configured_and_x_forwarded_for_then_is_not() {
    let node = behind_http_proxy(|c| {
        c.outer.forwarded_header = wspair::outer::forwarded::ForwardedHeader::Forwarded;
    })
    .await;
    let proxy = [127, 0, 0, 2];
    let (first, held) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "Forwarded: for=\"[2001:db8::1]:4711\";proto=https\r\nX-Forwarded-For: 203.0.113.1\r\n",
    )
    .await;
    assert_eq!(first.status, 101);
    let (again, _) = raw_upgrade(
        connect_from(proxy, node.addr).await,
        "Forwarded: for=6.6.6.6, for=\"[2001:db8::2]\"\r\nX-Forwarded-For: 203.0.113.2\r\n",
    )
    .await;
    assert_eq!(again.status, 429);
    assert!(again.body.contains("from 2001:db8::/64:"), "{}", again.body);
    drop((held,));
    node.shutdown().await;
}

#[tokio::test]
async fn a_proxy_header_source_that_is_a_trusted_proxy_names_its_client_in_x_forwarded_for() {
    let node = TestNode::start(proxied(|c| {
        c.outer.trusted_proxies =
            wspair::outer::forwarded::TrustedProxies::parse(["127.0.0.1", "10.0.0.0/8"]).unwrap();
        c.outer.max_connections_per_ip = 1;
    }))
    .await;
    // A TCP balancer (127.0.0.1) in front of an HTTP proxy (10.0.0.7).
    let (first, held) = raw_upgrade(
        with_header(&node, &v1("10.0.0.7:5000")).await,
        "X-Forwarded-For: 203.0.113.1\r\n",
    )
    .await;
    assert_eq!(first.status, 101);
    let (again, _) = raw_upgrade(
        with_header(&node, &v1("10.0.0.7:5001")).await,
        "X-Forwarded-For: 203.0.113.1\r\n",
    )
    .await;
    assert_eq!(again.status, 429);
    assert!(again.body.contains("from 203.0.113.1:"), "{}", again.body);
    // A client the header names directly: its X-Forwarded-For is its own, and ignored.
    let (direct, held2) = raw_upgrade(
        with_header(&node, &v1("198.51.100.1:5000")).await,
        "X-Forwarded-For: 203.0.113.5\r\n",
    )
    .await;
    assert_eq!(direct.status, 101);
    let (direct_again, _) = raw_upgrade(
        with_header(&node, &v1("198.51.100.1:5001")).await,
        "X-Forwarded-For: 203.0.113.6\r\n",
    )
    .await;
    assert_eq!(direct_again.status, 429);
    assert!(
        direct_again.body.contains("from 198.51.100.1:"),
        "{}",
        direct_again.body
    );
    drop((held, held2));
    node.shutdown().await;
}

#[test]
fn bad_proxy_settings_name_the_key() {
    let load = |key: &str, value: &str| {
        Config::load(None, &[(key, value.to_owned())])
            .map(drop)
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        load("outer.trusted-proxies", "10.0.0.0/8, ::1/128, 192.0.2.1"),
        Ok(())
    );
    assert_eq!(
        load("outer.trusted-proxies", "10.0.0.0/8, 10.0.0.300/32"),
        Err("outer.trusted-proxies: \"10.0.0.300/32\" is not a CIDR block (10.0.0.0/8, 2001:db8::/32) or an IP address".into())
    );
    assert_eq!(
        load("outer.trusted-proxies", "2001:db8::1/32"),
        Err("outer.trusted-proxies: \"2001:db8::1/32\" has host bits set beyond its /32 prefix; did you mean 2001:db8::/32?".into())
    );
    assert!(
        load("outer.proxy-protocol", "yes")
            .unwrap_err()
            .starts_with("outer.proxy-protocol: expected true or false")
    );
    let file = Config::load_text(
        std::path::Path::new("wspair.toml"),
        "[outer]\ntrusted-proxies = [\"10.0.0.0/8\", \"::1/128\"]\nproxy-protocol = true\nforwarded-header = \"forwarded\"\n",
        &[],
    )
    .unwrap();
    assert!(file.outer.proxy_protocol);
    assert!(file.outer.trusted_proxies.contains("::1".parse().unwrap()));
}
