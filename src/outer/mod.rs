//! The WebSocket side: accepts client TCP connections, answers their HTTP request, and turns
//! each accepted upgrade into a session.
//!
//! Every refusal happens here, before the upgrade, as an HTTP status with a reason (see
//! `handshake`). Limits applied to every connection: `outer.max-connections` (a semaphore; the
//! accept loop waits for a permit, so excess connections wait in the listen backlog),
//! `outer.handshake-timeout` (for the request head and for completing the upgrade), and the
//! WebSocket limits in [`ws_options`]. Besides the upgrade path, `GET /healthz` answers with a
//! small JSON document.

pub mod close;
pub mod delivery;
pub mod handshake;
pub mod session;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use yawc::{DeflatePool, HttpWebSocket, Options, WebSocket};

use self::handshake::HandshakeError;
use self::session::SessionContext;
use crate::config::OuterConfig;
use crate::hub;
use crate::metrics::Metrics;
use crate::pair::Message;

/// Path of the health document.
pub const HEALTHZ_PATH: &str = "/healthz";

/// Socket buffer capacity of each session, in each direction. Buffers grow for larger
/// messages and shrink back after them; small ones keep idle sessions cheap.
const SOCKET_BUFFER_BYTES: usize = 1024;

/// Messages shorter than this are sent uncompressed even when compression is negotiated:
/// deflate's framing costs more than it saves on them.
const COMPRESSION_THRESHOLD_BYTES: usize = 128;

/// Idle deflate states kept for reuse by all sessions of the node.
const DEFLATE_POOL_SIZE: usize = 16;

/// What the accept loop and every connection share.
#[derive(Debug)]
pub struct OuterContext {
    /// Handed to each session.
    pub session: Arc<SessionContext>,
    /// Tracks connection and session tasks, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Bounds open client connections (`outer.max-connections`).
    pub connections: Arc<Semaphore>,
    ws_options: Options,
}

impl OuterContext {
    /// Builds the context from the session context the node created.
    pub fn new(session: Arc<SessionContext>, tracker: TaskTracker) -> OuterContext {
        let config = &session.config;
        OuterContext {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            ws_options: ws_options(config),
            session,
            tracker,
        }
    }

    fn config(&self) -> &OuterConfig {
        &self.session.config
    }
}

/// The WebSocket library's options for `config`: the message size limit covers whole
/// messages (reassembled and decompressed), and compression (when
/// on) keeps no context between messages, so an idle session holds no deflate state.
pub fn ws_options(config: &OuterConfig) -> Options {
    // The library's limits are exclusive; ours is inclusive.
    let limit = config.max_frame_size + 1;
    // UTF-8 is checked by the session, which then sends close 1007 itself.
    let options = Options::default()
        .with_limits(limit, limit)
        .with_read_buffer_capacity(SOCKET_BUFFER_BYTES)
        .with_write_buffer_capacity(SOCKET_BUFFER_BYTES);
    if !config.compression {
        return options.without_compression();
    }
    options
        .with_low_latency_compression()
        .server_no_context_takeover()
        .client_no_context_takeover()
        .with_compression_threshold(COMPRESSION_THRESHOLD_BYTES)
        .with_deflate_pool(DeflatePool::new(DEFLATE_POOL_SIZE))
}

/// Accepts connections until `ctx.session.shutdown` is cancelled.
pub async fn accept_loop(listener: TcpListener, ctx: Arc<OuterContext>) {
    let shutdown = ctx.session.shutdown.clone();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = Arc::clone(&ctx.connections).acquire_owned() => {
                permit.expect("the connection semaphore is never closed")
            }
        };
        let (stream, remote_addr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Running out of file descriptors is the usual cause; pausing lets
                    // closing sessions free some instead of spinning.
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ctx = Arc::clone(&ctx);
        ctx.tracker
            .clone()
            .spawn(serve_connection(stream, remote_addr, ctx, permit));
    }
}

/// Serves HTTP on one connection until it upgrades, closes, or the node shuts down.
async fn serve_connection(
    stream: TcpStream,
    remote_addr: SocketAddr,
    ctx: Arc<OuterContext>,
    permit: OwnedSemaphorePermit,
) {
    // Relayed messages are small and latency matters more than packet count.
    let _ = stream.set_nodelay(true);
    let permit = Arc::new(permit);
    let service = {
        let ctx = Arc::clone(&ctx);
        service_fn(move |request| {
            let ctx = Arc::clone(&ctx);
            let permit = Arc::clone(&permit);
            async move { Ok::<_, Infallible>(respond(request, &ctx, remote_addr, &permit).await) }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.config().handshake_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let shutdown = ctx.session.shutdown.clone();
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(Duration::from_secs(1), connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(err) = result {
        debug!(%remote_addr, error = %err, "http connection ended with an error");
    }
}

/// Answers one HTTP request: the health document, an upgrade, or a refusal.
async fn respond(
    mut request: Request<Incoming>,
    ctx: &Arc<OuterContext>,
    remote_addr: SocketAddr,
    permit: &Arc<OwnedSemaphorePermit>,
) -> Response<Full<Bytes>> {
    if request.uri().path() == HEALTHZ_PATH && request.method() == Method::GET {
        return healthz(&ctx.session);
    }
    match upgrade(&mut request, ctx, remote_addr, permit).await {
        Ok(response) => response,
        Err(err) => {
            Metrics::incr(&ctx.session.metrics.handshakes_refused);
            if let HandshakeError::Unavailable(_) = err {
                Metrics::incr(&ctx.session.metrics.registry_unavailable);
            }
            debug!(%remote_addr, uri = %request.uri(), status = err.status().as_u16(),
                reason = %err, "upgrade refused");
            refusal(&err)
        }
    }
}

/// Checks the request, claims the role in the hub, and spawns the session that completes
/// the upgrade.
async fn upgrade(
    request: &mut Request<Incoming>,
    ctx: &Arc<OuterContext>,
    remote_addr: SocketAddr,
    permit: &Arc<OwnedSemaphorePermit>,
) -> Result<Response<Full<Bytes>>, HandshakeError> {
    let pair = handshake::check(
        request.method(),
        request.uri().path(),
        request.uri().query(),
        request.headers(),
        &ctx.config().path,
    )?;
    let (response, upgrading) =
        WebSocket::upgrade_with_options(&mut *request, ctx.ws_options.clone()).map_err(|err| {
            match err {
                yawc::WebSocketError::InvalidSecWebsocketVersion => HandshakeError::Version,
                other => HandshakeError::BadUpgrade(other.to_string()),
            }
        })?;
    // Claimed only now, so a malformed upgrade never evicts a working session.
    let (claim, outbound_rx) = claim(ctx, pair).await?;
    let session_ctx = Arc::clone(&ctx.session);
    let permit = Arc::clone(permit);
    let handshake_timeout = ctx.config().handshake_timeout;
    // Boxed: the task would otherwise keep room for the upgrade's state for the whole session.
    let upgrading = Box::pin(upgrading);
    ctx.tracker.spawn(async move {
        let ws: HttpWebSocket = match tokio::time::timeout(handshake_timeout, upgrading).await {
            Ok(Ok(ws)) => ws,
            Ok(Err(err)) => {
                debug!(%remote_addr, error = %err, "upgrade failed");
                abandon(claim, outbound_rx, &session_ctx).await;
                return;
            }
            Err(_) => {
                debug!(%remote_addr, "upgrade did not complete within outer.handshake-timeout");
                abandon(claim, outbound_rx, &session_ctx).await;
                return;
            }
        };
        let mut claim = claim;
        // The 101 is on the wire: only now may the session this one replaces be evicted.
        session_ctx.router.activate(&mut claim);
        session::run(ws, claim, outbound_rx, session_ctx, remote_addr).await;
        drop(permit);
    });
    Ok(response.map(|_| Full::new(Bytes::new())))
}

/// Claims the pair's role in a task of its own, so a client that goes away while the claim
/// waits for Redis or for the peer's node (hyper then drops this request's future) cannot
/// leave a route behind: the task finishes the claim and abandons it.
async fn claim(
    ctx: &Arc<OuterContext>,
    pair: handshake::PairRequest,
) -> Result<(hub::Claim, Receiver<Message>), HandshakeError> {
    let (claimed_tx, claimed_rx) = oneshot::channel();
    let session_ctx = Arc::clone(&ctx.session);
    ctx.tracker.spawn(async move {
        let claimed = session_ctx.router.claim(pair.channel_id, pair.role).await;
        if let Err(Ok((claim, outbound_rx))) = claimed_tx.send(claimed) {
            debug!(channel_id = %claim.channel_id, role = %claim.role,
                "client went away while its role was being claimed");
            abandon(claim, outbound_rx, &session_ctx).await;
        }
    });
    claimed_rx
        .await
        .expect("the claim task sends its result or abandons it")
        .map_err(HandshakeError::from)
}

/// Ends a claim whose upgrade never completed: what it displaced gets its place back, and
/// the messages its peer had already queued for it are dropped and counted.
async fn abandon(claim: hub::Claim, mut outbound_rx: Receiver<Message>, ctx: &SessionContext) {
    Metrics::incr(&ctx.metrics.upgrades_failed);
    let (channel_id, role) = (claim.channel_id, claim.role);
    let queue_bytes = claim.handle.queue_bytes.clone();
    ctx.router.abandon(claim).await;
    outbound_rx.close();
    queue_bytes.close();
    let mut undelivered = 0;
    while outbound_rx.try_recv().is_ok() {
        undelivered += 1;
    }
    if undelivered > 0 {
        Metrics::add(&ctx.metrics.messages_dropped_closed, undelivered);
        debug!(%channel_id, %role, undelivered, "queued messages dropped with a failed upgrade");
    }
}

fn refusal(err: &HandshakeError) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(format!("{err}\n"))));
    *response.status_mut() = err.status();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    for (name, value) in err.headers() {
        headers.insert(name, value);
    }
    response
}

fn healthz(ctx: &SessionContext) -> Response<Full<Bytes>> {
    let (connections, pairs) = ctx.router.hub.counts();
    let counters: serde_json::Map<String, serde_json::Value> = ctx
        .metrics
        .snapshot()
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.into()))
        .collect();
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "connections": connections,
        "pairs": pairs,
        "counters": counters,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
