//! Cluster mode under churn: senders that reconnect, nodes that lose Redis or stop, clients
//! that leave every way they can. Every test here runs a real `redis-server` and real
//! clients over real sockets.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Bytes, Message};
use wspair::Role;

use crate::harness::client::{close_gracefully, send_numbered_until_throttled};
use crate::harness::proxy::Proxy;
use crate::harness::redis::RedisServer;
use crate::harness::rng::Rng;
use crate::harness::{Client, TestNode, random_channel_id, read};

/// A payload naming its pair, its sender's incarnation and its number within it, padded to
/// `len` bytes (at least 20).
fn numbered(pair: u32, incarnation: u32, seq: u64, len: usize) -> Bytes {
    let mut payload = vec![b'.'; len.max(20)];
    payload[0..4].copy_from_slice(&pair.to_be_bytes());
    payload[4..8].copy_from_slice(&incarnation.to_be_bytes());
    payload[8..16].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(payload)
}

/// The pair, incarnation and number of a [`numbered`] payload.
fn parse_numbered(payload: &[u8]) -> (u32, u32, u64) {
    assert!(payload.len() >= 16, "a foreign message: {payload:?}");
    (
        u32::from_be_bytes(payload[0..4].try_into().unwrap()),
        u32::from_be_bytes(payload[4..8].try_into().unwrap()),
        u64::from_be_bytes(payload[8..16].try_into().unwrap()),
    )
}

/// What a receiver got, by (pair, incarnation), in arrival order.
#[derive(Default)]
struct Tally {
    received: HashMap<(u32, u32), Vec<u64>>,
}

/// How one sender's messages arrived, against what it sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
}

impl Verdict {
    fn is_clean(&self) -> bool {
        *self == Verdict::default()
    }

    fn add(&mut self, other: Verdict) {
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.out_of_order += other.out_of_order;
    }
}

impl Tally {
    fn record(&mut self, payload: &[u8]) {
        let (pair, incarnation, seq) = parse_numbered(payload);
        self.received
            .entry((pair, incarnation))
            .or_default()
            .push(seq);
    }

    fn count(&self, pair: u32, incarnation: u32) -> usize {
        self.received.get(&(pair, incarnation)).map_or(0, Vec::len)
    }

    /// Checks that (pair, incarnation) arrived as `0..sent` exactly once each and in order;
    /// message `sent` may follow (a send given up while it sat in the client's buffer).
    fn verdict(&self, pair: u32, incarnation: u32, sent: u64) -> Verdict {
        let empty = Vec::new();
        let got = self.received.get(&(pair, incarnation)).unwrap_or(&empty);
        let mut seen = std::collections::HashSet::new();
        let mut verdict = Verdict::default();
        let mut highest: Option<u64> = None;
        for &seq in got {
            if !seen.insert(seq) {
                verdict.duplicated += 1;
                continue;
            }
            if highest.is_some_and(|h| seq < h) {
                verdict.out_of_order += 1;
            }
            highest = Some(highest.map_or(seq, |h| h.max(seq)));
        }
        verdict.lost = (0..sent).filter(|seq| !seen.contains(seq)).count() as u64;
        verdict
    }
}

/// Waits until `counter` reaches `target`, or has not moved for `quiet`; returns its value.
async fn settle(counter: &std::sync::atomic::AtomicU64, target: u64, quiet: Duration) -> u64 {
    let mut last = read(counter);
    let mut since = Instant::now();
    loop {
        let now = read(counter);
        if now >= target {
            return now;
        }
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Credit a receiving session returns for messages of a sender that has since closed goes, by
/// channel and role, to that sender's successor on the same node, which already started with
/// a full window: the successor then has more messages in flight than the receiver's queue
/// holds, and the receiving node drops the excess (`messages_dropped_remote`).
///
/// The app on node B does not read. The first web on node A sends until the app's socket is
/// full (node B stops writing to it) and then `QUEUED` more, which wait in node B's queue
/// for the app; it cannot be throttled yet (its window is larger), so its close handshake
/// completes (a throttled client's close frame is read only after what it sent before). A
/// second web on node A then sends until throttled, and at last the app reads everything.
#[tokio::test]
async fn credit_owed_to_a_reconnected_sender_never_overflows_the_receiver() {
    const MESSAGE_BYTES: usize = 10 * 1024;
    // Below the 71 messages a sender may have in flight with these settings (the window is
    // 1 MiB / 10 KiB = 102 messages, less a credit batch of 32, plus one).
    const QUEUED: usize = 60;
    const PATIENCE: Duration = Duration::from_millis(300);
    let redis = RedisServer::start();
    let configure = |c: &mut wspair::Config| c.outer.send_queue = 256;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], configure).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], configure).await;
    let relayed = &node_b.metrics.messages_relayed;
    let id = random_channel_id();
    let app = node_b.connect(Role::App, &id).await;
    let (_app_sink, mut app_stream) = app.ws.split();
    let mut tally = Tally::default();

    let web = node_a.connect(Role::Web, &id).await;
    let (mut sink, mut stream) = web.ws.split();
    let mut sent_1 = 0u64;
    let send = async |sink: &mut crate::harness::client::Sink, n: u64| {
        tokio::time::timeout(
            crate::harness::EVENT_TIMEOUT,
            sink.send(Message::binary(numbered(0, 1, n, MESSAGE_BYTES))),
        )
        .await
        .unwrap_or_else(|_| panic!("the first web was throttled at message {n}"))
        .expect("send");
    };
    // Until node B cannot write to the app any more.
    let socket_full = loop {
        send(&mut sink, sent_1).await;
        sent_1 += 1;
        let written = settle(relayed, sent_1, PATIENCE).await;
        if written < sent_1 {
            break written;
        }
        assert!(sent_1 < 20_000, "the app's socket never filled");
    };
    for _ in 0..QUEUED {
        send(&mut sink, sent_1).await;
        sent_1 += 1;
    }
    let closed = close_gracefully(&mut sink, &mut stream, crate::harness::EVENT_TIMEOUT).await;
    assert!(closed, "the first web's close handshake did not complete");
    let waiting = sent_1 - settle(relayed, sent_1, PATIENCE).await;
    assert!(
        waiting > 32,
        "only {waiting} of the first web's messages wait at node B (socket full after {socket_full})"
    );

    let web = node_a.connect(Role::Web, &id).await;
    let (mut sink, mut stream) = web.ws.split();
    let sent_2 = send_numbered_until_throttled(
        &mut sink,
        |n| numbered(0, 2, n as u64, MESSAGE_BYTES),
        PATIENCE,
    )
    .await;
    let dropped_before_reading = read(&node_b.metrics.messages_dropped_remote);
    let closing = tokio::spawn(async move {
        close_gracefully(&mut sink, &mut stream, Duration::from_secs(20)).await
    });
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), app_stream.next()).await
    {
        if let Message::Binary(payload) = message.expect("the app's connection reads cleanly") {
            tally.record(&payload);
        }
    }
    assert!(
        closing.await.unwrap(),
        "the second web's close handshake did not complete"
    );
    let dropped = (
        read(&node_a.metrics.messages_dropped_remote),
        read(&node_b.metrics.messages_dropped_remote),
    );
    let first = tally.verdict(0, 1, sent_1);
    let second = tally.verdict(0, 2, sent_2 as u64);
    let summary = format!(
        "first web sent {sent_1} ({waiting} waiting at node B when it closed), app received {} \
         and {first:?}; second web sent {sent_2}, app received {} and {second:?}; \
         messages_dropped_remote: node A {}, node B {} ({dropped_before_reading} before the \
         app read again)",
        tally.count(0, 1),
        tally.count(0, 2),
        dropped.0,
        dropped.1,
    );
    assert_eq!(dropped, (0, 0), "{summary}");
    assert!(first.is_clean() && second.is_clean(), "{summary}");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A node that lost Redis long enough for the others to time it out, and then registered
/// again, must be able to send as before: the credit its peers' sessions return reaches it,
/// including credit for what it sent while the others held it for dead.
/// App on node A (whose Redis goes through a proxy the test cuts), web on node B; the app
/// streams to the web all along.
#[tokio::test]
async fn a_node_timed_out_and_rejoined_gets_its_credit_back() {
    const MESSAGES: usize = 3000;
    const STREAM_LIMIT: Duration = Duration::from_secs(10);
    let redis = RedisServer::start();
    let proxy = Proxy::start(format!("127.0.0.1:{}", redis.port).parse().unwrap()).await;
    let node_a = TestNode::start_in_cluster(vec![format!("redis://{}", proxy.addr)], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_ttl = node_a.config.registry.node_ttl;
    let id = random_channel_id();
    let app = node_a.connect(Role::App, &id).await;
    let web = node_b.connect(Role::Web, &id).await;
    let (mut app_sink, mut app_stream) = app.ws.split();
    let (mut web_sink, mut web_stream) = web.ws.split();

    // The app sends `during-N` until told to stop, then `after-0` to `after-2999`; a message
    // whose send is slow stays in the client's buffer and goes out with the next.
    let streaming_after = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = std::sync::Arc::clone(&streaming_after);
    let during_sent = std::sync::Arc::new(AtomicU64::new(0));
    let during_received = std::sync::Arc::new(AtomicU64::new(0));
    let sent_count = std::sync::Arc::clone(&during_sent);
    let sender = tokio::spawn(async move {
        let mut during = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let send = app_sink.send(Message::text(format!("during-{during}")));
            let _ = tokio::time::timeout(Duration::from_millis(100), send).await;
            during += 1;
            sent_count.store(during, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for i in 0..MESSAGES {
            app_sink
                .feed(Message::text(format!("after-{i}")))
                .await
                .expect("the app sends");
        }
        app_sink.flush().await.expect("the app flushes");
    });
    // The web reads everything: the `during` messages in order (some may be lost while node B
    // holds node A for dead), then every `after` message in order.
    let after_received = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = std::sync::Arc::clone(&after_received);
    let received_count = std::sync::Arc::clone(&during_received);
    let reader = tokio::spawn(async move {
        let mut last_during: Option<u64> = None;
        loop {
            let Some(Ok(message)) = web_stream.next().await else {
                panic!("the web's connection ended");
            };
            let Message::Text(text) = message else {
                continue;
            };
            if let Some(n) = text.strip_prefix("during-") {
                let n: u64 = n.parse().unwrap();
                assert!(
                    last_during.is_none_or(|last| n > last),
                    "during-{n} after during-{last_during:?}"
                );
                assert_eq!(
                    progress.load(std::sync::atomic::Ordering::SeqCst),
                    0,
                    "{text} after the first after-message"
                );
                last_during = Some(n);
                received_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            } else {
                let received = progress.load(std::sync::atomic::Ordering::SeqCst);
                assert_eq!(text.as_str(), format!("after-{received}"), "out of order");
                progress.store(received + 1, std::sync::atomic::Ordering::SeqCst);
                if received + 1 == MESSAGES {
                    return;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Node A loses Redis; node B times it out (the web's messages find no peer).
    proxy.cut();
    let cut_at = Instant::now();
    let dropped_before = read(&node_b.metrics.messages_dropped_no_peer);
    while read(&node_b.metrics.messages_dropped_no_peer) == dropped_before {
        assert!(
            cut_at.elapsed() < node_ttl * 3,
            "node B had not timed node A out {:?} after the cut (node-ttl {node_ttl:?})",
            cut_at.elapsed()
        );
        web_sink
            .send(Message::text("is anyone there"))
            .await
            .expect("the web sends");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let timed_out_after = cut_at.elapsed();
    // The app goes on streaming for a while as a node held for dead.
    tokio::time::sleep(node_ttl / 2).await;

    // Node A reaches Redis again and registers again; the web's messages reach the app again.
    proxy.restore();
    let restored_at = Instant::now();
    loop {
        web_sink
            .send(Message::text("together again"))
            .await
            .expect("the web sends");
        let joined = tokio::time::timeout(Duration::from_millis(300), async {
            loop {
                match app_stream.next().await {
                    Some(Ok(Message::Text(text))) if text == "together again" => return,
                    Some(Ok(_)) => {}
                    _ => panic!("the app's connection ended"),
                }
            }
        })
        .await;
        if joined.is_ok() {
            break;
        }
        assert!(
            restored_at.elapsed() < Duration::from_secs(10),
            "the pair did not join up again within 10 s of Redis coming back"
        );
    }

    streaming_after.store(true, std::sync::atomic::Ordering::SeqCst);
    match tokio::time::timeout(STREAM_LIMIT, reader).await {
        Ok(result) => result.expect("the web reads cleanly"),
        Err(_) => panic!(
            "the stream stalled: the web received {} of {MESSAGES} messages sent after the \
             pair joined up again, in {STREAM_LIMIT:?} (before that, the app sent about {} \
             messages and the web received {}; node B timed node A out {timed_out_after:?} \
             after the cut; messages_dropped_remote: node A {}, node B {}; \
             link_frames_dropped: node A {}, node B {})",
            after_received.load(std::sync::atomic::Ordering::SeqCst),
            during_sent.load(std::sync::atomic::Ordering::SeqCst),
            during_received.load(std::sync::atomic::Ordering::SeqCst),
            read(&node_a.metrics.messages_dropped_remote),
            read(&node_b.metrics.messages_dropped_remote),
            read(&node_a.metrics.link_frames_dropped),
            read(&node_b.metrics.link_frames_dropped),
        ),
    };
    sender.await.expect("the sender finishes");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// Sends `n` numbered text messages each way at once, as [`crate::harness::client::exchange`]
/// does, and reports how many each side received in order within `within`, with the first
/// message out of order if one was; never panics, so a test can report every pair.
async fn exchange_counted(
    app: Client,
    web: Client,
    n: usize,
    within: Duration,
) -> (usize, usize, Option<String>) {
    async fn run(
        client: Client,
        tag: &'static str,
        peer_tag: &'static str,
        n: usize,
        within: Duration,
    ) -> (usize, Option<String>) {
        let (mut sink, mut stream) = client.ws.split();
        let sending = async move {
            for i in 0..n {
                if sink
                    .feed(Message::text(format!("{tag}-{i}")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = sink.flush().await;
            // Held open until the deadline, so the peer can still receive.
            std::future::pending::<()>().await;
        };
        let received = std::cell::Cell::new(0usize);
        let receiving = async {
            while received.get() < n {
                match stream.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let expected = format!("{peer_tag}-{}", received.get());
                        if text.as_str() != expected {
                            return Some(format!("{tag} got {text}, not {expected}"));
                        }
                        received.set(received.get() + 1);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Some(format!("{tag}: {err}")),
                    None => return Some(format!("{tag}: connection ended")),
                }
            }
            None
        };
        let error = tokio::select! {
            error = receiving => error,
            () = sending => None,
            () = tokio::time::sleep(within) => None,
        };
        (received.get(), error)
    }
    let ((app_got, app_error), (web_got, web_error)) = tokio::join!(
        run(app, "app", "web", n, within),
        run(web, "web", "app", n, within)
    );
    (app_got, web_got, app_error.or(web_error))
}

/// A client kept busy in the background: it sends a small binary message every 50 ms and
/// reads (and discards) whatever comes, until [`Busy::stop`] hands it back.
struct Busy {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Client>,
}

impl Busy {
    fn start(client: Client) -> Busy {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let (mut sink, mut stream) = client.ws.split();
            let mut ticker = tokio::time::interval(Duration::from_millis(50));
            let mut open = true;
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    next = stream.next(), if open => open = matches!(next, Some(Ok(_))),
                    _ = ticker.tick() => {
                        let send = sink.send(Message::binary(Bytes::from_static(b"busy")));
                        let _ = tokio::time::timeout(Duration::from_millis(100), send).await;
                    }
                }
            }
            Client {
                ws: sink.reunite(stream).expect("halves of one client"),
            }
        });
        Busy { stop, task }
    }

    async fn stop(self) -> Client {
        self.stop.cancel();
        self.task.await.expect("the busy client's task")
    }
}

/// Connects to `url`, retrying refused or failed upgrades until `within` has passed; with
/// `send_buffer`, over a socket whose SO_SNDBUF is fixed at that.
async fn connect_retrying(url: &str, send_buffer: Option<u32>, within: Duration) -> Client {
    let started = Instant::now();
    loop {
        match Client::try_connect_with_socket_buffers(url, None, send_buffer).await {
            Ok(client) => return client,
            Err(err) => assert!(
                started.elapsed() < within,
                "no upgrade within {within:?}; the last attempt: {err}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A node that stops for longer than `registry.node-ttl` (SIGSTOP: a long GC pause, a frozen
/// VM) is timed out by the others while its clients' sockets stay open. Its clients move to
/// the other nodes, as phones that switch networks do, leaving their old connections open;
/// then the node runs again (SIGCONT), finds itself timed out and registers again what it
/// still holds. Every pair must work afterwards, and every node must answer.
#[tokio::test]
async fn a_paused_node_comes_back_without_losing_pairs() {
    use crate::harness::process::ProcessNode;
    const PAIRS: usize = 30;
    // node-ttl is 2 s: the late moves come after node C was timed out, and node C runs again
    // 1.5 s after them.
    const LATE_MOVE: Duration = Duration::from_millis(2500);
    const PAUSE: Duration = Duration::from_millis(4000);
    let redis = RedisServer::start();
    let args = crate::harness::process_cluster_args(&redis.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = [
        ProcessNode::start(&args),
        ProcessNode::start(&args),
        ProcessNode::start(&args),
    ];
    const NAMES: [&str; 3] = ["A", "B", "C"];
    const C: usize = 2;
    // Every combination of nodes: pair i has its app on node i % 3 and its web on node
    // (i / 3) % 3, so a third of the pairs have their app on C, a third their web.
    let mut ids = Vec::new();
    let mut places = Vec::new();
    let mut busy = Vec::new();
    for i in 0..PAIRS {
        let id = random_channel_id();
        let (app_node, web_node) = (i % 3, (i / 3) % 3);
        let app = Client::connect(&nodes[app_node].url(Role::App, &id)).await;
        let web = Client::connect(&nodes[web_node].url(Role::Web, &id)).await;
        let (app, web) = crate::harness::client::exchange(app, web, 5).await;
        busy.push((Busy::start(app), Busy::start(web)));
        ids.push(id);
        places.push([app_node, web_node]);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    nodes[C].pause();
    let paused_at = Instant::now();
    // Every client of node C moves to node A or B, its old connection left open: those of
    // even pairs at once (node C still counts as live), those of odd pairs once the others
    // have timed node C out.
    let mut stale = Vec::new();
    let mut moves = Vec::new();
    for i in 0..PAIRS {
        for (side, role) in [(0, Role::App), (1, Role::Web)] {
            if places[i][side] != C {
                continue;
            }
            let to = (i + side) % 2;
            let url = nodes[to].url(role, &ids[i]);
            moves.push(async move {
                if i % 2 == 1 {
                    tokio::time::sleep_until((paused_at + LATE_MOVE).into()).await;
                }
                (i, side, to, connect_retrying(&url, None, PAUSE * 3).await)
            });
        }
    }
    let moved = futures::future::join_all(moves).await;
    for (i, side, to, client) in moved {
        let fresh = Busy::start(client);
        let old = if side == 0 {
            std::mem::replace(&mut busy[i].0, fresh)
        } else {
            std::mem::replace(&mut busy[i].1, fresh)
        };
        stale.push(old.stop().await);
        places[i][side] = to;
    }
    let moved_within = paused_at.elapsed();
    tokio::time::sleep(PAUSE.saturating_sub(paused_at.elapsed())).await;
    nodes[C].resume();
    // Node C runs a few heartbeats (every node-ttl / 5) and finds it was timed out.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut exchanges = Vec::new();
    for (i, (app, web)) in busy.into_iter().enumerate() {
        exchanges.push(async move {
            let (app, web) = (app.stop().await, web.stop().await);
            (
                i,
                exchange_counted(app, web, 200, Duration::from_secs(6)).await,
            )
        });
    }
    let results = futures::future::join_all(exchanges).await;
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, (app_got, web_got, error))| {
            *app_got != 200 || *web_got != 200 || error.is_some()
        })
        .map(|(i, (app_got, web_got, error))| {
            format!(
                "pair {i} (app {}→{}, web {}→{}): app got {app_got}, web got {web_got}{}",
                NAMES[i % 3],
                NAMES[places[*i][0]],
                NAMES[(i / 3) % 3],
                NAMES[places[*i][1]],
                error.as_ref().map(|e| format!(", {e}")).unwrap_or_default()
            )
        })
        .collect();
    let mut unanswered = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let health = tokio::time::timeout(
            Duration::from_secs(1),
            crate::harness::http::request(node.addr, "GET", "/healthz", ""),
        )
        .await;
        if !matches!(&health, Ok(response) if response.status == 200) {
            unanswered.push(NAMES[n]);
        }
    }
    assert!(
        failed.is_empty() && unanswered.is_empty(),
        "{} of {PAIRS} pairs did not exchange 200 messages each way after node C's pause \
         (every client moved within {moved_within:?} of it): {failed:#?}; nodes not answering \
         /healthz within 1 s: {unanswered:?}",
        failed.len()
    );
    drop(stale);
}

/// Ends a client's connection without a close frame: a reset (SO_LINGER 0) if `reset`, else
/// a plain FIN.
fn abort(client: Client, reset: bool) {
    if reset && let tokio_tungstenite::MaybeTlsStream::Plain(stream) = client.ws.get_ref() {
        stream.set_zero_linger().expect("SO_LINGER 0");
    }
    drop(client);
}

/// A client leaves: `0` with a close handshake (if the server still takes it), `1` dropping
/// the connection without a close frame, `2` resetting it.
async fn leave(client: Client, how: usize) {
    match how {
        0 => {
            let (mut sink, mut stream) = client.ws.split();
            let _ = close_gracefully(&mut sink, &mut stream, Duration::from_secs(2)).await;
        }
        1 => abort(client, false),
        _ => abort(client, true),
    }
}

/// What a node still holds once every client has left, if anything.
async fn leftovers(node: &TestNode, ids: &[wspair::ChannelId]) -> Option<String> {
    let response = crate::harness::http::request(node.addr, "GET", "/healthz", "").await;
    let health: serde_json::Value = serde_json::from_str(&response.body).expect("healthz is JSON");
    let records: Vec<String> = ids
        .iter()
        .flat_map(|id| [(id, Role::App), (id, Role::Web)])
        .filter(|(id, role)| node.router.hub.peer(id, *role).is_some())
        .map(|(id, role)| format!("{id}:{role}"))
        .collect();
    // The request asking is itself a connection handshaking.
    let clean = health["connections"] == 0
        && health["pairs"] == 0
        && health["handshaking"] == 1
        && records.is_empty();
    (!clean).then(|| {
        format!(
            "connections {}, pairs {}, handshaking {} (1 is the request asking), peer records {records:?}",
            health["connections"], health["pairs"], health["handshaking"]
        )
    })
}

/// Once every client has left, however it left (a close handshake, a connection dropped
/// without a close frame or reset, an upgrade given up halfway, replaced by a newer client),
/// and with messages still in flight, no node holds a session, a pair or a record of a peer,
/// and Redis holds no route, within `registry.node-ttl` and a second.
#[tokio::test]
async fn nothing_leaks_after_every_client_left() {
    use crate::harness::http::abandoned_upgrade;
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestNode::start_in_cluster(vec![redis.url()], |_| {}).await);
    }
    let node_ttl = nodes[0].config.registry.node_ttl;
    let target =
        |role: Role, id: &wspair::ChannelId| format!("/channel?type={role}&channelId={id}");
    let mut ids = Vec::new();
    let mut pairs = Vec::new();
    // 18 pairs: every combination of nodes twice, same node and across nodes.
    for i in 0..18 {
        let id = random_channel_id();
        let app = nodes[i % 3].connect(Role::App, &id).await;
        let web = nodes[(i / 3) % 3].connect(Role::Web, &id).await;
        let (app, web) = crate::harness::client::exchange(app, web, 20).await;
        ids.push(id);
        pairs.push((app, web));
    }
    // Replacements given up halfway, on every node, for roles of working pairs.
    for (i, id) in ids.iter().enumerate().take(6) {
        let role = if i % 2 == 0 { Role::App } else { Role::Web };
        abandoned_upgrade(nodes[(i + 1) % 3].addr, &target(role, id)).await;
    }
    // Replacements that complete, on another node: the old client is closed with 4001.
    let mut replaced = Vec::new();
    for (i, (_, web)) in pairs.iter_mut().enumerate().skip(6).take(6) {
        let newer = nodes[(i + 1) % 3].connect(Role::Web, &ids[i]).await;
        replaced.push(std::mem::replace(web, newer));
    }
    // Upgrades given up halfway for channels nobody else is on, and for the missing role of a
    // channel with one client.
    let mut singles = Vec::new();
    for i in 0..6 {
        let id = random_channel_id();
        abandoned_upgrade(nodes[i % 3].addr, &target(Role::App, &id)).await;
        if i % 2 == 0 {
            let web = nodes[(i + 1) % 3].connect(Role::Web, &id).await;
            abandoned_upgrade(nodes[(i + 2) % 3].addr, &target(Role::App, &id)).await;
            singles.push(web);
        }
        ids.push(id);
    }
    let routes_before = redis
        .cli(&["--scan", "--pattern", "wspair:{*"])
        .expect("redis-cli")
        .lines()
        .count();
    assert!(
        routes_before >= 2 * 18,
        "{routes_before} routes in Redis with 18 pairs connected"
    );

    // Everyone leaves at once, each pair with messages in flight: one side sends a burst and
    // leaves, the other leaves a moment later; a third with a close handshake, a third
    // dropping the connection, a third resetting it. (A replacement given up on a third node
    // may have evicted its role's client already, as `Router::abandon` documents: that client
    // leaves like the others.)
    let leaving = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (app, web))| async move {
            let (mut first, second) = if i % 2 == 0 { (app, web) } else { (web, app) };
            for n in 0..30 {
                let burst = first.ws.feed(Message::text(format!("burst-{n}")));
                if tokio::time::timeout(Duration::from_millis(100), burst)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), first.ws.flush()).await;
            leave(first, i % 3).await;
            tokio::time::sleep(Duration::from_millis((i % 4) as u64 * 5)).await;
            leave(second, (i / 3) % 3).await;
        });
    let others = replaced
        .into_iter()
        .chain(singles)
        .enumerate()
        .map(|(i, client)| leave(client, i % 3));
    futures::future::join(
        futures::future::join_all(leaving),
        futures::future::join_all(others),
    )
    .await;
    let upgrades_failed: u64 = nodes.iter().map(|n| read(&n.metrics.upgrades_failed)).sum();

    let left_at = Instant::now();
    let limit = node_ttl + Duration::from_secs(1);
    loop {
        let routes = redis
            .cli(&["--scan", "--pattern", "wspair:{*"])
            .expect("redis-cli");
        let routes: Vec<&str> = routes.lines().filter(|l| !l.is_empty()).collect();
        let mut held = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            if let Some(what) = leftovers(node, &ids).await {
                held.push(format!("node {n}: {what}"));
            }
        }
        if routes.is_empty() && held.is_empty() {
            break;
        }
        assert!(
            left_at.elapsed() < limit,
            "{limit:?} after every client left ({upgrades_failed} upgrades given up), Redis \
             holds {} routes {routes:?} and {held:#?}",
            routes.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes {
        node.shutdown().await;
    }
}

/// What one web incarnation did.
struct Incarnation {
    number: u32,
    /// The node it connected to.
    node: usize,
    /// Messages whose send completed (the next one may have gone out too: see
    /// [`send_numbered_until_throttled`]).
    sent: u64,
    /// Sends that waited over 100 ms: the relay pushed back.
    throttled: u64,
    /// Why it stopped sending early, if it did: a send that waited past the limit, or failed.
    stuck: Option<String>,
    /// Its close handshake completed: the server read everything it sent.
    graceful: bool,
}

/// Many pairs across three nodes; each app stays connected and pauses reading for random
/// spells, while its web sends all the time and, every 0.5–3 s, closes (a close handshake)
/// and reconnects to a random node. Every message of a web incarnation whose close handshake
/// completed reaches the app exactly once and in order; no incarnation's messages arrive
/// twice or out of order.
///
/// The app's socket buffer is small (a slow link) and so is the web's, and the app pauses for
/// up to 4 s: long enough for what the node's own socket buffer takes (megabytes) to fill
/// and the app's queue with it, so the relay pushes back on the web, and short enough that
/// every close handshake completes within `CLOSE_WITHIN` (the test fails if one does not:
/// it could not tell what such an incarnation sent). `WSPAIR_CHURN_SEED` repeats a run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_delivers_every_message_of_every_graceful_incarnation() {
    const PAIRS: usize = 50;
    const RUN: Duration = Duration::from_secs(15);
    // About 200 messages (2 MB) a second from every web.
    const MESSAGE_BYTES: usize = 10 * 1024;
    const BURST: u64 = 4;
    const BURST_EVERY: Duration = Duration::from_millis(20);
    const LONGEST_PAUSE: Duration = Duration::from_secs(4);
    const CLOSE_WITHIN: Duration = Duration::from_secs(10);
    // An app on a slow link: its socket holds little, so its pauses push back on its web.
    const APP_RECV_BUFFER: u32 = 16 * 1024;
    // A web whose own socket holds little: its sends wait as soon as the relay stops reading
    // it, and its close frame is never far behind its last message.
    const WEB_SEND_BUFFER: u32 = 16 * 1024;
    let seed: u64 = std::env::var("WSPAIR_CHURN_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(0x00C0_FFEE);
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        // A node-ttl long enough that a busy machine never times a node out: this test is
        // about clients coming and going, not nodes.
        let configure = |c: &mut wspair::Config| {
            c.outer.send_queue = 64;
            c.registry.node_ttl = Duration::from_secs(5);
        };
        nodes.push(TestNode::start_in_cluster(vec![redis.url()], configure).await);
    }
    assert!(LONGEST_PAUSE * 4 < nodes[0].config.outer.stall_timeout);
    let started = Instant::now();
    let ends_at = started + RUN;

    let mut apps = Vec::new();
    let mut webs = Vec::new();
    for pair in 0..PAIRS {
        let id = random_channel_id();
        let app = Client::connect_with_socket_buffers(
            &nodes[pair % 3].url(Role::App, id.as_str()),
            Some(APP_RECV_BUFFER),
            None,
        )
        .await;
        let web_urls: Vec<String> = nodes
            .iter()
            .map(|node| node.url(Role::Web, id.as_str()))
            .collect();
        let mut rng = Rng::new(seed ^ ((pair as u64) << 32));
        // The app: reads for a spell, pauses for a spell, and once every web has finished,
        // reads until nothing more comes.
        let webs_done = tokio_util::sync::CancellationToken::new();
        let done = webs_done.clone();
        let mut app_rng = Rng::new(rng.next());
        apps.push((
            webs_done,
            tokio::spawn(async move {
                let (_sink, mut stream) = app.ws.split();
                let mut tally = Tally::default();
                let mut record = |message: Option<Result<Message, _>>| match message {
                    Some(Ok(Message::Binary(payload))) => tally.record(&payload),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => panic!("pair {pair}: the app's connection failed: {err}"),
                    None => panic!("pair {pair}: the app's connection ended"),
                };
                while !done.is_cancelled() {
                    let reading_until = tokio::time::Instant::now()
                        + app_rng.between(Duration::from_millis(200), Duration::from_secs(2));
                    loop {
                        tokio::select! {
                            () = tokio::time::sleep_until(reading_until) => break,
                            () = done.cancelled() => break,
                            message = stream.next() => record(message),
                        }
                    }
                    let pause = app_rng.between(Duration::ZERO, LONGEST_PAUSE);
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = done.cancelled() => {}
                    }
                }
                while let Ok(message) =
                    tokio::time::timeout(Duration::from_millis(1500), stream.next()).await
                {
                    record(message);
                }
                tally
            }),
        ));
        // The web: incarnation after incarnation until the run ends.
        let mut web_rng = Rng::new(rng.next());
        webs.push(tokio::spawn(async move {
            let mut incarnations = Vec::new();
            let mut number = 0u32;
            while Instant::now() < ends_at {
                number += 1;
                let node = web_rng.below(3);
                let web = connect_retrying(
                    &web_urls[node],
                    Some(WEB_SEND_BUFFER),
                    crate::harness::EVENT_TIMEOUT,
                )
                .await;
                let (mut sink, mut stream) = web.ws.split();
                let lifetime = web_rng.between(Duration::from_millis(500), Duration::from_secs(3));
                let closes_at = (Instant::now() + lifetime).min(ends_at);
                let mut incarnation = Incarnation {
                    number,
                    node,
                    sent: 0,
                    throttled: 0,
                    stuck: None,
                    graceful: false,
                };
                while Instant::now() < closes_at {
                    let sending_at = Instant::now();
                    let payload = numbered(pair as u32, number, incarnation.sent, MESSAGE_BYTES);
                    match tokio::time::timeout(CLOSE_WITHIN, sink.send(Message::binary(payload)))
                        .await
                    {
                        Ok(Ok(())) => incarnation.sent += 1,
                        Ok(Err(err)) => {
                            incarnation.stuck = Some(format!("send failed: {err}"));
                            break;
                        }
                        Err(_) => {
                            incarnation.stuck =
                                Some(format!("a send waited over {CLOSE_WITHIN:?}"));
                            break;
                        }
                    }
                    if sending_at.elapsed() > Duration::from_millis(100) {
                        incarnation.throttled += 1;
                    }
                    if incarnation.sent.is_multiple_of(BURST) {
                        tokio::time::sleep(BURST_EVERY).await;
                    }
                }
                incarnation.graceful = incarnation.stuck.is_none()
                    && close_gracefully(&mut sink, &mut stream, CLOSE_WITHIN).await;
                incarnations.push(incarnation);
            }
            incarnations
        }));
    }

    let mut sent_by_pair = Vec::new();
    for web in webs {
        sent_by_pair.push(web.await.expect("a web's task"));
    }
    let webs_finished = started.elapsed();
    for (done, _) in &apps {
        done.cancel();
    }
    let mut received_by_pair = Vec::new();
    for (_, app) in apps {
        received_by_pair.push(app.await.expect("an app's task"));
    }

    let mut graceful = Verdict::default();
    let mut other = Verdict::default();
    let (mut n_incarnations, mut n_graceful, mut n_sent, mut n_received) = (0, 0, 0u64, 0u64);
    let mut n_throttled = 0u64;
    let mut examples = Vec::new();
    let mut not_closed = Vec::new();
    for (pair, (incarnations, tally)) in sent_by_pair.iter().zip(&received_by_pair).enumerate() {
        for incarnation in incarnations {
            let received = tally.count(pair as u32, incarnation.number);
            let verdict = tally.verdict(pair as u32, incarnation.number, incarnation.sent);
            n_incarnations += 1;
            n_sent += incarnation.sent;
            n_received += received as u64;
            n_throttled += incarnation.throttled;
            let what = format!(
                "pair {pair} (app on node {}) web {} on node {}: sent {}, received {received}",
                pair % 3,
                incarnation.number,
                incarnation.node,
                incarnation.sent,
            );
            if incarnation.graceful {
                n_graceful += 1;
                graceful.add(verdict);
                if !verdict.is_clean() && examples.len() < 5 {
                    examples.push(format!("{what}, {verdict:?}"));
                }
            } else {
                other.add(Verdict { lost: 0, ..verdict });
                if not_closed.len() < 5 {
                    not_closed.push(format!(
                        "{what}, {}",
                        incarnation
                            .stuck
                            .as_deref()
                            .unwrap_or("the close handshake did not complete")
                    ));
                }
            }
        }
    }
    let counter = |pick: fn(&wspair::metrics::Metrics) -> &AtomicU64| -> u64 {
        nodes.iter().map(|node| read(pick(&node.metrics))).sum()
    };
    let summary = format!(
        "seed {seed}: {PAIRS} pairs, {n_incarnations} web incarnations ({n_graceful} closed \
         gracefully), {n_sent} messages sent ({n_throttled} sends held back over 100 ms), \
         {n_received} received; graceful incarnations: {} lost, {} duplicated, {} out of \
         order; the others: {} duplicated, {} out of order; dropped on the nodes: no peer {}, \
         closed {}, remote {}, link {}; the webs finished after {webs_finished:?}; e.g. \
         {examples:#?}; not closed gracefully, e.g. {not_closed:#?}",
        graceful.lost,
        graceful.duplicated,
        graceful.out_of_order,
        other.duplicated,
        other.out_of_order,
        counter(|m| &m.messages_dropped_no_peer),
        counter(|m| &m.messages_dropped_closed),
        counter(|m| &m.messages_dropped_remote),
        counter(|m| &m.link_frames_dropped),
    );
    assert!(graceful.is_clean() && other.is_clean(), "{summary}");
    // No app pauses longer than LONGEST_PAUSE: every web must get through within
    // CLOSE_WITHIN, or what it sent cannot be checked.
    assert_eq!(
        n_graceful, n_incarnations,
        "web incarnations whose close handshake did not complete within {CLOSE_WITHIN:?}: \
         {summary}"
    );
    assert!(
        n_throttled > 0,
        "no web was ever held back: the test did not exercise backpressure: {summary}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

/// A claim whose peer's node does not acknowledge it (that node is paused) is refused with 503
/// after `inner.connect-timeout`, and gives its route back: no 101 for a session the peer
/// could not reach. Once the node runs again, the same client pairs.
#[tokio::test]
async fn a_claim_whose_peer_node_is_silent_is_refused_with_503_and_leaves_no_route() {
    use crate::harness::http::{UPGRADE_HEADERS, request};
    use crate::harness::process::ProcessNode;
    let redis = RedisServer::start();
    let args = crate::harness::process_cluster_args(&redis.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let node_a = ProcessNode::start(&args);
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |c| {
        c.registry.node_ttl = Duration::from_secs(5);
        c.inner.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let id = random_channel_id();
    let mut app = Client::connect(&node_a.url(Role::App, &id)).await;

    node_a.pause();
    let asked_at = Instant::now();
    let response = request(
        node_b.addr,
        "GET",
        &format!("/channel?type=web&channelId={id}"),
        UPGRADE_HEADERS,
    )
    .await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(
        response.body.trim(),
        "the node holding the peer did not answer within 1s; retry"
    );
    assert!(asked_at.elapsed() < Duration::from_secs(3));
    let key = format!("wspair:{{{id}}}:web");
    assert_eq!(
        redis.cli(&["EXISTS", &key]).map(|n| n.trim().to_owned()),
        Some("0".to_owned()),
        "the refused claim's route is gone"
    );

    node_a.resume();
    let mut web = node_b.connect(Role::Web, &id).await;
    app.send_text("after the pause").await;
    assert_eq!(web.recv_text().await, "after the pause");
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
    node_b.shutdown().await;
}

/// A replacement of the app that gives up mid-upgrade, on a pair across nodes that has
/// exchanged many messages: the displaced app is the peer again, and credit still holds both
/// ways. Each side in turn floods a receiver that does not read; nothing may be dropped at the
/// receiver's queue. (Before, the displaced app's account was ended by the grace its failed
/// replacement started, and the web's grant towards it restarted at position 0.)
#[tokio::test]
async fn credit_holds_both_ways_after_a_replacement_gives_up_mid_upgrade() {
    use crate::harness::client::send_until_throttled;
    use crate::harness::http::abandoned_upgrade;
    for web_floods in [true, false] {
        let redis = RedisServer::start();
        let configure = |c: &mut wspair::Config| {
            c.outer.send_queue = 64;
            c.outer.message_timeout = Duration::from_secs(1);
            // Displaced senders keep their share for handshake-timeout + registry.timeout + 1 s.
            c.outer.handshake_timeout = Duration::from_secs(2);
            c.registry.timeout = Duration::from_secs(1);
        };
        let node_a = TestNode::start_in_cluster(vec![redis.url()], configure).await;
        let node_b = TestNode::start_in_cluster(vec![redis.url()], configure).await;
        let id = random_channel_id();
        let app = node_a.connect(Role::App, &id).await;
        let web = node_b.connect(Role::Web, &id).await;
        let (app, web) = crate::harness::client::exchange(app, web, 500).await;
        abandoned_upgrade(node_a.addr, &format!("/channel?type=app&channelId={id}")).await;
        crate::harness::wait_until("the abandoned upgrade to fail", || {
            read(&node_a.metrics.upgrades_failed) == 1
        })
        .await;
        // Past the grace the failed replacement started (4 s).
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let (flooder, _reader, receiving_node) = if web_floods {
            (web, app, &node_a)
        } else {
            (app, web, &node_b)
        };
        let (mut sink, _stream) = flooder.ws.split();
        let payload = Bytes::from(vec![b'x'; 8 * 1024]);
        let sent = send_until_throttled(&mut sink, &payload, Duration::from_secs(2)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(sent > 64, "the flood was throttled after {sent} messages");
        assert_eq!(
            read(&receiving_node.metrics.messages_dropped_remote),
            0,
            "dropped at the receiver's queue ({} flooding, {sent} sent)",
            if web_floods { "web" } else { "app" }
        );
        assert_eq!(read(&receiving_node.metrics.messages_lost_between_nodes), 0);
        node_a.shutdown().await;
        node_b.shutdown().await;
    }
}

/// The old app's `Unbound` is lost with its link (cut as it goes, then down longer than
/// `inner.connect-timeout`), and the next app connects on a third node: the receiver frees the
/// old app's share after the grace, and the new app's messages flow. (Before, the share was
/// held for ever and the new app waited for credit for ever.)
#[tokio::test]
async fn a_lost_unbound_does_not_starve_the_next_sender_on_another_node() {
    let redis = RedisServer::start();
    let b_inner_port = crate::harness::redis::free_port();
    let proxy = Proxy::start(format!("127.0.0.1:{b_inner_port}").parse().unwrap()).await;
    // Quick ticks (the ledger's grace is swept at each), and a displaced sender's share kept
    // for handshake-timeout + registry.timeout + 1 s = 4 s.
    let quick_ticks = |c: &mut wspair::Config| {
        c.outer.message_timeout = Duration::from_secs(1);
        c.outer.handshake_timeout = Duration::from_secs(2);
        c.registry.timeout = Duration::from_secs(1);
    };
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |c| {
        quick_ticks(c);
        c.inner.port = b_inner_port;
        c.inner.advertise = proxy.addr.to_string();
    })
    .await;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |c| {
        quick_ticks(c);
        c.inner.connect_timeout = Duration::from_secs(1);
    })
    .await;
    let node_c = TestNode::start_in_cluster(vec![redis.url()], quick_ticks).await;
    let id = random_channel_id();
    let mut web = node_b.connect(Role::Web, &id).await;
    let mut app = node_a.connect(Role::App, &id).await;
    app.send_text("hello").await;
    assert_eq!(web.recv_text().await, "hello");
    proxy.cut();
    app.close().await;
    crate::harness::wait_until("node A to release the app", || {
        node_a.router.hub.counts().0 == 0
    })
    .await;
    // The `Unbound` goes into the dead connection or waits in the queue until it is dropped
    // (after inner.connect-timeout, 1 s): either way node B never gets it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let mut new_app = node_c.connect(Role::App, &id).await;
    new_app.send_text("from the new app").await;
    let within = Duration::from_secs(7);
    let got = tokio::time::timeout(within, web.recv_text()).await;
    assert_eq!(
        got.expect("the new app's message arrives within the grace and a tick"),
        "from the new app"
    );
    web.send_text("back").await;
    assert_eq!(new_app.recv_text().await, "back");
    node_a.shutdown().await;
    node_b.shutdown().await;
    node_c.shutdown().await;
}

/// A node that lost its record of a peer on another node (a race, an outage) finds it again
/// in the registry when its session next has nothing to send to: the message that found no
/// peer is dropped and counted, and the pair then relays both ways.
#[tokio::test]
async fn a_lost_peer_record_is_found_again_in_the_registry() {
    let redis = RedisServer::start();
    let node_a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let node_b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = node_b.connect(Role::Web, &id).await;
    web.send_text("first").await;
    assert_eq!(app.recv_text().await, "first");
    // Node B forgets the app, as a lost announcement would leave it.
    let route = redis
        .cli(&["GET", &format!("wspair:{{{id}}}:app")])
        .expect("the app's route");
    let (node, session) = route.trim().split_once(':').expect("node:session");
    assert!(node_b.router.hub.clear_remote(
        &id,
        Role::App,
        node.parse().unwrap(),
        session.parse().unwrap()
    ));
    web.send_text("into nothing").await;
    crate::harness::wait_until("the message to find no peer", || {
        read(&node_b.metrics.messages_dropped_no_peer) == 1
    })
    .await;
    crate::harness::wait_until("node B to find the app again", || {
        node_b.router.hub.peer(&id, Role::App).is_some()
    })
    .await;
    web.send_text("found again").await;
    assert_eq!(app.recv_text().await, "found again");
    app.send_text("and back").await;
    assert_eq!(web.recv_text().await, "and back");
    node_a.shutdown().await;
    node_b.shutdown().await;
}

/// A node killed with -9: the client that was on it reconnects to a third node and its
/// messages flow at once, without waiting `registry.node-ttl` for the dead node to be declared
/// dead (its link closed with it, so the share of the window its session held is freed as soon
/// as the successor is the peer). Before, that direction waited about `node-ttl`.
#[tokio::test]
async fn a_client_of_a_killed_node_sends_from_its_new_node_at_once() {
    use crate::harness::process::ProcessNode;
    let redis = RedisServer::start();
    let node_ttl = Duration::from_secs(5);
    let ttl = |c: &mut wspair::Config| c.registry.node_ttl = node_ttl;
    let node_a = TestNode::start_in_cluster(vec![redis.url()], ttl).await;
    let node_c = TestNode::start_in_cluster(vec![redis.url()], ttl).await;
    let mut args = crate::harness::process_cluster_args(&redis.url());
    let at = args
        .iter()
        .position(|arg| arg == "--registry-node-ttl")
        .unwrap();
    args[at + 1] = "5s".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut node_b = ProcessNode::start(&args);
    let id = random_channel_id();
    let mut app = node_a.connect(Role::App, &id).await;
    let mut web = Client::connect(&node_b.url(Role::Web, &id)).await;
    web.send_text("before").await;
    assert_eq!(app.recv_text().await, "before");

    node_b.kill9();
    let killed_at = Instant::now();
    let mut web = node_c.connect(Role::Web, &id).await;
    web.send_text("after").await;
    assert_eq!(app.recv_text().await, "after");
    let took = killed_at.elapsed();
    assert!(
        took < node_ttl / 2,
        "the moved client's first message took {took:?} (registry.node-ttl {node_ttl:?})"
    );
    app.send_text("and back").await;
    assert_eq!(web.recv_text().await, "and back");
    node_a.shutdown().await;
    node_c.shutdown().await;
}
