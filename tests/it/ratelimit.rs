//! Per-session rate limits (`outer.max-messages-per-second`, `outer.max-bytes-per-second`,
//! `outer.rate-burst`, `outer.rate-limit-action`): a throttled client loses nothing and is
//! relayed at its rate, a closed one gets 1008 after what it sent in time was delivered, and
//! nobody else slows down.
//!
//! Rates are checked in bands wide enough for a busy two-core machine: the limiter cannot be
//! faster than its rate (that bound is tight), while a slow machine may be slower.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wspair::Role;
use wspair::config::{Config, RateAction};

use crate::harness::client::{Client, Ending, Sink};
use crate::harness::redis::RedisServer;
use crate::harness::v1flow::{self, base_url};
use crate::harness::{TestNode, random_channel_id, read, wait_until};

/// Writes `messages` as fast as the socket takes them, in a task of its own (the node stops
/// reading a throttled client, so the writes may wait), and hands the sink back.
fn flood(mut sink: Sink, messages: Vec<Message>) -> tokio::task::JoinHandle<Sink> {
    tokio::spawn(async move {
        for message in messages {
            sink.feed(message).await.expect("send");
        }
        sink.flush().await.expect("flush");
        sink
    })
}

fn numbered(n: usize) -> Vec<Message> {
    (0..n).map(|i| Message::text(format!("m{i}"))).collect()
}

/// Receives `n` messages numbered as [`numbered`] writes them, checking the order; returns
/// when each arrived, counted from `start`. Bounded as a whole: `Client::recv` waits for each
/// message anew after every ping, and short ping intervals would let it wait forever.
async fn receive_numbered(web: &mut Client, n: usize, start: Instant) -> Vec<Duration> {
    let receiving = async {
        let mut arrivals = Vec::with_capacity(n);
        for i in 0..n {
            assert_eq!(
                web.recv_text().await,
                format!("m{i}"),
                "message {i} out of order"
            );
            arrivals.push(start.elapsed());
        }
        arrivals
    };
    tokio::time::timeout(Duration::from_secs(20), receiving)
        .await
        .unwrap_or_else(|_| panic!("{n} messages did not arrive within 20 s"))
}

fn limited(messages: u32, bytes: u32, action: RateAction) -> impl Fn(&mut Config) + Copy {
    move |config: &mut Config| {
        config.outer.rate.messages_per_second = messages;
        config.outer.rate.bytes_per_second = bytes;
        config.outer.rate.action = action;
    }
}

/// A byte rate of 1 000 bytes/s (burst 1 s, `throttle`) and frames of at most 4 096 bytes.
fn byte_limited_small_frames(config: &mut Config) {
    config.outer.rate = wspair::config::RateLimits {
        messages_per_second: 0,
        bytes_per_second: 1000,
        burst: Duration::from_secs(1),
        action: RateAction::Throttle,
    };
    config.outer.max_frame_size = 4096;
}

/// A v1 PEER frame of a type libraries ignore, padded with `pad` bytes.
fn ignored_peer_frame(pad: usize) -> Vec<u8> {
    let mut peer = vec![0x04];
    let pad = "x".repeat(pad);
    peer.extend_from_slice(format!(r#"{{"v":1,"t":"zz","pad":"{pad}"}}"#).as_bytes());
    peer
}

/// Reads what reaches `web` for `within`: SERVER frames only (its peer went away), nothing
/// relayed.
async fn only_server_frames_for(web: &mut crate::harness::v1wire::Wire, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(frame) = tokio::time::timeout_at(deadline, web.recv()).await {
        assert_eq!(frame[0], 0x05, "only SERVER frames, not {frame:?}");
    }
}

/// 600 messages at 200 a second with a burst of one second: 200 at once, then 400 over 2 s.
#[tokio::test]
async fn a_throttled_client_is_relayed_at_its_message_rate_and_loses_nothing() {
    let node = TestNode::start(limited(200, 0, RateAction::Throttle)).await;
    let id = random_channel_id();
    let app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let (sink, stream) = app.ws.split();
    let start = Instant::now();
    let sending = flood(sink, numbered(600));
    let arrivals = receive_numbered(&mut web, 600, start).await;
    let took = arrivals[599];
    eprintln!(
        "burst of 200 within {:?}; 600 within {took:?}",
        arrivals[199]
    );
    assert!(
        arrivals[199] < Duration::from_millis(900),
        "the burst took {:?}",
        arrivals[199]
    );
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_secs(4),
        "600 messages at 200/s (burst 200) took {took:?}"
    );
    // Evenly, not in lumps: the second half of the throttled part took about half its time.
    let second_half = arrivals[599] - arrivals[399];
    assert!(
        second_half >= Duration::from_millis(950),
        "the last 200 took {second_half:?}"
    );
    assert!(read(&node.metrics.rate_limit_pauses) > 100);
    assert_eq!(read(&node.metrics.sessions_rate_limited), 0);
    // Still open: the session was held, not closed.
    let mut app = Client {
        ws: sending.await.unwrap().reunite(stream).unwrap(),
    };
    app.send_text("after").await;
    assert_eq!(web.recv_text().await, "after");
    node.shutdown().await;
}

/// 150 messages of 1 000 bytes at 50 000 bytes a second: 50 at once, then 100 over 2 s.
#[tokio::test]
async fn a_throttled_client_is_relayed_at_its_byte_rate() {
    let node = TestNode::start(limited(0, 50_000, RateAction::Throttle)).await;
    let id = random_channel_id();
    let app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let (sink, _stream) = app.ws.split();
    let messages = (0..150u8)
        .map(|i| Message::binary(Bytes::from(vec![i; 1000])))
        .collect();
    let start = Instant::now();
    let _sending = flood(sink, messages);
    for i in 0..150u8 {
        assert_eq!(web.recv_binary().await, vec![i; 1000]);
    }
    let took = start.elapsed();
    eprintln!("150 kB at 50 kB/s (burst 50 kB) took {took:?}");
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    node.shutdown().await;
}

/// A message larger than the whole byte burst passes on a full bucket, and the next one waits
/// for the debt it left.
#[tokio::test]
async fn a_message_larger_than_the_byte_burst_passes_and_the_next_one_waits_for_it() {
    let node = TestNode::start(|config| {
        limited(0, 50_000, RateAction::Throttle)(config);
        config.outer.max_frame_size = 100_000;
    })
    .await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let start = Instant::now();
    app.send_binary(&[1u8; 100_000]).await;
    app.send_binary(&[2u8; 1000]).await;
    assert_eq!(web.recv_binary().await, vec![1u8; 100_000]);
    let large = start.elapsed();
    assert_eq!(web.recv_binary().await, vec![2u8; 1000]);
    let small = start.elapsed();
    eprintln!("100 kB at 50 kB/s (burst 50 kB) after {large:?}, the next 1 kB after {small:?}");
    assert!(
        large < Duration::from_millis(500),
        "the large one took {large:?}"
    );
    // 50 kB of debt and its own 1 kB: 1.02 s.
    assert!(
        small >= Duration::from_millis(1000) && small < Duration::from_secs(3),
        "the small one took {small:?}"
    );
    node.shutdown().await;
}

/// The node stops reading a throttled client, pongs included: that is not idleness.
#[tokio::test]
async fn a_client_held_longer_than_the_idle_timeout_is_not_idle() {
    let node = TestNode::start(|config| {
        limited(2, 0, RateAction::Throttle)(config);
        config.outer.ping_interval = Duration::from_millis(100);
        config.outer.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let id = random_channel_id();
    let app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let (sink, mut stream) = app.ws.split();
    // The app reads all along, so it answers every ping it gets.
    let reading = tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
    let start = Instant::now();
    let _sending = flood(sink, numbered(6));
    // Two at once, then one every 500 ms: each wait longer than the idle timeout.
    receive_numbered(&mut web, 6, start).await;
    assert!(start.elapsed() >= Duration::from_millis(1950));
    assert_eq!(read(&node.metrics.sessions_idle), 0);
    assert!(!reading.is_finished(), "the app's connection ended");
    node.shutdown().await;
}

/// Close mode: the messages within the rate reach the peer, the one over it does not, and the
/// client gets 1008 naming the limit.
#[tokio::test]
async fn close_mode_closes_with_1008_after_delivering_what_came_in_time() {
    let node = TestNode::start(limited(10, 0, RateAction::Close)).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    for message in numbered(30) {
        app.ws.feed(message).await.unwrap();
    }
    app.ws.flush().await.unwrap();
    assert_eq!(
        app.ending().await,
        Ending::Close(
            1008,
            "message rate over outer.max-messages-per-second".into()
        )
    );
    wait_until("the close to be counted", || {
        read(&node.metrics.sessions_rate_limited) == 1
    })
    .await;
    // The burst (ten, and one more for every 100 ms the node took to read them) arrived in
    // order, and nothing after the message that closed the session.
    let mut delivered = 0;
    let mut next_app = node.connect(Role::App, &id).await;
    next_app.send_text("next").await;
    loop {
        let text = web.recv_text().await;
        if text == "next" {
            break;
        }
        assert_eq!(text, format!("m{delivered}"));
        delivered += 1;
    }
    assert!((10..=15).contains(&delivered), "{delivered} delivered");
    assert_eq!(read(&node.metrics.rate_limit_pauses), 0);
    node.shutdown().await;
}

#[tokio::test]
async fn close_mode_names_the_byte_limit() {
    let node = TestNode::start(limited(1000, 10_000, RateAction::Close)).await;
    let id = random_channel_id();
    let mut app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    app.send_binary(&[1u8; 6000]).await;
    app.send_binary(&[2u8; 6000]).await;
    assert_eq!(
        app.ending().await,
        Ending::Close(1008, "byte rate over outer.max-bytes-per-second".into())
    );
    assert_eq!(web.recv_binary().await, vec![1u8; 6000]);
    node.shutdown().await;
}

/// One client held by its rate slows nobody else: a pair beside it sends its own burst at
/// full speed.
#[tokio::test]
async fn another_pair_keeps_its_speed_beside_a_throttled_one() {
    let node = TestNode::start(limited(200, 0, RateAction::Throttle)).await;
    let id = random_channel_id();
    let app = node.connect(Role::App, &id).await;
    let mut web = node.connect(Role::Web, &id).await;
    let (sink, _stream) = app.ws.split();
    let start = Instant::now();
    let _sending = flood(sink, numbered(1000));
    // Past its burst: the throttled pair now moves at 200 a second.
    receive_numbered(&mut web, 300, start).await;

    let other = random_channel_id();
    let mut other_app = node.connect(Role::App, &other).await;
    let mut other_web = node.connect(Role::Web, &other).await;
    let other_start = Instant::now();
    for message in numbered(150) {
        other_app.ws.feed(message).await.unwrap();
    }
    other_app.ws.flush().await.unwrap();
    let arrivals = receive_numbered(&mut other_web, 150, other_start).await;
    eprintln!(
        "150 messages of a pair beside a throttled one: {:?}",
        arrivals[149]
    );
    assert!(
        arrivals[149] < Duration::from_millis(500),
        "the other pair's burst took {:?}",
        arrivals[149]
    );
    // Meanwhile the throttled pair is still at its rate, well short of its 1 000.
    let mut throttled = 300;
    while tokio::time::timeout(Duration::from_millis(1), web.ws.next())
        .await
        .is_ok()
    {
        throttled += 1;
    }
    assert!(
        throttled < 600,
        "{throttled} of the throttled pair's messages arrived by {:?}",
        start.elapsed()
    );
    node.shutdown().await;
}

/// wspair.v1 clients both throttled, sending to each other as fast as their windows let
/// them: every message arrives once and in order, at about the rate. Their ACKs, free of the
/// limit, travel behind their own throttled DATA.
#[tokio::test]
async fn v1_clients_under_throttle_lose_and_repeat_nothing() {
    let node = TestNode::start(limited(200, 0, RateAction::Throttle)).await;
    let id = random_channel_id();
    let urls = [base_url(node.addr)];
    let app = v1flow::connect(&urls, id.as_str(), wspair_client::Role::App).await;
    let web = v1flow::connect(&urls, id.as_str(), wspair_client::Role::Web).await;
    let start = Instant::now();
    let outcome = v1flow::start(app, web, 600).finish().await;
    let took = start.elapsed();
    let (app, web) = (outcome.app.stats(), outcome.web.stats());
    eprintln!(
        "600 each way at 200/s took {took:?}; duplicates dropped {} and {}",
        app.duplicates_dropped, web.duplicates_dropped
    );
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_secs(8),
        "took {took:?}"
    );
    assert_eq!(app.reconnects + web.reconnects, 0);
    assert!(read(&node.metrics.rate_limit_pauses) > 0);
    node.shutdown().await;
}

/// The limit applies where the client is read, whichever node its peer is on.
#[tokio::test]
async fn a_throttled_client_whose_peer_is_on_another_node_loses_nothing() {
    let redis = RedisServer::start();
    let configure = limited(200, 0, RateAction::Throttle);
    let node_a = TestNode::start_in_cluster(vec![redis.url()], configure).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], configure).await;
    let id = random_channel_id();
    let app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    let (sink, _stream) = app.ws.split();
    let start = Instant::now();
    let _sending = flood(sink, numbered(600));
    let arrivals = receive_numbered(&mut web, 600, start).await;
    eprintln!("600 across nodes at 200/s took {:?}", arrivals[599]);
    assert!(
        arrivals[599] >= Duration::from_millis(1950) && arrivals[599] < Duration::from_secs(4),
        "took {:?}",
        arrivals[599]
    );
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[tokio::test]
async fn token_requests_count_against_the_rate_and_buy_no_free_peer_frames() {
    use crate::harness::v1wire;

    let node = TestNode::start(byte_limited_small_frames).await;
    // PEER frames of a type the receiving library ignores, 2000 bytes each, each after a token
    // request (which the node answers).
    let peer = ignored_peer_frame(1970);
    let mut token = vec![0x06];
    token.extend_from_slice(br#"{"v":1,"t":"token","token":""}"#);
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;
    const N: usize = 200;
    for _ in 0..N {
        app.send(token.clone()).await;
        app.send(peer.clone()).await;
    }
    // Past the free control frames (64, and one per message of the peer written to the app:
    // none here), 1000 bytes a second let about one more through in 3 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut relayed = 0;
    while relayed < N {
        match tokio::time::timeout_at(deadline, web.recv()).await {
            Ok(frame) if frame[0] == 0x04 => relayed += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(
        relayed < 80,
        "{relayed} PEER frames of 2000 bytes passed 1000 bytes/s in 3 s"
    );
    node.shutdown().await;
}

/// Under a message rate, `welcome` names the most DATA a BATCH may hold (one burst's worth), so
/// a BATCH passes as its messages would one by one: within it, relayed at once; beyond it,
/// 4008 before anything of it is relayed.
#[tokio::test]
async fn a_v1_batch_holds_at_most_one_burst_of_data() {
    use crate::harness::v1wire::{self, APP_KEY, batch, data};

    let node = TestNode::start(limited(10, 0, RateAction::Close)).await;
    let id = random_channel_id();
    let mut web = v1wire::connect(&node.url(Role::Web, id.as_str()), v1wire::WEB_KEY, 1).await;
    let welcome = web.recv_server().await;
    assert_eq!(welcome["max_batch"], 10, "{welcome}");
    web.recv_server().await;
    let mut app = v1wire::connect(&node.url(Role::App, id.as_str()), APP_KEY, 1).await;
    app.welcomed().await;
    web.recv_server().await;
    let ten: Vec<Vec<u8>> = (0..10).map(|_| data(0, false, b"x")).collect();
    app.send(batch(&ten)).await;
    assert_eq!(web.recv().await, batch(&ten), "one burst passes at once");
    let mut eleven = ten.clone();
    eleven.push(data(0, false, b"y"));
    app.send(batch(&eleven)).await;
    match app.ending().await {
        Ending::Close(4008, _) => {}
        other => panic!("ended with {other:?}"),
    }
    // The web is told its peer went away, and nothing else.
    only_server_frames_for(&mut web, Duration::from_millis(300)).await;
    node.shutdown().await;
}

/// `max_batch` counts every frame of a BATCH, ACKs included: ACKs past the free allowance count
/// as messages, so a BATCH of them could otherwise carry several bursts at once.
#[tokio::test]
async fn a_v1_batch_of_acks_counts_against_max_batch_too() {
    use crate::harness::v1wire::{self, WEB_KEY, ack, batch};

    let node = TestNode::start(limited(10, 0, RateAction::Close)).await;
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;
    let acks: Vec<Vec<u8>> = (0..11).map(|_| ack(v1wire::sid(WEB_KEY), 1)).collect();
    app.send(batch(&acks)).await;
    match app.ending().await {
        Ending::Close(4008, _) => {}
        other => panic!("ended with {other:?}"),
    }
    only_server_frames_for(&mut web, Duration::from_millis(300)).await;
    node.shutdown().await;
}

/// Control frames a v1 client sends free of the message rate still count their bytes: DATA
/// written to it (300 empty ones in one BATCH from its peer) buy it no bytes.
#[tokio::test]
async fn free_v1_control_frames_still_count_their_bytes() {
    use crate::harness::v1wire::{self, batch, data};

    let node = TestNode::start(byte_limited_small_frames).await;
    let id = random_channel_id();
    let (mut app, mut web) = v1wire::welcomed_pair(&node, &id).await;
    let empty: Vec<Vec<u8>> = (0..300).map(|_| data(0, false, b"")).collect();
    web.send(batch(&empty)).await;
    assert_eq!(app.recv().await, batch(&empty));
    // PEER frames of a type libraries ignore, 3 900 bytes each.
    let peer = ignored_peer_frame(3900);
    let sending = tokio::spawn(async move {
        for _ in 0..300 {
            app.send(peer.clone()).await;
        }
        app
    });
    let mut relayed = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(frame) = tokio::time::timeout_at(deadline, web.recv()).await {
        if frame[0] == 0x04 {
            relayed += frame.len();
        }
    }
    // A burst of 1 000 bytes, 3 000 more in 3 s, and one frame's debt: well under 10 000.
    assert!(
        relayed < 10_000,
        "{relayed} bytes passed a 1000 bytes/s limit in 3 s"
    );
    sending.abort();
    node.shutdown().await;
}
