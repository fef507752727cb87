//! The server side of the WebSocket protocol (RFC 6455, RFC 7692), pinned with hand-built
//! frames over a raw TCP socket: what a violation closes with, that it sends exactly one close
//! frame, and that a client that sends pings without reading the pongs cannot grow the server.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Bytes;
use wspair::Role;

use crate::harness::client::send_until_throttled;
use crate::harness::http::{RawResponse, UPGRADE_HEADERS, read_response};
use crate::harness::process::ProcessNode;
use crate::harness::{EVENT_TIMEOUT, TestNode, random_channel_id, read, wait_until};

const FIN: u8 = 0x80;
const RSV1: u8 = 0x40;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// The largest payload RFC 6455 section 5.5 allows in a control frame.
const MAX_CONTROL_PAYLOAD: usize = 125;

/// A frame as the server sent it.
#[derive(Debug)]
struct ServerFrame {
    opcode: u8,
    payload: Vec<u8>,
}

impl ServerFrame {
    fn close_code(&self) -> Option<u16> {
        (self.opcode == CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Builds one frame; `mask` is what a client must send (RFC 6455 section 5.3).
fn encode(first_byte: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut frame = vec![first_byte];
    match payload.len() {
        len @ 0..=125 => frame.push(mask_bit | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(mask_bit | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(mask_bit | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    match mask {
        Some(mask) => {
            frame.extend_from_slice(&mask);
            frame.extend(
                payload
                    .iter()
                    .enumerate()
                    .map(|(i, byte)| byte ^ mask[i % 4]),
            );
        }
        None => frame.extend_from_slice(payload),
    }
    frame
}

fn masked(first_byte: u8, payload: &[u8]) -> Vec<u8> {
    encode(first_byte, payload, Some([0x12, 0x34, 0x56, 0x78]))
}

/// Parses one server frame from the front of `buffer`, if it holds a whole one.
fn parse(buffer: &mut Vec<u8>) -> Option<ServerFrame> {
    if buffer.len() < 2 {
        return None;
    }
    assert_eq!(buffer[1] & 0x80, 0, "the server masked a frame");
    let (len, header) = match buffer[1] & 0x7F {
        126 if buffer.len() >= 4 => (u16::from_be_bytes([buffer[2], buffer[3]]) as usize, 4),
        127 if buffer.len() >= 10 => (
            u64::from_be_bytes(buffer[2..10].try_into().unwrap()) as usize,
            10,
        ),
        126 | 127 => return None,
        len => (len as usize, 2),
    };
    if buffer.len() < header + len {
        return None;
    }
    let frame = ServerFrame {
        opcode: buffer[0] & 0x0F,
        payload: buffer[header..header + len].to_vec(),
    };
    buffer.drain(..header + len);
    Some(frame)
}

/// A WebSocket client that writes whatever bytes a test gives it and parses what comes back.
struct RawClient {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl RawClient {
    /// Upgrades `stream` as the app of a fresh channel id; `extra_headers` end in `\r\n`.
    async fn upgrade(stream: TcpStream, addr: SocketAddr, extra_headers: &str) -> RawClient {
        let target = format!("/channel?type=app&channelId={}", random_channel_id());
        RawClient::upgrade_to(stream, addr, &target, extra_headers).await
    }

    /// Upgrades `stream` on `target`; `extra_headers` end in `\r\n`.
    async fn upgrade_to(
        stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        extra_headers: &str,
    ) -> RawClient {
        RawClient::handshake(stream, addr, target, extra_headers)
            .await
            .0
    }

    /// Upgrades `stream` on `target` and returns the client with the server's 101 answer.
    async fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        extra_headers: &str,
    ) -> (RawClient, RawResponse) {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{UPGRADE_HEADERS}{extra_headers}\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write upgrade");
        let response = read_response(&mut stream).await;
        assert_eq!(response.status, 101, "{response:?}");
        let client = RawClient {
            stream,
            buffer: Vec::new(),
        };
        (client, response)
    }

    async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient::upgrade(stream, addr, "").await
    }

    /// Connects offering permessage-deflate, and checks the server agreed.
    async fn connect_compressed(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let target = format!("/channel?type=app&channelId={}", random_channel_id());
        let offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n";
        let (client, response) = RawClient::handshake(stream, addr, &target, offer).await;
        let extensions = response
            .header("sec-websocket-extensions")
            .expect("permessage-deflate agreed");
        assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
        client
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write frame");
    }

    /// The next frame, or `None` once the server has closed the connection.
    async fn recv(&mut self) -> Option<ServerFrame> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(frame) = parse(&mut self.buffer) {
                return Some(frame);
            }
            let read = tokio::time::timeout(EVENT_TIMEOUT, self.stream.read(&mut chunk))
                .await
                .expect("the server sends a frame or closes the connection in time");
            match read {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                // A server that closes with our bytes unread resets the connection; what it
                // sent before is still read first.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(err) => panic!("read from server: {err}"),
            }
        }
    }

    /// Every frame until the server closes the connection.
    async fn frames_until_closed(&mut self) -> Vec<ServerFrame> {
        let mut frames = Vec::new();
        while let Some(frame) = self.recv().await {
            frames.push(frame);
        }
        assert!(self.buffer.is_empty(), "a partial frame before the end");
        frames
    }

    /// Reads until the server closes the connection and checks it sent exactly one close
    /// frame, with `code`, and no control frame larger than RFC 6455 allows.
    async fn assert_closes_once_with(&mut self, code: u16) {
        let frames = self.frames_until_closed().await;
        for frame in &frames {
            if frame.opcode & 0x8 != 0 {
                assert!(
                    frame.payload.len() <= MAX_CONTROL_PAYLOAD,
                    "control frame {:#x} of {} bytes",
                    frame.opcode,
                    frame.payload.len()
                );
            }
        }
        let codes: Vec<_> = frames.iter().filter_map(ServerFrame::close_code).collect();
        let n_closes = frames.iter().filter(|frame| frame.opcode == CLOSE).count();
        assert_eq!(n_closes, 1, "close frames sent: {codes:?}");
        assert_eq!(codes, [code]);
    }
}

/// Sends `frames` on a fresh connection (offering permessage-deflate if `compressed`) and
/// checks the server closes it with exactly one close frame with `code`.
async fn closes_once_with(compressed: bool, frames: &[Vec<u8>], code: u16) {
    let node = TestNode::start(|c| c.outer.compression = true).await;
    let mut client = if compressed {
        RawClient::connect_compressed(node.addr).await
    } else {
        RawClient::connect(node.addr).await
    };
    for frame in frames {
        client.send(frame).await;
    }
    client.assert_closes_once_with(code).await;
    wait_until("the close to be counted", || {
        read(&node.metrics.sessions_protocol_errors) == 1
    })
    .await;
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_opcodes_close_with_1002() {
    for opcode in [0x3, 0xB] {
        closes_once_with(false, &[masked(FIN | opcode, b"x")], 1002).await;
    }
}

#[tokio::test]
async fn unmasked_client_frame_closes_once_with_1002_then_the_connection() {
    closes_once_with(false, &[encode(FIN | TEXT, b"hello", None)], 1002).await;
}

#[tokio::test]
async fn pong_over_125_bytes_closes_with_1002() {
    closes_once_with(false, &[masked(FIN | PONG, &[7u8; 1000])], 1002).await;
}

#[tokio::test]
async fn close_with_a_long_reason_closes_with_1002_and_is_not_echoed() {
    // The server used to echo a close frame of any size, sending a control frame of 5000 bytes.
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&[b'a'; 4998]);
    closes_once_with(false, &[masked(FIN | CLOSE, &payload)], 1002).await;
}

#[tokio::test]
async fn ping_with_rsv1_closes_with_1002() {
    closes_once_with(false, &[masked(FIN | RSV1 | PING, b"x")], 1002).await;
}

#[tokio::test]
async fn continuation_with_rsv1_closes_with_1002() {
    // RFC 7692 section 6.1: only the first frame of a message may carry RSV1, even when
    // permessage-deflate is in use.
    let frames = [
        masked(TEXT, b"ab"),
        masked(FIN | RSV1 | CONTINUATION, b"cd"),
    ];
    closes_once_with(true, &frames, 1002).await;
}

#[tokio::test]
async fn corrupt_deflate_data_closes_with_1002() {
    // 0xFF starts a deflate block of the reserved type 3.
    closes_once_with(true, &[masked(FIN | RSV1 | BINARY, &[0xFF; 16])], 1002).await;
}

/// A ping of 125 bytes whose payload starts with `n`.
fn numbered_ping(n: u64) -> Vec<u8> {
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..8].copy_from_slice(&n.to_be_bytes());
    masked(FIN | PING, &payload)
}

#[tokio::test]
async fn pings_back_up_while_the_client_reads_no_pongs() {
    // The server used to read every ping and queue a pong for each, without bound, while the
    // client read nothing. Now it stops reading while a pong cannot be written, so the pings
    // wait in TCP, and it answers them once the client reads again.
    //
    // Far more pings than the kernel's buffers hold on loopback (the server's send buffer
    // starts at about 1 MiB there, and its receive buffer grows while it reads).
    const N_PINGS: usize = 100_000;
    const BLOCKED: Duration = Duration::from_secs(1);
    let node = TestNode::start(|_| {}).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let stream = socket.connect(node.addr).await.expect("connect");
    let client = RawClient::upgrade(stream, node.addr, "").await;
    let (mut reader, mut writer) = client.stream.into_split();
    let pings: Vec<u8> = (0..N_PINGS as u64).flat_map(numbered_ping).collect();

    // The scenario: a client that sends pings and reads nothing, until its writes block.
    let mut written = 0;
    while written < pings.len() {
        match tokio::time::timeout(BLOCKED, writer.write(&pings[written..])).await {
            Ok(result) => written += result.expect("write pings"),
            Err(_) => break,
        }
    }
    assert!(
        written < pings.len(),
        "the server read all {N_PINGS} pings while its pongs could not be written"
    );

    // Reading again: the rest of the pings go out, and every pong arrives, in order, up to
    // the last ping's. The session was not closed meanwhile.
    let writer_task = tokio::spawn(async move {
        writer.write_all(&pings[written..]).await?;
        Ok::<_, std::io::Error>(writer)
    });
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    let mut n_pongs = 0usize;
    let mut last = None;
    while last != Some(N_PINGS as u64 - 1) {
        let frame = match parse(&mut buffer) {
            Some(frame) => frame,
            None => {
                let n = tokio::time::timeout(EVENT_TIMEOUT, reader.read(&mut chunk))
                    .await
                    .expect("pongs keep coming once the client reads")
                    .expect("read pongs");
                assert!(n > 0, "the session closed after {n_pongs} pongs");
                buffer.extend_from_slice(&chunk[..n]);
                continue;
            }
        };
        assert_eq!(frame.opcode, PONG, "after {n_pongs} pongs: {frame:?}");
        assert_eq!(frame.payload.len(), MAX_CONTROL_PAYLOAD);
        let n = u64::from_be_bytes(frame.payload[..8].try_into().unwrap());
        assert!(last.is_none_or(|last| n > last), "pong {n} after {last:?}");
        last = Some(n);
        n_pongs += 1;
    }
    assert!(n_pongs <= N_PINGS);

    // The session is still open: it answers a close.
    let mut writer = writer_task.await.unwrap().expect("every ping written");
    writer
        .write_all(&masked(FIN | CLOSE, &1000u16.to_be_bytes()))
        .await
        .unwrap();
    let mut client = RawClient {
        stream: reader.reunite(writer).unwrap(),
        buffer,
    };
    client.assert_closes_once_with(1000).await;
    node.shutdown().await;
}

#[tokio::test]
async fn ping_flood_without_reading_does_not_grow_the_node() {
    // A client that sent pings as fast as it could and read nothing grew the node by about
    // 1 GiB in 10 s: a pong was queued for every ping.
    const FLOOD: Duration = Duration::from_secs(10);
    const MAX_GROWTH: u64 = 8 * 1024 * 1024;
    let node = ProcessNode::start(&[]);
    let mut client = RawClient::connect(node.addr).await;
    let before = node.rss_kib() * 1024;

    let burst: Vec<u8> = (0..64).flat_map(numbered_ping).collect();
    let deadline = tokio::time::Instant::now() + FLOOD;
    // Writing blocks once the node stops reading; the flood ends at the deadline either way.
    let _ = tokio::time::timeout_at(deadline, async {
        loop {
            client.stream.write_all(&burst).await.expect("write pings");
        }
    })
    .await;
    let after = node.rss_kib() * 1024;
    let growth = after.saturating_sub(before);
    eprintln!("node rss before {before} after {after} growth {growth} bytes");
    assert!(
        growth < MAX_GROWTH,
        "the node grew by {} KiB under a ping flood",
        growth / 1024
    );
}

/// Regression: after a client's close, messages still queued for it were written after the
/// close echo (RFC 6455 section 5.5.1 forbids it; clients discard them) and counted as
/// relayed: 84 of 1 462 in one run. Now nothing follows the echo, and every message sent is
/// counted once: written to the client (relayed), or dropped.
#[tokio::test]
async fn nothing_is_written_after_the_echo_of_a_client_close_and_every_message_is_counted_once() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let stream = TcpStream::connect(node.addr).await.expect("connect");
    let target = format!("/channel?type=web&channelId={id}");
    let mut web = RawClient::upgrade_to(stream, node.addr, &target, "").await;
    let app = node.connect(Role::App, &id).await;
    let (mut sink, _stream) = futures::StreamExt::split(app.ws);
    let payload = Bytes::from(vec![b'x'; 1000]);
    let sent = send_until_throttled(&mut sink, &payload, Duration::from_millis(300)).await as u64;
    web.send(&masked(FIN | CLOSE, &1000u16.to_be_bytes())).await;
    let frames = web.frames_until_closed().await;
    let close_at = frames
        .iter()
        .position(|frame| frame.opcode == CLOSE)
        .expect("the close is echoed");
    assert_eq!(close_at, frames.len() - 1, "frames after the close echo");
    let received = frames.iter().filter(|frame| frame.opcode == BINARY).count() as u64;
    // What the app still had in flight is dropped as it reaches a node with no web.
    drop(sink);
    let metrics = &node.metrics;
    wait_until("every message sent to be counted", || {
        read(&metrics.messages_relayed)
            + read(&metrics.messages_dropped_closed)
            + read(&metrics.messages_dropped_no_peer)
            == sent
    })
    .await;
    assert_eq!(read(&metrics.messages_relayed), received);
    assert!(
        read(&metrics.messages_dropped_closed) > 0,
        "the test must close with messages queued"
    );
    node.shutdown().await;
}

/// Regression: a reader that had pinged and then stopped reading was closed with 1008 for an
/// incomplete message after `outer.message-timeout`: the server stops reading a client whose
/// pong it cannot write, and the complete message behind the ping sat in its read buffer.
/// Such a client is stalled, and closed with 1013 after `outer.stall-timeout`.
#[tokio::test]
async fn a_reader_that_pinged_and_stopped_reading_is_closed_as_stalled() {
    let node = TestNode::start(|c| {
        c.outer.message_timeout = Duration::from_millis(500);
        c.outer.stall_timeout = Duration::from_secs(3);
    })
    .await;
    let id = random_channel_id();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.expect("connect");
    let target = format!("/channel?type=web&channelId={id}");
    let mut web = RawClient::upgrade_to(stream, node.addr, &target, "").await;
    let app = node.connect(Role::App, &id).await;
    let (mut sink, _stream) = futures::StreamExt::split(app.ws);
    let payload = Bytes::from(vec![b'x'; 8000]);
    send_until_throttled(&mut sink, &payload, Duration::from_millis(500)).await;
    let mut bytes = masked(FIN | PING, b"p");
    bytes.extend(masked(FIN | TEXT, b"hello"));
    web.send(&bytes).await;
    wait_until("the web session to close", || {
        node.router.hub.counts().0 < 2
    })
    .await;
    assert_eq!(read(&node.metrics.sessions_stalled), 1);
    node.shutdown().await;
}
