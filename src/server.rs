//! The server: binds the listeners, spawns the parts, and owns the shutdown sequence.
//!
//! Shutdown runs in order: the accept loop stops; every session's stop token (a child of the
//! node's shutdown token) fires and the session closes with 1001; the task tracker is closed
//! and awaited, bounded by `shutdown-timeout`. [`Server::run`] returns once that is done or the
//! deadline passed, and says which.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::outer::session::SessionContext;
use crate::outer::{self, OuterContext};

/// Failures that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not bind its address.
    #[error("cannot bind {what} listener to {addr}: {source}")]
    Bind {
        /// Which listener (`outer`).
        what: &'static str,
        /// The address from the configuration.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// The addresses a bound server listens on; with port 0 in the config, the ports picked.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddrs {
    /// The WebSocket listener.
    pub outer: SocketAddr,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// True if every task ended before `shutdown-timeout`.
    pub drained: bool,
}

/// A bound, not yet running wspair node.
#[derive(Debug)]
pub struct Server {
    config: Config,
    outer_listener: TcpListener,
    local_addrs: LocalAddrs,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Server {
    /// Binds the listeners. Nothing is accepted until [`Server::run`].
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let outer_addr = SocketAddr::new(config.outer.ip, config.outer.port);
        let outer_listener =
            TcpListener::bind(outer_addr)
                .await
                .map_err(|source| ServerError::Bind {
                    what: "outer",
                    addr: outer_addr,
                    source,
                })?;
        let local_addrs = LocalAddrs {
            outer: outer_listener
                .local_addr()
                .map_err(|source| ServerError::Bind {
                    what: "outer",
                    addr: outer_addr,
                    source,
                })?,
        };
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let hub = Arc::new(Hub::new(
            config.outer.send_queue,
            config.outer.on_duplicate,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        Ok(Server {
            config,
            outer_listener,
            local_addrs,
            hub,
            metrics,
            shutdown,
        })
    }

    /// Where the listeners are bound.
    pub fn local_addrs(&self) -> LocalAddrs {
        self.local_addrs
    }

    /// The node's counters; the same values `/healthz` reports.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Serves until `stop` is cancelled, then shuts down in order (see the module docs).
    pub async fn run(self, stop: CancellationToken) -> ShutdownOutcome {
        let tracker = TaskTracker::new();
        let session_ctx = Arc::new(SessionContext {
            config: self.config.outer.clone(),
            hub: Arc::clone(&self.hub),
            metrics: Arc::clone(&self.metrics),
            shutdown: self.shutdown.clone(),
        });
        let outer_ctx = Arc::new(OuterContext::new(session_ctx, tracker.clone()));
        info!(outer = %self.local_addrs.outer, path = %self.config.outer.path, "wspair listening");
        tracker.spawn(outer::accept_loop(self.outer_listener, outer_ctx));

        stop.cancelled().await;
        let (connections, _) = self.hub.counts();
        info!(connections, "shutting down: closing sessions with 1001");
        self.shutdown.cancel();
        tracker.close();
        let drained = tokio::time::timeout(self.config.shutdown_timeout, tracker.wait())
            .await
            .is_ok();
        if drained {
            info!("shutdown complete");
        } else {
            warn!(
                tasks = tracker.len(),
                timeout = ?self.config.shutdown_timeout,
                "shutdown-timeout passed with tasks still running"
            );
        }
        ShutdownOutcome { drained }
    }
}
