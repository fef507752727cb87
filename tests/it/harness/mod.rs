//! The real-server harness: starts wspair in-process on 127.0.0.1:0 and talks to it through
//! real sockets and a real WebSocket client (tokio-tungstenite, an implementation independent
//! of the server's).

pub mod client;
pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wspair::metrics::Metrics;
use wspair::{ChannelId, Config, Role, Server, ShutdownOutcome};

pub use client::Client;

/// How long any single expected event may take before a test fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A wspair node running in this process.
pub struct TestNode {
    pub addr: SocketAddr,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: Option<JoinHandle<ShutdownOutcome>>,
}

impl TestNode {
    /// Starts a node on 127.0.0.1 with a free port, after `configure` adjusts the config.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        let mut config = Config::default();
        config.outer.ip = "127.0.0.1".parse().unwrap();
        config.outer.port = 0;
        config.shutdown_timeout = Duration::from_secs(5);
        configure(&mut config);
        let server = Server::bind(config.clone()).await.expect("test node binds");
        let addr = server.local_addrs().outer;
        let metrics = server.metrics();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        TestNode {
            addr,
            config,
            metrics,
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
