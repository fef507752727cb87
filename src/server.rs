//! The server: binds the listeners, spawns the parts, and owns the shutdown sequence.
//!
//! Shutdown runs in order: the accept loop stops; every session's stop token (a child of the
//! node's shutdown token) fires and the session closes with 1001, releasing its route; the
//! session tasks are awaited, bounded by `shutdown-timeout`; in cluster mode the node then
//! leaves the registry and closes its links. [`Server::run`] returns once that is done or the
//! deadline passed, and says which.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, AdminContext};
use crate::config::Config;
use crate::drain::Drain;
use crate::hub::Hub;
use crate::inner::link::LinkContext;
use crate::inner::listener;
use crate::metrics::Metrics;
use crate::node::{NodeId, NodeInfo};
use crate::outer::close::PendingCloses;
use crate::outer::session::SessionContext;
use crate::outer::{self, OuterContext};
use crate::registry::{RedisRegistry, RegistryError};
use crate::router::{ClusterParts, Router};
use crate::tls::Tls;
use crate::tls::inner::InnerTls;

/// How long links get to finish after the sessions drained.
const LINK_DRAIN: Duration = Duration::from_secs(1);

/// Failures that stop a node from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A listener could not bind its address.
    #[error("cannot bind {what} listener to {addr}: {source}")]
    Bind {
        /// Which listener (`outer` or `inner`).
        what: &'static str,
        /// The address from the configuration.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The registry could not be set up.
    #[error("cannot connect to the registry: {0}")]
    Registry(#[from] RegistryError),
    /// The TLS certificate or key could not be loaded.
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The client token secret or key could not be used.
    #[error("{0}")]
    Auth(#[from] crate::auth::AuthConfigError),
}

/// The addresses a bound server listens on; with port 0 in the config, the ports picked.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddrs {
    /// The WebSocket listener.
    pub outer: SocketAddr,
    /// The node-to-node listener, in cluster mode.
    pub inner: Option<SocketAddr>,
    /// The admin listener, unless `admin.enabled = false`.
    pub admin: Option<SocketAddr>,
}

/// How shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownOutcome {
    /// True if every task ended before `shutdown-timeout`.
    pub drained: bool,
}

/// The cluster side of a bound server.
struct ClusterRuntime {
    inner_listener: TcpListener,
    link_ctx: Arc<LinkContext>,
    links_tracker: TaskTracker,
    links_cancel: CancellationToken,
}

/// A bound, not yet running wspair node.
pub struct Server {
    config: Config,
    outer_listener: TcpListener,
    admin_listener: Option<TcpListener>,
    local_addrs: LocalAddrs,
    router: Arc<Router>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    cluster: Option<ClusterRuntime>,
    tls: Option<Arc<Tls>>,
    inner_tls: Option<Arc<InnerTls>>,
    auth: Option<Arc<crate::auth::Auth>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs)
            .finish_non_exhaustive()
    }
}

/// The backlog of the inner listener: links are few, and dialed again when refused.
const INNER_BACKLOG: u32 = 1024;
/// The backlog of the admin listener: probes and scrapes.
const ADMIN_BACKLOG: u32 = 128;

/// Binds a listener with `backlog` (as `TcpListener::bind` does, `SO_REUSEADDR` on Unix so a
/// restarted node can bind while old connections linger in `TIME_WAIT`).
fn bind(
    what: &'static str,
    addr: SocketAddr,
    backlog: u32,
) -> Result<(TcpListener, SocketAddr), ServerError> {
    let error = |source| ServerError::Bind { what, addr, source };
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(error)?;
    #[cfg(unix)]
    socket.set_reuseaddr(true).map_err(error)?;
    socket.bind(addr).map_err(error)?;
    let listener = socket.listen(backlog).map_err(error)?;
    let local = listener.local_addr().map_err(error)?;
    Ok((listener, local))
}

impl Server {
    /// Loads what [`Server::bind`] would load from files (the TLS certificate and key, the
    /// token keys) and checks it, without binding or connecting: `wspair check-config`.
    pub fn check(config: &Config) -> Result<(), ServerError> {
        crate::auth::Auth::new(&config.auth)?;
        if let Some(files) = &config.outer.tls {
            Tls::new(files.clone())?;
        }
        Ok(())
    }

    /// Binds the listeners and, in cluster mode, sets up the registry. Nothing is accepted
    /// until [`Server::run`].
    pub async fn bind(config: Config) -> Result<Server, ServerError> {
        let auth = crate::auth::Auth::new(&config.auth)?.map(Arc::new);
        let tls = match &config.outer.tls {
            Some(files) => Some(Arc::new(Tls::new(files.clone())?)),
            None => None,
        };
        let (outer_listener, outer_addr) = bind(
            "outer",
            SocketAddr::new(config.outer.ip, config.outer.port),
            config.outer.backlog,
        )?;
        let (admin_listener, admin_addr) = if config.admin.enabled {
            let (listener, bound) = bind(
                "admin",
                SocketAddr::new(config.admin.ip, config.admin.port),
                ADMIN_BACKLOG,
            )?;
            (Some(listener), Some(bound))
        } else {
            (None, None)
        };
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let hub = Arc::new(Hub::new(
            config.outer.send_queue,
            config.outer.send_queue_bytes,
            config.outer.credit_window(),
            // A displaced sender runs until its successor's claim ends (outer.handshake-timeout
            // from accept) and, if that claim failed, gets its route back (one registry call).
            config.outer.handshake_timeout
                + config.registry.timeout
                + std::time::Duration::from_secs(1),
            config.outer.on_duplicate,
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        let mut me = NodeInfo {
            id: NodeId::generate(),
            advertise: config.inner.advertise_addr(),
            window: u32::try_from(config.outer.credit_window()).unwrap_or(u32::MAX),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let mut inner_addr = None;
        let mut inner_tls = None;
        let (cluster, cluster_parts) = if config.registry.redis.is_empty() {
            (None, None)
        } else {
            let (inner_listener, bound) = bind(
                "inner",
                SocketAddr::new(config.inner.ip, config.inner.port),
                INNER_BACKLOG,
            )?;
            inner_addr = Some(bound);
            if config.inner.advertise.is_empty() {
                // With inner.port = 0 the port is known only now.
                me.advertise = bound.to_string();
            }
            let registry = RedisRegistry::connect(&config.registry, me.clone())
                .await?
                .observe_calls_in(metrics.histograms.registry_call.clone());
            inner_tls = match &config.inner.tls {
                Some(files) => Some(Arc::new(InnerTls::new(files.clone())?)),
                None => None,
            };
            let link_ctx = Arc::new(LinkContext {
                me: me.clone(),
                config: config.inner.clone(),
                max_message: config.outer.max_frame_size,
                metrics: Arc::clone(&metrics),
                tls: inner_tls.clone(),
            });
            let links_tracker = TaskTracker::new();
            let links_cancel = CancellationToken::new();
            let parts = ClusterParts {
                registry,
                link_ctx: Arc::clone(&link_ctx),
                tracker: links_tracker.clone(),
                links_cancel: links_cancel.clone(),
            };
            let runtime = ClusterRuntime {
                inner_listener,
                link_ctx,
                links_tracker,
                links_cancel,
            };
            (Some(runtime), Some(parts))
        };
        let router = Router::new(
            hub,
            me,
            config.outer.on_duplicate,
            Arc::clone(&metrics),
            cluster_parts,
        );
        Ok(Server {
            config,
            outer_listener,
            admin_listener,
            local_addrs: LocalAddrs {
                outer: outer_addr,
                inner: inner_addr,
                admin: admin_addr,
            },
            router,
            metrics,
            shutdown,
            cluster,
            tls,
            inner_tls,
            auth,
        })
    }

    /// The client listener's TLS, when on: [`Tls::reload`] takes new certificate files (the
    /// `wspair` command calls it on SIGHUP).
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// The inner links' TLS, in cluster mode with `inner.tls-*`: [`InnerTls::reload`] takes
    /// new files (the `wspair` command calls it on SIGHUP).
    pub fn inner_tls(&self) -> Option<Arc<InnerTls>> {
        self.inner_tls.clone()
    }

    /// Where the listeners are bound.
    pub fn local_addrs(&self) -> LocalAddrs {
        self.local_addrs
    }

    /// The node's counters; the same values `/healthz` reports.
    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The node's router, which knows its id, its sessions and its links.
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router)
    }

    /// Serves until `stop` is cancelled, then shuts down in order (see the module docs).
    pub async fn run(self, stop: CancellationToken) -> ShutdownOutcome {
        let tracker = TaskTracker::new();
        let drain = Arc::new(Drain::new(self.config.drain));
        let session_ctx = Arc::new(SessionContext {
            config: self.config.outer.clone(),
            router: Arc::clone(&self.router),
            metrics: Arc::clone(&self.metrics),
            shutdown: self.shutdown.clone(),
            v1: self.config.v1,
            draining: drain.draining.clone(),
            auth: self.auth.clone(),
            closes: PendingCloses::default(),
        });
        let admin_stop = CancellationToken::new();
        if let Some(listener) = self.admin_listener {
            let admin_ctx = Arc::new(AdminContext::new(
                Arc::clone(&session_ctx),
                Arc::clone(&drain),
                self.config.effective.clone(),
                self.config.admin.token.clone(),
                self.config.drain.wait_for_raw,
            ));
            if let Some(admin) = self.local_addrs.admin {
                info!(%admin, "admin listener: /metrics, /healthz, /readyz, /admin/");
            }
            tokio::spawn(admin::accept_loop(listener, admin_ctx, admin_stop.clone()));
        }
        let outer_ctx = Arc::new(OuterContext::new(
            session_ctx,
            tracker.clone(),
            self.tls.clone(),
        ));
        if let Some(cluster) = &self.cluster {
            let router = Arc::clone(&self.router);
            if !router.heartbeat(true).await {
                warn!("registry unreachable at start; new connections get 503 until it answers");
            }
            cluster.links_tracker.spawn(
                Arc::clone(&router)
                    .heartbeat_loop(self.config.registry.node_ttl, cluster.links_cancel.clone()),
            );
            // Woken by the heartbeat; registers routes again and retries releases, paced.
            cluster
                .links_tracker
                .spawn(Arc::clone(&router).maintenance_loop(cluster.links_cancel.clone()));
            info!(node = %router.me().id, advertise = %router.me().advertise, "cluster mode");
        }
        let cluster = self.cluster.map(|cluster| {
            let router = Arc::clone(&self.router);
            let sink: listener::FrameSink =
                Arc::new(move |node, frame| router.on_frame(node, frame));
            cluster.links_tracker.spawn(listener::accept_loop(
                cluster.inner_listener,
                Arc::clone(&cluster.link_ctx),
                sink,
                cluster.links_tracker.clone(),
                cluster.links_cancel.clone(),
            ));
            (cluster.links_tracker, cluster.links_cancel)
        });
        info!(outer = %self.local_addrs.outer, path = %self.config.outer.path,
            node = %self.router.me().id, "wspair listening");
        tracker.spawn(outer::accept_loop(self.outer_listener, outer_ctx));

        stop.cancelled().await;
        drain.finish(Arc::clone(&self.router.hub)).await;
        let (connections, _) = self.router.hub.counts();
        info!(connections, "shutting down: closing sessions with 1001");
        self.shutdown.cancel();
        tracker.close();
        let drained = tokio::time::timeout(self.config.shutdown_timeout, tracker.wait())
            .await
            .is_ok();
        if !drained {
            warn!(
                tasks = tracker.len(),
                timeout = ?self.config.shutdown_timeout,
                "shutdown-timeout passed with sessions still open"
            );
        }
        if let Some((links_tracker, links_cancel)) = cluster {
            self.router.deregister().await;
            links_cancel.cancel();
            links_tracker.close();
            let _ = tokio::time::timeout(LINK_DRAIN, links_tracker.wait()).await;
        }
        admin_stop.cancel();
        info!(drained, "shutdown complete");
        ShutdownOutcome { drained }
    }
}
