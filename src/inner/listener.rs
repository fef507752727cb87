//! Accepts links from other nodes, authenticates them, and hands their frames to the router.
//!
//! A connection that fails the handshake within `inner.connect-timeout` (TLS first when
//! `inner.tls-*` is set: a dialer without a certificate of the cluster's CA, or speaking
//! plaintext, fails there) is cut, logged and counted. Before it authenticates, a connection may send frames of at most
//! `HANDSHAKE_FRAME_LIMIT` bytes, and at most `inner.max-handshakes` connections may be
//! handshaking at once (more are cut on accept). Logs name frames by kind, never contents. After it, a malformed or oversized frame, or silence for `inner.link-timeout`,
//! closes that link and nothing else; the dialing node redials. Frames are handed over
//! without waiting (the router never blocks on a session), so one slow session cannot hold up
//! the other channels on the link.

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::auth;
use super::codec::InnerCodec;
use super::frame::InnerFrame;
use super::link::LinkContext;
use super::stream::InnerStream;
use crate::metrics::Metrics;
use crate::node::NodeId;

/// Receives every frame an authenticated link delivers, with the sending node's id. The
/// dialer's `Hello` is delivered first, once its handshake has succeeded, so the receiver
/// can answer a node it has not yet seen in the registry.
pub type FrameSink = Arc<dyn Fn(NodeId, InnerFrame) + Send + Sync>;

/// Accepts links until `shutdown` fires.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<LinkContext>,
    sink: FrameSink,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(ctx.config.max_handshakes));
    while let Some((stream, remote_addr)) = crate::accept::next(&listener, &shutdown, "inner").await
    {
        // Connections that have not authenticated are capped: beyond inner.max-handshakes,
        // a new one is cut at once rather than holding a task, a buffer and a timer.
        let Ok(handshaking) = Arc::clone(&handshakes).try_acquire_owned() else {
            Metrics::incr(&ctx.metrics.links_refused);
            debug!(%remote_addr, "inner connection cut: inner.max-handshakes reached");
            continue;
        };
        tracker.spawn(serve_link(
            stream,
            remote_addr,
            handshaking,
            Arc::clone(&ctx),
            Arc::clone(&sink),
            shutdown.clone(),
        ));
    }
}

async fn serve_link(
    stream: TcpStream,
    remote_addr: SocketAddr,
    handshaking: OwnedSemaphorePermit,
    ctx: Arc<LinkContext>,
    sink: FrameSink,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    // TLS (when on) and the HMAC handshake share one deadline.
    let handshake = async {
        let stream = match &ctx.tls {
            None => InnerStream::Plain(stream),
            Some(tls) => {
                let tls = tls
                    .acceptor()
                    .accept(stream)
                    .await
                    .map_err(|err| format!("TLS: {err}"))?;
                InnerStream::Accepted(Box::new(tls))
            }
        };
        let mut framed = Framed::new(stream, InnerCodec::for_handshake());
        let secret = ctx.config.secret.as_bytes();
        let binding = framed.get_ref().channel_binding();
        match auth::accept(&mut framed, &ctx.me, secret, &binding).await {
            Ok(dialer) => Ok((framed, dialer)),
            Err(err) => Err(err.to_string()),
        }
    };
    let (mut framed, dialer) = match tokio::time::timeout(ctx.config.connect_timeout, handshake)
        .await
    {
        Ok(Ok(done)) => done,
        Ok(Err(err)) => {
            Metrics::incr(&ctx.metrics.links_refused);
            crate::warn_throttled!(%remote_addr, error = %err, "inner link refused");
            return;
        }
        Err(_) => {
            Metrics::incr(&ctx.metrics.links_refused);
            crate::warn_throttled!(%remote_addr, "inner link refused: no handshake within inner.connect-timeout");
            return;
        }
    };
    drop(handshaking);
    framed.codec_mut().allow_messages(ctx.max_message);
    let node = dialer.id;
    info!(%node, %remote_addr, "inner link accepted");
    sink(
        node,
        InnerFrame::Hello {
            version: super::frame::PROTOCOL_VERSION,
            node,
            nonce: [0; super::frame::NONCE_BYTES],
            window: dialer.window,
            advertise: dialer.advertise,
        },
    );
    // Silence is checked on a ticker rather than with a timeout per read, which would arm a
    // timer for every frame on a busy link.
    let mut ticker = tokio::time::interval(ctx.config.link_timeout / 4);
    let mut frames: u64 = 0;
    let mut frames_seen: u64 = 0;
    let mut heard_at = tokio::time::Instant::now();
    // Made once: a fresh `cancelled()` per frame would lock the token's mutex per frame.
    let cancelled = shutdown.clone().cancelled_owned();
    tokio::pin!(cancelled);
    let reason = loop {
        let next = tokio::select! {
            biased;
            _ = &mut cancelled => break "node shutting down".to_owned(),
            next = framed.next() => next,
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                if frames != frames_seen {
                    frames_seen = frames;
                    heard_at = now;
                } else if now.duration_since(heard_at) >= ctx.config.link_timeout {
                    break format!("silent for inner.link-timeout {:?}", ctx.config.link_timeout);
                }
                continue;
            }
        };
        frames += 1;
        match next {
            None => break "closed by the remote node".to_owned(),
            Some(Err(err)) => {
                Metrics::incr(&ctx.metrics.links_malformed);
                break err.to_string();
            }
            Some(Ok(InnerFrame::Ping)) => {
                let pong = framed.send(InnerFrame::Pong);
                if tokio::time::timeout(ctx.config.link_timeout, pong)
                    .await
                    .is_err()
                {
                    break "pong blocked".to_owned();
                }
            }
            Some(Ok(
                frame @ (InnerFrame::Hello { .. } | InnerFrame::Auth { .. } | InnerFrame::Pong),
            )) => {
                Metrics::incr(&ctx.metrics.links_malformed);
                break format!("unexpected {} frame after the handshake", frame.kind());
            }
            Some(Ok(frame)) => sink(node, frame),
        }
    };
    if shutdown.is_cancelled() {
        info!(%node, %remote_addr, %reason, "inner link closed");
    } else {
        warn!(%node, %remote_addr, %reason, "inner link closed");
    }
}
