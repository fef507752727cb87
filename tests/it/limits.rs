//! Limits and protections: message size, UTF-8, idle clients, slow readers, compression.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wspair::Role;

use crate::harness::client::Ending;
use crate::harness::{EVENT_TIMEOUT, TestNode, random_channel_id, read, wait_until};

#[tokio::test]
async fn message_of_exactly_max_frame_size_is_relayed() {
    let node = TestNode::start(|c| c.outer.max_frame_size = 1000).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_binary(&[7u8; 1000]).await;
    assert_eq!(web.recv_binary().await, vec![7u8; 1000]);
    node.shutdown().await;
}

#[tokio::test]
async fn oversized_message_closes_with_1009() {
    let node = TestNode::start(|c| c.outer.max_frame_size = 1000).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_binary(&[7u8; 1001]).await;
    assert_eq!(app.close_code().await, 1009);
    wait_until("the close to be counted", || {
        read(&node.metrics.sessions_too_big) == 1
    })
    .await;
    // The peer is untouched and pairs with the next app.
    let mut app = node.connect(Role::App, &id).await;
    app.send_text("fine").await;
    assert_eq!(web.recv_text().await, "fine");
    node.shutdown().await;
}

#[tokio::test]
async fn oversized_fragmented_message_closes_with_1009() {
    let node = TestNode::start(|c| c.outer.max_frame_size = 1000).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    // Three fragments of 400 bytes: each fits, the message does not.
    let first = Frame::message(
        Bytes::from(vec![1u8; 400]),
        OpCode::Data(Data::Binary),
        false,
    );
    let middle = Frame::message(
        Bytes::from(vec![1u8; 400]),
        OpCode::Data(Data::Continue),
        false,
    );
    let last = Frame::message(
        Bytes::from(vec![1u8; 400]),
        OpCode::Data(Data::Continue),
        true,
    );
    for frame in [first, middle, last] {
        app.ws.send(Message::Frame(frame)).await.unwrap();
    }
    assert_eq!(app.close_code().await, 1009);
    node.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_text_message_closes_with_1007() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let frame = Frame::message(
        Bytes::from_static(&[0xff, 0xfe, 0x41]),
        OpCode::Data(Data::Text),
        true,
    );
    app.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(app.close_code().await, 1007);
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_closed_after_idle_timeout() {
    let node = TestNode::start(|c| {
        c.outer.ping_interval = Duration::from_millis(100);
        c.outer.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let id = random_channel_id();
    let mut silent = node.connect(Role::App, &id).await;
    // The live client reads all along, which answers the server's pings.
    let mut live = node.connect(Role::Web, &id).await;
    let reader = tokio::spawn(async move {
        let message = live.recv().await;
        (live, message)
    });
    // The silent client does not read, so it answers no ping; wait for the server to give up.
    let metrics = node.metrics.clone();
    wait_until("the idle session to be closed", || {
        read(&metrics.sessions_idle) >= 1
    })
    .await;
    assert_eq!(
        silent.ending().await,
        Ending::Close(4002, "idle timeout".into())
    );
    // Several idle timeouts later the live client is still connected and pairs with a new app.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut app = node.connect(Role::App, &id).await;
    app.send_text("still here").await;
    let (_live, message) = reader.await.unwrap();
    assert_eq!(message, Message::text("still here"));
    assert_eq!(read(&node.metrics.sessions_idle), 1);
    node.shutdown().await;
}

/// A reader that stops reading throttles its own sender, not anyone else, and after the stall
/// timeout it is closed with 1013 and the sender flows again.
#[tokio::test]
async fn a_stalled_reader_throttles_its_sender_only_and_is_closed_with_1013() {
    const MESSAGE_BYTES: usize = 8 * 1024;
    let node = TestNode::start(|c| {
        c.outer.send_queue = 16;
        c.outer.stall_timeout = Duration::from_secs(2);
    })
    .await;
    let id = random_channel_id();
    let sender = node.connect(Role::App, &id).await;
    let mut sleeper = node.connect(Role::Web, &id).await;

    // The sender writes as fast as it can; each send that cannot finish within 200 ms means
    // the relay stopped reading from it.
    let (mut sink, stream) = sender.ws.split();
    let payload = Bytes::from(vec![b'x'; MESSAGE_BYTES]);
    let sent = crate::harness::client::send_until_throttled(
        &mut sink,
        &payload,
        Duration::from_millis(200),
    )
    .await;
    // What is buffered is bounded: the peer's queue plus the kernel's socket buffers.
    assert!(
        sent * MESSAGE_BYTES < 64 * 1024 * 1024,
        "{sent} messages buffered"
    );

    // Meanwhile another pair flows normally.
    let other = random_channel_id();
    let mut other_app = node.connect(Role::App, &other).await;
    let mut other_web = node.connect(Role::Web, &other).await;
    for i in 0..100 {
        other_app.send_text(&format!("m{i}")).await;
        assert_eq!(other_web.recv_text().await, format!("m{i}"));
    }

    // After the stall timeout, the sleeper is closed with 1013 and counted.
    let metrics = node.metrics.clone();
    wait_until("the stalled session to be closed", || {
        read(&metrics.sessions_stalled) == 1
    })
    .await;
    assert_eq!(
        sleeper.ending().await,
        Ending::Close(1013, "not reading; send queue stalled".into())
    );

    // The sender flows again: its pending sends complete and new ones go through.
    tokio::time::timeout(EVENT_TIMEOUT, sink.send(Message::binary(payload.clone())))
        .await
        .expect("the sender flows again")
        .unwrap();
    let mut sender = crate::harness::Client {
        ws: sink.reunite(stream).unwrap(),
    };
    let mut web = node.connect(Role::Web, &id).await;
    // Drain anything still in flight to the sender, then check it pairs with the new web.
    sender.send_text("after the stall").await;
    loop {
        match web.recv().await {
            Message::Text(text) => {
                assert_eq!(text.as_str(), "after the stall");
                break;
            }
            _ => continue,
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn compression_is_negotiated_when_enabled() {
    use crate::harness::http::{UPGRADE_HEADERS, request};
    let id = random_channel_id();
    let headers = format!(
        "{UPGRADE_HEADERS}Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    );
    let target = format!("/channel?type=app&channelId={id}");

    let node = TestNode::start(|c| c.outer.compression = true).await;
    let response = request(node.addr, "GET", &target, &headers).await;
    assert_eq!(response.status, 101);
    let extensions = response
        .header("sec-websocket-extensions")
        .expect("extension agreed");
    assert!(extensions.starts_with("permessage-deflate"), "{extensions}");
    node.shutdown().await;

    let node = TestNode::start(|c| c.outer.compression = false).await;
    let response = request(node.addr, "GET", &target, &headers).await;
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-extensions"), None);
    node.shutdown().await;
}

#[tokio::test]
async fn compressed_messages_relay_between_a_compressing_and_a_plain_client() {
    let node = TestNode::start(|c| {
        c.outer.compression = true;
        c.outer.max_frame_size = 100_000;
    })
    .await;
    let id = random_channel_id();
    let url = node.url(Role::App, id.as_str()).parse().unwrap();
    let mut app = yawc::WebSocket::connect(url)
        .with_options(yawc::Options::default().with_balanced_compression())
        .await
        .expect("compressing client connects");
    let mut web = node.connect(Role::Web, &id).await;
    let text = "compressible ".repeat(5_000);
    app.send(yawc::Frame::text(text.clone())).await.unwrap();
    assert_eq!(web.recv_text().await, text);
    web.send_text(&text).await;
    let frame = tokio::time::timeout(EVENT_TIMEOUT, app.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frame.payload().as_ref(), text.as_bytes());
    node.shutdown().await;
}

#[tokio::test]
async fn a_continuation_without_a_first_fragment_closes_with_1002() {
    let node = TestNode::start(|_| {}).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let stray = Frame::message(
        Bytes::from_static(b"orphan"),
        OpCode::Data(Data::Continue),
        true,
    );
    app.ws.send(Message::Frame(stray)).await.unwrap();
    assert_eq!(app.close_code().await, 1002);
    node.shutdown().await;
}

/// Regression: a session read every frame its socket had buffered before yielding its worker
/// (tokio's budget counts socket reads, and one read holds ~150 one-byte frames), so one
/// client flooding tiny frames held the worker for tens of milliseconds at a time while the
/// other sessions on it waited. A session now yields every 256 frames it reads.
#[tokio::test]
async fn a_flood_of_tiny_frames_does_not_starve_other_sessions_on_its_worker() {
    // The test's runtime has one thread: the node's sessions all share it.
    let node = TestNode::start(|_| {}).await;
    let flood_id = random_channel_id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooder = {
        let addr = node.addr;
        let stop = std::sync::Arc::clone(&stop);
        let target = format!("/channel?type=app&channelId={flood_id}");
        std::thread::spawn(move || flood_tiny_frames(addr, &target, &stop))
    };
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    wait_until("the flood to reach the node", || {
        read(&node.metrics.messages_dropped_no_peer) > 100_000
    })
    .await;
    let mut slowest = Duration::ZERO;
    for n in 0..50 {
        let sent_at = std::time::Instant::now();
        app.send_text(&format!("round {n}")).await;
        assert_eq!(web.recv_text().await, format!("round {n}"));
        slowest = slowest.max(sent_at.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // Joined off the runtime: the flooder may be blocked writing until the node reads again.
    let flooded = tokio::task::spawn_blocking(move || flooder.join().expect("flooder thread"))
        .await
        .expect("join task");
    eprintln!("slowest of 50 messages beside a flood of {flooded} frames: {slowest:?}");
    assert!(
        slowest < Duration::from_millis(20),
        "a message beside the flood took {slowest:?}"
    );
    node.shutdown().await;
}

/// Upgrades `target` on a blocking socket and writes masked one-byte binary frames until
/// `stop`; returns how many it wrote.
fn flood_tiny_frames(
    addr: std::net::SocketAddr,
    target: &str,
    stop: &std::sync::atomic::AtomicBool,
) -> u64 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
        crate::harness::http::UPGRADE_HEADERS
    );
    stream
        .write_all(request.as_bytes())
        .expect("upgrade request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("upgrade response");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused");
    // FIN + binary, masked, length 1, a zero mask, one byte.
    let frames: Vec<u8> = [0x82u8, 0x81, 0, 0, 0, 0, 7].repeat(8 * 1024);
    let mut written = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        stream.write_all(&frames).expect("flood");
        written += 8 * 1024;
    }
    written
}

fn fragment(opcode: OpCode, payload: &[u8], fin: bool) -> Message {
    Message::Frame(Frame::message(Bytes::copy_from_slice(payload), opcode, fin))
}

/// Regression: a fragmented message that never ended kept its session open for as long as a
/// pong slipped in now and then; there was no deadline on assembling a message.
#[tokio::test]
async fn a_message_that_never_completes_is_closed_with_1008_after_message_timeout() {
    let node = TestNode::start(|c| {
        c.outer.message_timeout = Duration::from_millis(600);
        c.outer.ping_interval = Duration::from_millis(100);
        c.outer.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let opened_at = std::time::Instant::now();
    app.ws
        .send(fragment(OpCode::Data(Data::Binary), b"first", false))
        .await
        .unwrap();
    // Reading answers every ping, so the client is never idle; only the deadline can end it.
    assert_eq!(app.close_code().await, 1008);
    wait_until("the close to be counted", || {
        read(&node.metrics.sessions_message_limits) == 1
    })
    .await;
    let took = opened_at.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1500),
        "closed after {took:?}"
    );
    node.shutdown().await;
}

/// Regression: a message could be split into any number of frames, empty continuation frames
/// included, each costing a header to parse and relaying nothing.
#[tokio::test]
async fn a_message_in_more_frames_than_max_fragments_closes_with_1008() {
    let node = TestNode::start(|c| c.outer.max_fragments = 4).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let send_in = |n: usize| {
        let mut frames = vec![fragment(OpCode::Data(Data::Text), b"a", false)];
        frames.extend((1..n - 1).map(|_| fragment(OpCode::Data(Data::Continue), b"", false)));
        frames.push(fragment(OpCode::Data(Data::Continue), b"b", true));
        frames
    };
    for frame in send_in(4) {
        app.ws.send(frame).await.unwrap();
    }
    assert_eq!(web.recv_text().await, "ab");
    for frame in send_in(5) {
        app.ws.send(frame).await.unwrap();
    }
    assert_eq!(app.close_code().await, 1008);
    wait_until("the close to be counted", || {
        read(&node.metrics.sessions_message_limits) == 1
    })
    .await;
    node.shutdown().await;
}

/// Regression: continuation frames did not count as activity, so a client streaming one
/// large message slowly was closed with 4002 mid-message.
#[tokio::test]
async fn continuation_frames_keep_a_client_from_idling_out() {
    let node = TestNode::start(|c| {
        c.outer.ping_interval = Duration::from_millis(300);
        c.outer.idle_timeout = Duration::from_millis(600);
        c.outer.message_timeout = Duration::from_secs(10);
    })
    .await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    // The web reads (and answers pings) all along; the app only writes.
    let reader = tokio::spawn(async move {
        let text = web.recv_text().await;
        (web, text)
    });
    app.ws
        .send(fragment(OpCode::Data(Data::Text), b"0", false))
        .await
        .unwrap();
    for n in 1..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let last = n == 9;
        let digit = n.to_string();
        app.ws
            .send(fragment(
                OpCode::Data(Data::Continue),
                digit.as_bytes(),
                last,
            ))
            .await
            .unwrap();
    }
    let (_web, text) = reader.await.unwrap();
    assert_eq!(text, "0123456789");
    assert_eq!(read(&node.metrics.sessions_idle), 0);
    node.shutdown().await;
}
