//! Pairs of `wspair-client` clients under load, and the checks every wspair.v1 test makes:
//! per direction, every message delivered exactly once and in order, nothing acknowledged
//! that was not delivered, and both outboxes empty at the end.
//!
//! Each message carries its own counter (8 bytes, big-endian, then padding), so the checks
//! never trust the protocol's positions: a message lost, repeated or reordered anywhere shows
//! as a counter out of line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use wspair_client::{Client, Config, Event, Handle, Presence, Role};

/// Bytes of every test message.
pub const MESSAGE_BYTES: usize = 32;

/// How long a flow may take to finish once its last message is sent.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// The base URL a client is given for a node at `addr`.
pub fn base_url(addr: std::net::SocketAddr) -> String {
    format!("ws://{addr}/channel")
}

/// A client of `role` in `channel_id`, trying `urls` in turn; quick timers, so tests run fast.
pub async fn connect(urls: &[String], channel_id: &str, role: Role) -> Client {
    connect_with(urls, channel_id, role, |_| {}).await
}

/// As [`connect`], after `configure` adjusts the config.
pub async fn connect_with(
    urls: &[String],
    channel_id: &str,
    role: Role,
    configure: impl FnOnce(&mut Config),
) -> Client {
    let mut config = Config::new(urls.to_vec(), channel_id, role);
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(500);
    config.ack_timeout = Duration::from_millis(500);
    configure(&mut config);
    tokio::time::timeout(Duration::from_secs(20), Client::connect(config))
        .await
        .expect("the client connects in time")
        .unwrap_or_else(|err| panic!("the client connects: {err}"))
}

/// What one side saw of its peer's stream.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// The next counter expected; all before it arrived in order.
    pub next: u64,
    /// Messages whose counter was already delivered.
    pub duplicates: u64,
    /// Messages that skipped ahead (counters missing before them).
    pub gaps: u64,
    /// Presence events, with when they came.
    pub presence: Vec<(Instant, Presence)>,
    /// `StreamReset` events: (old sid, delivered hw).
    pub resets: Vec<(u64, u64)>,
    /// `Refused` events: reconnect attempts a node answered with an HTTP status.
    pub refused: u64,
}

/// One client of a running flow.
#[allow(dead_code, reason = "each test uses the parts it needs")]
pub struct Side {
    pub handle: Handle,
    received: Arc<Mutex<Received>>,
    sent: Arc<AtomicU64>,
    sender: JoinHandle<()>,
    receiver: JoinHandle<Client>,
}

/// Two clients sending each other `n` messages each, as fast as their windows let them.
#[allow(dead_code, reason = "each test uses the parts it needs")]
pub struct Flow {
    pub app: Side,
    pub web: Side,
    n: u64,
}

/// Starts sending `n` messages each way between `app` and `web`.
pub fn start(app: Client, web: Client, n: u64) -> Flow {
    Flow {
        app: side(app, n, None),
        web: side(web, n, None),
        n,
    }
}

/// As [`start`], with at most `rate` messages a second each way.
#[allow(dead_code, reason = "each test uses the parts it needs")]
pub fn start_paced(app: Client, web: Client, n: u64, rate: u64) -> Flow {
    Flow {
        app: side(app, n, Some(rate)),
        web: side(web, n, Some(rate)),
        n,
    }
}

fn side(mut client: Client, n: u64, rate: Option<u64>) -> Side {
    let handle = client.handle();
    let received = Arc::new(Mutex::new(Received {
        next: 1,
        ..Received::default()
    }));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let handle = handle.clone();
        let sent = Arc::clone(&sent);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            for counter in 1..=n {
                if let Some(rate) = rate {
                    tokio::time::sleep_until(
                        started + Duration::from_secs_f64(counter as f64 / rate as f64),
                    )
                    .await;
                }
                let mut payload = vec![0u8; MESSAGE_BYTES];
                payload[..8].copy_from_slice(&counter.to_be_bytes());
                handle.send_binary(payload).await.expect("send");
                sent.store(counter, Ordering::Relaxed);
            }
        })
    };
    let receiver = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            loop {
                if received.lock().unwrap().next > n {
                    return client;
                }
                let Some(event) = client.next_event().await else {
                    return client;
                };
                let mut seen = received.lock().unwrap();
                match event {
                    Event::Message { payload, .. } => {
                        let counter = u64::from_be_bytes(payload[..8].try_into().unwrap());
                        if counter == seen.next {
                            seen.next += 1;
                        } else if counter < seen.next {
                            seen.duplicates += 1;
                        } else {
                            seen.gaps += 1;
                            seen.next = counter + 1;
                        }
                    }
                    Event::Presence(presence) => seen.presence.push((Instant::now(), presence)),
                    Event::StreamReset {
                        old_sid,
                        delivered_hw,
                    } => seen.resets.push((old_sid, delivered_hw)),
                    Event::Refused { .. } => seen.refused += 1,
                    _ => {}
                }
            }
        })
    };
    Side {
        handle,
        received,
        sent,
        sender,
        receiver,
    }
}

#[allow(dead_code, reason = "each test uses the parts it needs")]
impl Side {
    /// Messages of the peer delivered in order so far.
    pub fn delivered(&self) -> u64 {
        self.received.lock().unwrap().next - 1
    }

    /// Messages handed to the client so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// What this side saw so far.
    pub fn received(&self) -> Received {
        self.received.lock().unwrap().clone()
    }
}

/// What a finished flow saw, each way.
#[derive(Debug)]
pub struct Outcome {
    /// What the web received from the app, and the app from the web.
    pub app_to_web: Received,
    pub web_to_app: Received,
    /// The clients, still connected.
    pub app: Client,
    pub web: Client,
}

impl Flow {
    /// Waits until `delivered` messages have arrived each way (or panics after `limit`).
    pub async fn wait_for(&self, delivered: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.app.delivered().min(self.web.delivered()) < delivered.min(self.n) {
            assert!(
                Instant::now() < deadline,
                "only {} and {} of {delivered} delivered within {limit:?}",
                self.web.delivered(),
                self.app.delivered()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for every message to arrive and be acknowledged, and checks each way: all `n`
    /// delivered once, in order; the sender's acknowledged position is exactly `n`, and its
    /// outbox empty.
    pub async fn finish(self) -> Outcome {
        let Flow { app, web, n } = self;
        let (app_client, app_to_web_received) = finish_side(app, "app").await;
        let (web_client, web_to_app_received) = finish_side(web, "web").await;
        let outcome = Outcome {
            app_to_web: web_to_app_received,
            web_to_app: app_to_web_received,
            app: app_client,
            web: web_client,
        };
        for (direction, received) in [
            ("app→web", &outcome.app_to_web),
            ("web→app", &outcome.web_to_app),
        ] {
            assert_eq!(received.duplicates, 0, "{direction}: duplicates delivered");
            assert_eq!(received.gaps, 0, "{direction}: messages lost");
            assert_eq!(received.next, n + 1, "{direction}: not all delivered");
        }
        for (name, client) in [("app", &outcome.app), ("web", &outcome.web)] {
            let deadline = Instant::now() + FINISH_TIMEOUT;
            loop {
                let stats = client.stats();
                assert!(
                    stats.acked <= n,
                    "{name} acknowledged beyond what was delivered"
                );
                if stats.outbox_len == 0 && stats.acked == n {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{name}'s outbox never emptied: {stats:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        outcome
    }
}

/// Waits for a side's sender and receiver; returns its client and what it received.
async fn finish_side(side: Side, name: &str) -> (Client, Received) {
    tokio::time::timeout(FINISH_TIMEOUT, side.sender)
        .await
        .unwrap_or_else(|_| panic!("{name} could not send everything in time"))
        .expect("the sender does not panic");
    let client = tokio::time::timeout(FINISH_TIMEOUT, side.receiver)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{name} did not receive everything in time: {:?}",
                side.received.lock().unwrap()
            )
        })
        .expect("the receiver does not panic");
    let received = side.received.lock().unwrap().clone();
    (client, received)
}
