//! The WebSocket side: accepts client TCP connections, answers their HTTP request, and turns
//! each accepted upgrade into a session.
//!
//! Every refusal happens here, before the upgrade, as an HTTP status with a reason (see
//! `handshake`). Limits applied to every connection: `outer.max-connections` and the
//! per-address limits (`limits`; a connection over one is answered 503 or 429 at once rather
//! than left in the listen backlog),
//! `outer.handshake-timeout` (one deadline from accept to upgrade, whatever the connection is
//! doing meanwhile), `outer.max-request-head` (read by `head` before hyper sees the request),
//! one request per connection, and the WebSocket limits in [`ws_options`]. Behind a proxy
//! (`outer.proxy-protocol`, `outer.trusted-proxies`), `proxied` finds the client's address,
//! which the per-address limits, the logs and the session then use. Besides the
//! upgrade path, `GET /healthz` answers with a small JSON document, and with `outer.demo` on,
//! `/` and `/demo/*` serve the demo page (`demo`).

pub mod close;
pub mod delivery;
mod demo;
pub mod forwarded;
pub mod handshake;
pub mod head;
pub mod limits;
mod proxied;
pub mod proxy_protocol;
pub mod rate;
pub mod session;
pub mod v1;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::Either;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc::Receiver;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;
use tracing::debug;
use yawc::{DeflatePool, Options, WebSocket};

use self::handshake::HandshakeError;
use self::head::{HeadError, Prefixed};
use self::session::SessionContext;
use crate::config::{HEALTHZ_PATH, OuterConfig};
use crate::hub;
use crate::metrics::Metrics;
use crate::pair::Message;
use crate::tls::Tls;
use limits::{ConnectionLimits, ConnectionPermit};
use proxied::Route;

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
    /// Bounds open client connections (`outer.max-connections`, and per client address).
    pub limits: ConnectionLimits,
    /// Connections accepted that have neither upgraded nor closed; see [`Handshaking`].
    pub handshaking: AtomicUsize,
    ws_options: Options,
    /// TLS on this listener (`outer.tls-*`), when on.
    tls: Option<Arc<Tls>>,
    /// Bounds the 503 answers to connections over `outer.max-connections` written at a time.
    refusing: Arc<Semaphore>,
}

/// 503 answers to connections over `outer.max-connections` written at a time; more are closed
/// without one.
const FULL_REFUSALS: usize = 256;
/// How often the per-address rate buckets of quiet addresses are dropped.
const RATE_SWEEP: Duration = Duration::from_secs(60);
/// How long such an answer may take to be written (and the request after it drained).
const FULL_REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Counts one connection in [`OuterContext::handshaking`] while it lives: dropped when the
/// connection's HTTP ends, however it ends (upgrade, refusal, deadline, error or panic).
struct Handshaking<'a>(&'a AtomicUsize);

impl<'a> Handshaking<'a> {
    fn enter(gauge: &'a AtomicUsize) -> Handshaking<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Handshaking(gauge)
    }
}

impl Drop for Handshaking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl OuterContext {
    /// Builds the context from the session context the node created.
    pub fn new(
        session: Arc<SessionContext>,
        tracker: TaskTracker,
        tls: Option<Arc<Tls>>,
    ) -> OuterContext {
        let config = &session.config;
        OuterContext {
            limits: ConnectionLimits::new(config),
            handshaking: AtomicUsize::new(0),
            ws_options: ws_options(config),
            session,
            tracker,
            tls,
            refusing: Arc::new(Semaphore::new(FULL_REFUSALS)),
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
        .with_max_fragments(config.max_fragments)
        .with_fragment_timeout(config.message_timeout)
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
    // Beside the accept loop, so that a large sweep never holds up accepting.
    let sweeper = Arc::clone(&ctx);
    ctx.tracker.spawn(async move {
        let mut ticks = tokio::time::interval(RATE_SWEEP);
        loop {
            tokio::select! {
                _ = sweeper.session.shutdown.cancelled() => return,
                _ = ticks.tick() => sweeper.limits.forget_quiet(),
            }
        }
    });
    while let Some((stream, remote_addr)) =
        crate::accept::next(&listener, &shutdown, "client").await
    {
        let route = proxied::route(ctx.config(), remote_addr.ip());
        let admitted = match route {
            Route::Direct => ctx.limits.admit(remote_addr.ip()),
            Route::Untrusted => {
                proxied::refuse_untrusted(remote_addr, &ctx);
                continue;
            }
            // Counted under the client's address once the header that names it is read.
            Route::Forwarded | Route::ProxyHeader => ctx.limits.admit_unattributed(),
        };
        let permit = match admitted {
            Ok(permit) => permit,
            Err(err) => {
                refuse_at_accept(stream, remote_addr, err, &ctx);
                continue;
            }
        };
        let deadline = Instant::now() + ctx.config().handshake_timeout;
        // Relayed messages are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let ctx = Arc::clone(&ctx);
        let tracker = ctx.tracker.clone();
        let forwarded = route == Route::Forwarded;
        let connection = Connection {
            remote_addr,
            permit,
            deadline,
            forwarded,
        };
        if route == Route::ProxyHeader {
            tracker.spawn(proxied::serve(stream, ctx, connection));
            continue;
        }
        match ctx.tls.as_ref().map(|tls| tls.acceptor()) {
            None => tracker.spawn(serve_connection(stream, ctx, connection)),
            Some(acceptor) => tracker.spawn(serve_tls(acceptor, stream, ctx, connection)),
        };
    }
}

/// A connection on its way to an upgrade: who it is from, its place among the limits, and its
/// deadline.
struct Connection {
    /// The client's address: the TCP peer, or the client a PROXY header named.
    remote_addr: SocketAddr,
    permit: ConnectionPermit,
    /// `outer.handshake-timeout` after accept.
    deadline: Instant,
    /// `remote_addr` is a trusted proxy (`outer.trusted-proxies`) and the client is the one its
    /// forwarded header names; the permit is not yet counted under any address.
    forwarded: bool,
}

/// Runs the TLS handshake under the connection's deadline (the same one as the HTTP
/// handshake's), then serves HTTP over it.
async fn serve_tls<S>(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: S,
    ctx: Arc<OuterContext>,
    connection: Connection,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _handshaking = Handshaking::enter(&ctx.handshaking);
    let shutdown = ctx.session.shutdown.clone();
    let remote_addr = connection.remote_addr;
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return,
        accepted = timeout_at(connection.deadline, acceptor.accept(stream)) => accepted,
    };
    match accepted {
        Ok(Ok(tls)) => {
            drop(_handshaking);
            serve_connection(tls, ctx, connection).await;
        }
        Ok(Err(err)) => {
            Metrics::incr(&ctx.session.metrics.tls_handshakes_failed);
            debug!(%remote_addr, error = %err, "TLS handshake failed");
        }
        Err(_) => timed_out(&ctx, remote_addr),
    }
}

/// Answers a connection over a connection limit (503 for `outer.max-connections`, 429 for the
/// per-address ones) and closes it, rather than leaving it in the listen backlog, where a client
/// cannot tell a full node from a dead one. The answer is written without reading the request;
/// at most [`FULL_REFUSALS`] are written at a time (more are closed at once), each within
/// [`FULL_REFUSAL_TIME`]. On a TLS listener the connection is closed at once: an answer would
/// need a TLS handshake first.
fn refuse_at_accept(
    mut stream: tokio::net::TcpStream,
    remote_addr: SocketAddr,
    err: HandshakeError,
    ctx: &Arc<OuterContext>,
) {
    let metrics = &ctx.session.metrics;
    metrics.refused(err.status().as_u16());
    Metrics::incr(match err {
        HandshakeError::Full(_) => &metrics.connections_refused_full,
        _ => &metrics.connections_refused_per_ip,
    });
    debug!(%remote_addr, reason = %err, "connection refused at accept");
    if ctx.tls.is_some() {
        return;
    }
    let Ok(refusing) = Arc::clone(&ctx.refusing).try_acquire_owned() else {
        return;
    };
    ctx.tracker.spawn(async move {
        let _refusing = refusing;
        let _ =
            tokio::time::timeout(FULL_REFUSAL_TIME, head::write_refusal(&mut stream, &err)).await;
    });
}

/// Serves HTTP on one connection until it upgrades, closes, passes its deadline, or the node
/// shuts down.
async fn serve_connection<S>(mut stream: S, ctx: Arc<OuterContext>, connection: Connection)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Connection {
        mut remote_addr,
        mut permit,
        deadline,
        forwarded,
    } = connection;
    let _handshaking = Handshaking::enter(&ctx.handshaking);
    let shutdown = ctx.session.shutdown.clone();
    let limit = ctx.config().max_request_head;
    let head = tokio::select! {
        _ = shutdown.cancelled() => return,
        read = timeout_at(deadline, head::read_head(&mut stream, limit)) => match read {
            Ok(Ok(head)) => head,
            Ok(Err(HeadError::Refused(err))) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = refuse_head(&mut stream, &err, &ctx, remote_addr, deadline) => {}
                }
                return;
            }
            Ok(Err(err)) => {
                debug!(%remote_addr, error = %err, "connection ended before its request");
                return;
            }
            Err(_) => return timed_out(&ctx, remote_addr),
        },
    };
    if forwarded {
        match proxied::forwarded_client(&head, remote_addr, &ctx, &mut permit) {
            Ok(client) => remote_addr = client,
            Err(err) => {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = refuse_head(&mut stream, &err, &ctx, remote_addr, deadline) => {}
                }
                return;
            }
        }
    }
    let permit = Arc::new(permit);
    let service = {
        let ctx = Arc::clone(&ctx);
        service_fn(move |request| {
            let ctx = Arc::clone(&ctx);
            let permit = Arc::clone(&permit);
            async move {
                Ok::<_, Infallible>(respond(request, &ctx, remote_addr, &permit, deadline).await)
            }
        })
    };
    // hyper gets the head already read, so it never needs more room than that to parse it;
    // its own limit is set above ours (and at least its minimum, 8 KiB) so that it never
    // refuses a head first, without a reason. No hyper timer: the deadline covers everything.
    let connection = http1::Builder::new()
        .max_buf_size((limit + 1).max(8192))
        .serve_connection(TokioIo::new(Prefixed::new(head, stream)), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = tokio::time::sleep_until(deadline) => return timed_out(&ctx, remote_addr),
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

/// Counts and logs a connection dropped at its deadline. The session task's wait for the
/// upgrade shares the deadline, but by then hyper has handed the connection over, so a
/// timeout is always seen here first.
fn timed_out(ctx: &OuterContext, remote_addr: SocketAddr) {
    Metrics::incr(&ctx.session.metrics.handshakes_timed_out);
    debug!(%remote_addr, "no upgrade within outer.handshake-timeout; connection dropped");
}

/// Answers a request head that `head::read_head` refused, and closes the connection.
async fn refuse_head(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    err: &HandshakeError,
    ctx: &OuterContext,
    remote_addr: SocketAddr,
    deadline: Instant,
) {
    let metrics = &ctx.session.metrics;
    metrics.refused(err.status().as_u16());
    match err {
        HandshakeError::HeadTooLarge(_)
        | HandshakeError::RequestLineTooLong(_)
        | HandshakeError::TooManyHeaderFields(_) => {
            Metrics::incr(&metrics.request_heads_too_large);
        }
        // A client behind a trusted proxy, over a per-address limit.
        HandshakeError::TooManyFromIp(..) | HandshakeError::TooFastFromIp(..) => {
            Metrics::incr(&metrics.connections_refused_per_ip);
        }
        _ => {}
    }
    debug!(%remote_addr, status = err.status().as_u16(), reason = %err, "request head refused");
    match timeout_at(deadline, head::write_refusal(stream, err)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => debug!(%remote_addr, error = %err, "refusal not delivered"),
        Err(_) => timed_out(ctx, remote_addr),
    }
}

/// Answers one HTTP request: the health document, an upgrade, or a refusal.
///
/// Every answer but a 101 carries `Connection: close`, so hyper serves one request per
/// connection and pipelined requests cannot queue answers. (hyper's `keep_alive(false)` would
/// do the same, but also appends `close` to the 101's `Connection: upgrade`.)
async fn respond(
    mut request: Request<Incoming>,
    ctx: &Arc<OuterContext>,
    remote_addr: SocketAddr,
    permit: &Arc<ConnectionPermit>,
    deadline: Instant,
) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let mut response = if path == HEALTHZ_PATH {
        match *request.method() {
            // hyper sends a HEAD answer's headers (Content-Length included) without its body.
            Method::GET | Method::HEAD => healthz(ctx),
            _ => refuse(
                HandshakeError::HealthzMethod(request.method().clone()),
                &request,
                ctx,
                remote_addr,
            ),
        }
    } else if ctx.config().demo && demo::serves(path) {
        demo::respond(
            request.method(),
            path,
            request.uri().query(),
            &ctx.config().path,
        )
    } else {
        match upgrade(&mut request, ctx, remote_addr, permit, deadline).await {
            Ok(response) => return response,
            Err(err) => refuse(err, &request, ctx, remote_addr),
        }
    };
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// Counts and logs a refusal, and builds its answer.
fn refuse(
    err: HandshakeError,
    request: &Request<Incoming>,
    ctx: &OuterContext,
    remote_addr: SocketAddr,
) -> Response<Full<Bytes>> {
    ctx.session.metrics.refused(err.status().as_u16());
    if let HandshakeError::Unavailable(_) = err {
        Metrics::incr(&ctx.session.metrics.registry_unavailable);
    }
    // The path only: the query may hold a token.
    debug!(%remote_addr, path = %request.uri().path(), status = err.status().as_u16(),
        reason = %err, "upgrade refused");
    refusal(&err)
}

/// Checks the request, claims the role in the hub, and spawns the session that completes
/// the upgrade.
async fn upgrade(
    request: &mut Request<Incoming>,
    ctx: &Arc<OuterContext>,
    remote_addr: SocketAddr,
    permit: &Arc<ConnectionPermit>,
    deadline: Instant,
) -> Result<Response<Full<Bytes>>, HandshakeError> {
    let pair = handshake::check(request, &ctx.config().path, ctx.session.v1.enabled)?;
    handshake::check_origin(request, &ctx.config().allowed_origins)?;
    // Before the claim: a client without a good token never disturbs the slot's session.
    let token_expires = match &ctx.session.auth {
        Some(auth) => {
            let token = handshake::token_of(request);
            auth.check(token.as_deref(), &pair.channel_id, pair.role)
                .map_err(HandshakeError::Unauthorized)?
        }
        None => None,
    };
    if ctx.session.draining.is_cancelled() {
        return Err(HandshakeError::Draining);
    }
    let client = pair.client;
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
    // Boxed: the task would otherwise keep room for the upgrade's state for the whole session.
    let upgrading = Box::pin(upgrading);
    ctx.tracker.spawn(upgrade_then_serve(
        upgrading,
        deadline,
        claim,
        outbound_rx,
        session_ctx,
        Admission {
            remote_addr,
            permit,
            token_expires,
        },
    ));
    let mut response = response.map(|_| Full::new(Bytes::new()));
    if client.is_some() {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            header::HeaderValue::from_static(crate::v1::SUBPROTOCOL),
        );
    }
    Ok(response)
}

/// Waits for the upgrade to complete, then runs the session; or abandons the claim.
///
/// Built with `then` rather than as one `async` block: a task is sized for its largest state,
/// and in one block the claim, the queue and the upgrade's timer kept slots of their own beside
/// the session's state for the whole session (2.4 KiB a task, measured, against 1.4 KiB).
fn upgrade_then_serve(
    upgrading: Pin<Box<yawc::UpgradeFut>>,
    deadline: Instant,
    claim: hub::Claim,
    outbound_rx: Receiver<Message>,
    session_ctx: Arc<SessionContext>,
    admission: Admission,
) -> impl Future<Output = ()> + Send {
    let Admission {
        remote_addr,
        permit,
        token_expires,
    } = admission;
    timeout_at(deadline, upgrading).then(move |upgraded| match upgraded {
        Ok(Ok(ws)) => {
            let mut claim = claim;
            // The 101 is on the wire: only now may the session this one replaces be evicted.
            session_ctx.router.activate(&mut claim);
            let session = session::run(
                ws,
                claim,
                outbound_rx,
                session_ctx,
                remote_addr,
                token_expires,
            );
            Either::Left(session.map(move |()| drop(permit)))
        }
        failed => {
            match failed {
                Ok(Err(err)) => debug!(%remote_addr, error = %err, "upgrade failed"),
                _ => {
                    debug!(%remote_addr, "upgrade did not complete within outer.handshake-timeout")
                }
            }
            Either::Right(Box::pin(async move {
                abandon(claim, outbound_rx, &session_ctx).await;
                drop(permit);
            }))
        }
    })
}

/// What let a connection in: its address, its place among `outer.max-connections` (held for
/// the session's life), and when its token expires (`auth.*`).
struct Admission {
    remote_addr: SocketAddr,
    permit: Arc<ConnectionPermit>,
    token_expires: Option<SystemTime>,
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
        let claimed = session_ctx
            .router
            .claim(pair.channel_id, pair.role, pair.client)
            .await;
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
    ctx.closes.take(claim.handle.id);
    let queue = claim.handle.queue.clone();
    ctx.router.abandon(claim).await;
    let undelivered = session::close_queue(&mut outbound_rx, &queue);
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

fn healthz(outer: &OuterContext) -> Response<Full<Bytes>> {
    let ctx = &outer.session;
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
        "handshaking": outer.handshaking.load(Ordering::Relaxed),
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
