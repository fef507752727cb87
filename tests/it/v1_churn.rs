//! wspair.v1 under churn, with the Rust client library: both sides reconnecting at once many
//! times, a client reconnecting every 200 ms, a peer restarted from scratch, Redis restarted
//! empty while a client reconnects, and the memory of nodes that served many short-lived v1
//! pairs. Every flow is checked per direction: each message delivered exactly once and in
//! order, nothing acknowledged that was not delivered, and both outboxes empty at the end.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use wspair_client::{Client, Event, Handle, Presence, Role};

use crate::harness::process::ProcessNode;
use crate::harness::redis::RedisServer;
use crate::harness::rng::Rng;
use crate::harness::v1flow::{self, MESSAGE_BYTES, base_url};
use crate::harness::{EVENT_TIMEOUT, TestNode, random_channel_id, wait_until};

#[tokio::test]
async fn both_sides_reconnecting_at_once_to_different_nodes_many_times_lose_and_repeat_nothing() {
    const ROUNDS: u64 = 30;
    const MAX_SKEW_MS: u64 = 50;
    let mut rng = Rng::from_env_or_clock("both_sides_reconnecting_at_once");
    let redis = RedisServer::start();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(TestNode::start_in_cluster(vec![redis.url()], |_| {}).await);
    }
    let urls: Vec<String> = nodes.iter().map(|node| base_url(node.addr)).collect();
    // Each reconnect goes to the next URL of a client's list: with the lists in opposite
    // orders the two land on different nodes in two rounds out of three, on the same node in
    // the third.
    let app_urls = [urls[0].clone(), urls[1].clone(), urls[2].clone()];
    let web_urls = [urls[2].clone(), urls[1].clone(), urls[0].clone()];
    let id = random_channel_id();
    let app = v1flow::connect(&app_urls, id.as_str(), Role::App).await;
    let web = v1flow::connect(&web_urls, id.as_str(), Role::Web).await;
    // Paced, so the stream outlasts the rounds however fast the clients are, with room for
    // rounds that a busy machine slows down.
    let n = 20_000;
    let flow = v1flow::start_paced(app, web, n, 1_000);
    for round in 1..=ROUNDS {
        // Some progress between rounds, so every round has messages in flight both ways.
        flow.wait_for(n * round / (ROUNDS + 4), Duration::from_secs(30))
            .await;
        assert!(
            flow.app.delivered() < n && flow.web.delivered() < n,
            "round {round} comes mid-stream"
        );
        let skew = rng.between(Duration::ZERO, Duration::from_millis(MAX_SKEW_MS + 1));
        let (first, second) = if rng.below(2) == 0 {
            (&flow.app.handle, &flow.web.handle)
        } else {
            (&flow.web.handle, &flow.app.handle)
        };
        // The skew is the fault injected, not a wait for anything.
        let moves = async {
            tokio::join!(first.reconnect(), async {
                tokio::time::sleep(skew).await;
                second.reconnect().await;
            })
        };
        tokio::time::timeout(Duration::from_secs(20), moves)
            .await
            .unwrap_or_else(|_| panic!("round {round}: the clients did not reconnect in time"));
    }
    let outcome = flow.finish().await;
    assert!(outcome.app.stats().reconnects >= ROUNDS);
    assert!(outcome.web.stats().reconnects >= ROUNDS);
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_client_reconnecting_every_200_ms_for_30_s_causes_no_presence_change_at_its_peer() {
    const EVERY: Duration = Duration::from_millis(200);
    const FOR: Duration = Duration::from_secs(30);
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    // The app stays on A with the default presence timers (quiet 1 s); the web alternates
    // between B and A.
    let app = v1flow::connect(&[base_url(a.addr)], id.as_str(), Role::App).await;
    let web = v1flow::connect(
        &[base_url(a.addr), base_url(b.addr)],
        id.as_str(),
        Role::Web,
    )
    .await;
    // 300 messages a second each way for the 30 s the web keeps moving.
    let rate = 300;
    let n = rate * FOR.as_secs();
    let flow = v1flow::start_paced(app, web, n, rate);
    let started = tokio::time::Instant::now();
    let mut moves = 0u32;
    while started.elapsed() < FOR {
        moves += 1;
        tokio::time::sleep_until(started + EVERY * moves).await;
        tokio::time::timeout(EVENT_TIMEOUT, flow.web.handle.reconnect())
            .await
            .unwrap_or_else(|_| panic!("reconnect {moves} did not complete"));
    }
    assert!(
        flow.app.delivered() < n,
        "the web moved while messages flowed"
    );
    let outcome = flow.finish().await;
    let reconnects = outcome.web.stats().reconnects;
    assert!(
        reconnects >= 140,
        "the web reconnected only {reconnects} times"
    );
    // What the app was told of its peer: at most the first `Online`, nothing else.
    let told: Vec<Presence> = outcome
        .web_to_app
        .presence
        .iter()
        .map(|(_, presence)| *presence)
        .collect();
    assert!(
        told.is_empty() || told == [Presence::Online],
        "the app saw presence changes while its peer reconnected {reconnects} times: {told:?}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// What a [`Recorded`] client saw, in the order it was handed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A message, by its counter.
    Message(u64),
    Reset {
        old_sid: u64,
        delivered_hw: u64,
    },
    Presence(Presence),
}

/// A client sending `n` counted messages as fast as its window lets it, with everything it is
/// handed logged (the checks of [`v1flow`] assume one stream per direction; this one spans a
/// peer's restart).
struct Recorded {
    handle: Handle,
    log: Arc<Mutex<Vec<Seen>>>,
    sender: JoinHandle<()>,
    receiver: JoinHandle<Client>,
}

impl Recorded {
    fn start(mut client: Client, n: u64) -> Recorded {
        let handle = client.handle();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sender = {
            let handle = handle.clone();
            tokio::spawn(async move {
                for counter in 1..=n {
                    let mut payload = vec![0u8; MESSAGE_BYTES];
                    payload[..8].copy_from_slice(&counter.to_be_bytes());
                    handle.send_binary(payload).await.expect("send");
                }
            })
        };
        let receiver = {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                while let Some(event) = client.next_event().await {
                    let seen = match event {
                        Event::Message { payload, .. } => {
                            Seen::Message(u64::from_be_bytes(payload[..8].try_into().unwrap()))
                        }
                        Event::StreamReset {
                            old_sid,
                            delivered_hw,
                        } => Seen::Reset {
                            old_sid,
                            delivered_hw,
                        },
                        Event::Presence(presence) => Seen::Presence(presence),
                        _ => continue,
                    };
                    log.lock().unwrap().push(seen);
                }
                client
            })
        };
        Recorded {
            handle,
            log,
            sender,
            receiver,
        }
    }

    fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    /// The counters of the messages handed over, in order.
    fn messages(&self) -> Vec<u64> {
        messages(&self.log())
    }

    /// Ends the client as a crashed process would: no close, no `bye`. Dropping the last
    /// handle of a `Client` ends its task, which drops the socket (a close frame without a
    /// code) without sending `bye`: its peer hears `away`, never that it left.
    /// Returns what it was handed before.
    async fn crash(self) -> Vec<Seen> {
        self.sender.abort();
        self.receiver.abort();
        let _ = self.sender.await;
        let _ = self.receiver.await;
        drop(self.handle);
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

fn messages(log: &[Seen]) -> Vec<u64> {
    log.iter()
        .filter_map(|seen| match seen {
            Seen::Message(counter) => Some(*counter),
            _ => None,
        })
        .collect()
}

/// Whether `counters` are exactly `first, first + 1, …, last`.
fn is_run(counters: &[u64], first: u64, last: u64) -> bool {
    counters.len() as u64 == (last + 1).saturating_sub(first)
        && counters.iter().zip(first..).all(|(c, want)| *c == want)
}

async fn wait_for(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The web crashes mid-stream and a new web (a new process: a new random sid) takes its role.
///
/// What is asserted, and why it is exact:
/// - Before the new web connects, the app has been told its peer is away (presence
///   `Reconnecting`, quiet 100 ms here). From then on the app's node drops anything of the old
///   web's session, so the app's acknowledged position `A` is final: the old web acknowledged
///   exactly the app's messages `1..=A`.
/// - The old web delivered `1..=K` in order, with `A <= K` (nothing acknowledged before it was
///   delivered).
/// - The new web is fresh: it adopts the app's `tx.base`, which is `A + 1`. So it receives
///   exactly `A + 1 ..= n`, in order, once: every message the old web had not acknowledged, and
///   nothing the old web acknowledged. Those in `A + 1 ..= K` are delivered to both webs, which
///   the protocol allows (a new process); none of the app's messages is lost.
/// - The app delivered the old web's `1..=H` in order, then is told
///   `StreamReset { old_sid: <old web's sid>, delivered_hw: H }` (H counted by the app itself),
///   then delivers the new web's messages `1..=m` from the start. The old web's messages after
///   `H` are the loss the protocol admits, and it is named.
/// - Both outboxes empty: the app's acknowledged position ends at `n`, the new web's at `m`.
#[tokio::test]
async fn a_peer_restarted_from_scratch_is_reported_as_a_new_stream_and_gets_all_not_acknowledged() {
    let redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    let app = v1flow::connect_with(&[base_url(a.addr)], id.as_str(), Role::App, |config| {
        config.presence_quiet = Duration::from_millis(100);
    })
    .await;
    let old_web = v1flow::connect(&[base_url(b.addr)], id.as_str(), Role::Web).await;
    let old_sid = old_web.stats().sid;
    let n = 10_000;
    let m = 5_000;
    let app = Recorded::start(app, n);
    let old_web = Recorded::start(old_web, n);
    wait_for(
        "a third of the messages each way",
        Duration::from_secs(30),
        || old_web.messages().len() as u64 >= n / 3 && app.messages().len() as u64 >= n / 3,
    )
    .await;
    let old_log = old_web.crash().await;
    wait_for(
        "the app to report its peer reconnecting",
        EVENT_TIMEOUT,
        || app.log().contains(&Seen::Presence(Presence::Reconnecting)),
    )
    .await;
    let acked = app.handle.stats().acked;
    let old_delivered = messages(&old_log);
    let k = old_delivered.len() as u64;
    assert!(
        is_run(&old_delivered, 1, k),
        "the old web delivered the app's messages out of line"
    );
    assert!(
        acked <= k,
        "the app saw {acked} acknowledged, the old web delivered {k}"
    );
    assert!(acked < n, "the crash came mid-stream");

    let new_web = v1flow::connect(&[base_url(b.addr)], id.as_str(), Role::Web).await;
    let new_sid = new_web.stats().sid;
    assert_ne!(new_sid, old_sid, "a new client draws a new sid");
    let new_web = Recorded::start(new_web, m);
    wait_for("every message to arrive", Duration::from_secs(60), || {
        new_web.messages().last() == Some(&n) && after_reset(&app.log()).len() as u64 >= m
    })
    .await;

    let new_delivered = new_web.messages();
    assert!(
        is_run(&new_delivered, acked + 1, n),
        "the new web should get exactly {}..={n} in order (the old web acknowledged 1..={acked} \
         and delivered 1..={k}); it got {} messages, first {:?}, last {:?}",
        acked + 1,
        new_delivered.len(),
        new_delivered.first(),
        new_delivered.last()
    );

    let log = app.log();
    let resets: Vec<(usize, Seen)> = log
        .iter()
        .enumerate()
        .filter(|(_, seen)| matches!(seen, Seen::Reset { .. }))
        .map(|(at, seen)| (at, *seen))
        .collect();
    assert_eq!(resets.len(), 1, "one stream reset: {resets:?}");
    let (at, reset) = resets[0];
    let from_old = messages(&log[..at]);
    let from_new = messages(&log[at + 1..]);
    let h = from_old.len() as u64;
    assert!(
        h > 0 && is_run(&from_old, 1, h),
        "the old web's stream, in line"
    );
    assert_eq!(
        reset,
        Seen::Reset {
            old_sid,
            delivered_hw: h
        },
        "the reset names the old web's stream and what the app delivered of it"
    );
    assert!(
        is_run(&from_new, 1, m),
        "the new web's stream, from its start"
    );

    for (name, handle, total) in [("app", &app.handle, n), ("new web", &new_web.handle, m)] {
        wait_for(
            &format!("the {name}'s outbox to empty"),
            EVENT_TIMEOUT,
            || {
                let stats = handle.stats();
                stats.outbox_len == 0 && stats.acked == total
            },
        )
        .await;
    }
    let _ = tokio::time::timeout(EVENT_TIMEOUT, app.sender).await;
    let _ = tokio::time::timeout(EVENT_TIMEOUT, new_web.sender).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// The messages after the first stream reset of `log` (none before one).
fn after_reset(log: &[Seen]) -> Vec<u64> {
    match log
        .iter()
        .position(|seen| matches!(seen, Seen::Reset { .. }))
    {
        Some(at) => messages(&log[at + 1..]),
        None => Vec::new(),
    }
}

#[tokio::test]
async fn redis_restarted_empty_while_a_client_reconnects_loses_and_repeats_nothing() {
    let mut redis = RedisServer::start();
    let a = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let b = TestNode::start_in_cluster(vec![redis.url()], |_| {}).await;
    let id = random_channel_id();
    // The app stays on A; the web is on B, and comes back to B: across nodes, the web's node
    // must find the app through Redis.
    let app = v1flow::connect(&[base_url(a.addr)], id.as_str(), Role::App).await;
    let web = v1flow::connect(&[base_url(b.addr)], id.as_str(), Role::Web).await;
    let n = 10_000;
    let flow = v1flow::start(app, web, n);
    flow.wait_for(n / 3, Duration::from_secs(30)).await;
    redis.stop();
    let reconnecting = {
        let handle = flow.web.handle.clone();
        tokio::spawn(async move { handle.reconnect().await })
    };
    // Refused (503), and tried again after a backoff, and refused again.
    wait_until("refused reconnects while Redis is down", || {
        flow.web.received().refused >= 2
    })
    .await;
    assert!(
        !reconnecting.is_finished(),
        "the web cannot connect while Redis is down"
    );
    redis.restart();
    tokio::time::timeout(Duration::from_secs(20), reconnecting)
        .await
        .expect("the web reconnects once Redis is back")
        .expect("the reconnect task does not panic");
    assert!(flow.web.delivered() < n, "the reconnect came mid-stream");
    let outcome = flow.finish().await;
    assert!(outcome.web.stats().reconnects >= 1);
    a.shutdown().await;
    b.shutdown().await;
}

/// Sessions and pairs a process node holds now, from `/healthz`.
async fn held(node: &ProcessNode) -> (u64, u64) {
    let response = crate::harness::http::request(node.addr, "GET", "/healthz", "").await;
    let health: serde_json::Value = serde_json::from_str(&response.body).expect("healthz is JSON");
    (
        health["connections"].as_u64().unwrap_or(u64::MAX),
        health["pairs"].as_u64().unwrap_or(u64::MAX),
    )
}

/// `pairs` v1 pairs over `nodes` (both on one node, or across), `at_once` at a time: each
/// connects, exchanges `messages` each way (checked as every flow is), and closes (`bye`).
async fn v1_churn(nodes: &[ProcessNode], pairs: usize, at_once: usize, messages: u64) {
    let urls: Vec<String> = nodes.iter().map(|node| base_url(node.addr)).collect();
    for batch in 0..pairs.div_ceil(at_once) {
        let lives = (batch * at_once..pairs.min((batch + 1) * at_once)).map(|i| {
            let app_url = urls[i % urls.len()].clone();
            let web_url = urls[(i / urls.len()) % urls.len()].clone();
            async move {
                let id = random_channel_id();
                let app = v1flow::connect(&[app_url], id.as_str(), Role::App).await;
                let web = v1flow::connect(&[web_url], id.as_str(), Role::Web).await;
                let outcome = v1flow::start(app, web, messages).finish().await;
                let (app, web) = tokio::join!(outcome.app.close(), outcome.web.close());
                app.expect("the app closes with its outbox empty");
                web.expect("the web closes with its outbox empty");
            }
        });
        futures::future::join_all(lives).await;
    }
    for node in nodes {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            // The request asking is itself a connection.
            let now = held(node).await;
            if now.0 <= 1 && now.1 == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a node still holds {now:?} (connections, pairs) after every client left"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The node's RSS once it has not grown for a second.
async fn settled(node: &ProcessNode) -> u64 {
    node.settled_rss_kib(Duration::from_secs(1), Duration::from_secs(10))
        .await
}

/// Two nodes as processes serve many short v1 pairs (connect, exchange, close), once to warm
/// up and then three times as many: what they hold afterwards stays where it was after the
/// warm-up, within a small bound. A per-pair leak of a few KiB shows over the 3 × PAIRS pairs.
#[tokio::test]
async fn node_memory_stays_flat_under_v1_churn() {
    const PAIRS: usize = 60;
    const AT_ONCE: usize = 20;
    const MESSAGES: u64 = 200;
    // Allocator noise on a warm process: well under what 180 pairs leaking 4 KiB each would add.
    const BOUND_KIB: u64 = 1024;
    let redis = RedisServer::start();
    let args = crate::harness::process_cluster_args(&redis.url());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes = [ProcessNode::start(&args), ProcessNode::start(&args)];
    let started = Instant::now();
    v1_churn(&nodes, PAIRS, AT_ONCE, MESSAGES).await;
    eprintln!("one round of {PAIRS} pairs took {:?}", started.elapsed());
    let (warm0, warm1) = tokio::join!(settled(&nodes[0]), settled(&nodes[1]));
    for _ in 0..3 {
        v1_churn(&nodes, PAIRS, AT_ONCE, MESSAGES).await;
    }
    let (after0, after1) = tokio::join!(settled(&nodes[0]), settled(&nodes[1]));
    eprintln!(
        "RSS after warm-up {warm0} and {warm1} KiB, after 3 × {PAIRS} more pairs {after0} and \
         {after1} KiB (took {:?})",
        started.elapsed()
    );
    for (name, warm, after) in [("node 0", warm0, after0), ("node 1", warm1, after1)] {
        let grown = after.saturating_sub(warm);
        assert!(
            grown < BOUND_KIB,
            "{name} grew {grown} KiB over 3 × {PAIRS} v1 pairs after the warm-up ({warm} → \
             {after} KiB)"
        );
    }
}
