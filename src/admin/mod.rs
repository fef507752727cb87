//! The admin listener (`admin.*`, default `127.0.0.1:1026`): what an operator and their tools
//! see and control, apart from the client port so that it can stay off the internet.
//!
//! - `GET /healthz`: liveness, as on the client port.
//! - `GET /readyz`: 200 when the node takes new clients; 503 with the reasons while it drains,
//!   before it has joined the cluster, and while Redis is unreachable in cluster mode.
//! - `GET /metrics`: every counter, gauge and histogram in the Prometheus text format.
//! - `/admin/...`: the JSON API of `api` (sessions, channels, drain, configuration).
//!
//! `/metrics` and `/admin/` need `Authorization: Bearer <admin.token>` when a token is set (a
//! node refuses to start without one on a non-loopback address); the probes never do, since
//! orchestrators call them without credentials. Each connection is bounded: at most
//! [`MAX_CONNECTIONS`] at a time (one more is accepted and closed at once, so that idle
//! connections cannot leave probes waiting in the backlog), its request head within
//! [`HEAD_TIME`], the whole exchange within [`CONNECTION_TIME`], one request each.

mod api;
mod prometheus;

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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::config::Effective;
use crate::drain::Drain;
use crate::outer::session::SessionContext;

/// Admin connections served at a time; more are closed as soon as they are accepted.
const MAX_CONNECTIONS: usize = 1024;
/// How long a connection may take to send its request head.
const HEAD_TIME: Duration = Duration::from_secs(5);
/// How long one admin connection may take, request and answer.
const CONNECTION_TIME: Duration = Duration::from_secs(30);

/// What the admin listener needs of the node.
pub struct AdminContext {
    /// The sessions' shared state: the router (and its hub), metrics, pending closes.
    pub session: Arc<SessionContext>,
    /// The node's drain.
    pub drain: Arc<Drain>,
    /// The configuration, for `GET /admin/config`.
    pub effective: Effective,
    /// `admin.token`; empty when none is required.
    pub token: String,
    /// `drain.raw = "wait"`: what `POST /admin/drain` does with raw clients unless told.
    pub drain_waits_for_raw: bool,
    /// What `/metrics` encodes.
    registry: prometheus_client::registry::Registry,
}

impl std::fmt::Debug for AdminContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminContext")
            .field("drain", &self.drain.progress())
            .field("token_set", &!self.token.is_empty())
            .finish_non_exhaustive()
    }
}

impl AdminContext {
    /// The context of a node's admin listener.
    pub fn new(
        session: Arc<SessionContext>,
        drain: Arc<Drain>,
        effective: Effective,
        token: String,
        drain_waits_for_raw: bool,
    ) -> AdminContext {
        AdminContext {
            registry: prometheus::registry(Arc::clone(&session)),
            session,
            drain,
            effective,
            token,
            drain_waits_for_raw,
        }
    }
}

/// Serves the admin listener until `shutdown`.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<AdminContext>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while let Some((stream, remote_addr)) = crate::accept::next(&listener, &shutdown, "admin").await
    {
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            debug!(%remote_addr, "admin connection closed: {MAX_CONNECTIONS} are open");
            continue;
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| {
                let ctx = Arc::clone(&ctx);
                async move { Ok::<_, Infallible>(respond(request, &ctx, remote_addr).await) }
            });
            let connection = http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIME)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(err)) = tokio::time::timeout(CONNECTION_TIME, connection).await {
                debug!(%remote_addr, error = %err, "admin connection ended with an error");
            }
        });
    }
}

/// Answers one admin request.
async fn respond(
    request: Request<Incoming>,
    ctx: &AdminContext,
    remote_addr: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/healthz") => {
            return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
        }
        (&Method::GET | &Method::HEAD, "/readyz") => return readyz(ctx),
        _ => {}
    }
    if !authorized(&request, &ctx.token) {
        debug!(%remote_addr, %path, "admin request without the admin token");
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "this needs `Authorization: Bearer <admin.token>`",
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    if path == "/metrics" {
        return match method {
            Method::GET | Method::HEAD => metrics(ctx),
            _ => error(StatusCode::METHOD_NOT_ALLOWED, "/metrics takes GET"),
        };
    }
    match path.strip_prefix("/admin/") {
        Some(route) => api::respond(&method, route, request.uri().query(), ctx).await,
        None => error(
            StatusCode::NOT_FOUND,
            "no such path; see the README, \"Admin API\"",
        ),
    }
}

/// Whether `request` carries the admin token (always, when none is set). The comparison takes
/// the same time wherever the first difference is.
fn authorized(request: &Request<Incoming>, token: &str) -> bool {
    if token.is_empty() {
        return true;
    }
    let Some(given) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// Why the node does not take new clients now, if it does not.
pub fn unready_reasons(ctx: &SessionContext) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if ctx.shutdown.is_cancelled() {
        reasons.push("shutting down");
    } else if ctx.draining.is_cancelled() {
        reasons.push("draining");
    }
    if !ctx.router.registry_reachable() {
        reasons.push("the registry (Redis) did not answer the last heartbeat, or none yet");
    }
    reasons
}

fn readyz(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let reasons = unready_reasons(&ctx.session);
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &serde_json::json!({"ready": reasons.is_empty(), "reasons": reasons}),
    )
}

fn metrics(ctx: &AdminContext) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(prometheus::scrape(&ctx.registry))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(prometheus::CONTENT_TYPE),
    );
    response
}

/// A JSON answer.
fn json(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

/// A JSON error: `{"error": reason}`.
fn error(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    json(status, &serde_json::json!({ "error": reason }))
}
