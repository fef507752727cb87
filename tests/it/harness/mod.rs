//! The real-server harness: starts wspair in-process on 127.0.0.1:0 and talks to it through
//! real sockets and a real WebSocket client (tokio-tungstenite, an implementation independent
//! of the server's).

pub mod ca;
pub mod client;
pub mod http;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod rng;
pub mod v1flow;
pub mod v1wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wspair::metrics::Metrics;
use wspair::router::Router;
use wspair::{ChannelId, Config, Role, Server, ShutdownOutcome};

pub use client::Client;

/// How long any single expected event may take before a test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A wspair node running in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub inner_addr: Option<SocketAddr>,
    /// The admin listener (on a free loopback port).
    pub admin_addr: Option<SocketAddr>,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub router: Arc<Router>,
    stop: CancellationToken,
    task: Option<JoinHandle<ShutdownOutcome>>,
}

impl TestNode {
    /// Starts a node on 127.0.0.1 with a free port, after `configure` adjusts the config.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        init_logging();
        let mut config = Config::default();
        config.outer.ip = "127.0.0.1".parse().unwrap();
        config.outer.port = 0;
        // Many nodes run at once: each admin listener on a free port.
        config.admin.port = 0;
        config.shutdown_timeout = Duration::from_secs(5);
        // v1 clients of tests seldom move when told to: a node stops soon after asking.
        config.drain.spread = Duration::from_millis(100);
        config.drain.timeout = Duration::from_millis(500);
        configure(&mut config);
        let server = Server::bind(config.clone()).await.expect("test node binds");
        let addr = server.local_addrs().outer;
        let inner_addr = server.local_addrs().inner;
        let admin_addr = server.local_addrs().admin;
        let metrics = server.metrics();
        let router = server.router();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        TestNode {
            addr,
            inner_addr,
            admin_addr,
            config,
            metrics,
            router,
            stop,
            task: Some(task),
        }
    }

    /// The upgrade URL for `role` and `channel_id`.
    pub fn url(&self, role: Role, channel_id: &str) -> String {
        format!(
            "ws://{}{}?type={}&channelId={channel_id}",
            self.addr, self.config.outer.path, role
        )
    }

    /// Connects a WebSocket client as `role` of `channel_id`; panics if the upgrade fails.
    pub async fn connect(&self, role: Role, channel_id: &ChannelId) -> Client {
        Client::connect(&self.url(role, channel_id.as_str())).await
    }

    /// Starts the node's shutdown (as SIGTERM does) without waiting for it; `shutdown` waits.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Stops the node and fails the test unless it drains within its shutdown-timeout.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        let task = self.task.take().expect("shutdown runs once");
        let outcome = tokio::time::timeout(self.config.shutdown_timeout + EVENT_TIMEOUT, task)
            .await
            .expect("server task ends")
            .expect("server task does not panic");
        assert!(
            outcome.drained,
            "node did not drain within shutdown-timeout"
        );
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Logs to the test output at the level in `RUST_LOG` (nothing by default).
fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// The secret every test cluster shares.
pub const SECRET: &str = "test-secret-0123456789";

/// Puts `config` in cluster mode on `redis_urls`, with loopback addresses and short timeouts.
pub fn cluster_config(config: &mut Config, redis_urls: Vec<String>) {
    config.registry.cluster = redis_urls.len() > 1;
    config.registry.redis = redis_urls;
    config.registry.node_ttl = Duration::from_secs(2);
    config.registry.timeout = Duration::from_millis(500);
    config.inner.ip = "127.0.0.1".parse().unwrap();
    config.inner.port = 0;
    config.inner.secret = SECRET.to_owned();
    config.inner.heartbeat_interval = Duration::from_millis(200);
    config.inner.link_timeout = Duration::from_secs(1);
    config.inner.connect_timeout = Duration::from_secs(2);
}

/// Arguments for a `wspair serve` process in the cluster on `redis_url`, with the timeouts
/// of [`crate::harness::cluster_config`].
pub fn process_cluster_args(redis_url: &str) -> Vec<String> {
    [
        "--registry-redis",
        redis_url,
        "--registry-node-ttl",
        "2s",
        "--registry-timeout",
        "500ms",
        "--inner-ip",
        "127.0.0.1",
        "--inner-port",
        "0",
        "--inner-secret",
        crate::harness::SECRET,
        "--inner-heartbeat-interval",
        "200ms",
        "--inner-link-timeout",
        "1s",
        "--inner-connect-timeout",
        "2s",
    ]
    .map(str::to_owned)
    .to_vec()
}

impl TestNode {
    /// Starts a node in cluster mode on `redis_urls`, after `configure`.
    pub async fn start_in_cluster(
        redis_urls: Vec<String>,
        configure: impl FnOnce(&mut Config),
    ) -> TestNode {
        TestNode::start(|config| {
            cluster_config(config, redis_urls);
            configure(config);
        })
        .await
    }
}

/// A channel id no other test uses.
pub fn random_channel_id() -> ChannelId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    format!("t{:0>15}_{:0>15}", n, nanos % 1_000_000_000_000_000)
        .parse()
        .expect("generated ids are valid")
}

/// Waits until `condition` holds, polling every few milliseconds; panics naming `what`.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads a counter.
pub fn read(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// An app on `a` and a web on `b` of a fresh channel exchange a message each way.
pub async fn relays_across(a: &TestNode, b: &TestNode, text: &str) {
    let id = random_channel_id();
    let mut app = a.connect(Role::App, &id).await;
    let mut web = b.connect(Role::Web, &id).await;
    app.send_text(text).await;
    assert_eq!(web.recv_text().await, text);
    web.send_text("and back").await;
    assert_eq!(app.recv_text().await, "and back");
}
