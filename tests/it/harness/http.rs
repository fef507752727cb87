//! Raw HTTP over a TCP socket, to see exactly what the server answers before an upgrade.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::EVENT_TIMEOUT;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// The headers of a WebSocket upgrade request.
pub const UPGRADE_HEADERS: &str = "Connection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Sends `method target` with `extra_headers` and reads the response head and body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    extra_headers: &str,
) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Content-Length: 0\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    read_response(&mut stream).await
}

/// Sends `head` exactly as given (no Host or other header added) and reads the response.
pub async fn send_head(addr: SocketAddr, head: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(head.as_bytes())
        .await
        .expect("write request head");
    read_response(&mut stream).await
}

/// Reads one response; for a 101 only the head is read, since the socket then speaks WebSocket.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(
            n > 0,
            "connection closed before a response head: {buffer:?}"
        );
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffer[..head_end].to_vec()).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = buffer[head_end + 4..].to_vec();
    let length: usize = headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.parse().unwrap())
        .unwrap_or(0);
    while status != 101 && body.len() < length {
        let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read body");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends an upgrade request for `target` and resets the connection at once, without reading
/// the answer: a client that gives up in the middle of its upgrade.
pub async fn abandoned_upgrade(addr: SocketAddr, target: &str) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE_HEADERS}\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    stream.set_zero_linger().expect("SO_LINGER 0");
    drop(stream);
}
