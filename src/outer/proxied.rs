//! Connections through a proxy: which address is the client's, and when its per-address
//! limits are checked.
//!
//! Without `outer.proxy-protocol` and `outer.trusted-proxies` every connection is
//! [`Route::Direct`] (one comparison at accept) and nothing here runs. Otherwise:
//!
//! - `outer.proxy-protocol`: the connection must open with a PROXY header ([`serve`]), read
//!   under `outer.handshake-timeout` before TLS; its source address is the client. When
//!   `outer.trusted-proxies` is set, only peers in it may connect at all.
//! - a peer in `outer.trusted-proxies` (or a PROXY source in it, when a TCP balancer sits in
//!   front of an HTTP proxy): the client is what its forwarded header names, read from the
//!   request head ([`forwarded_client`]).
//!
//! Such a connection holds its place among `outer.max-connections` from accept, and is counted
//! under its client's address (`outer.max-connections-per-ip`,
//! `outer.connections-per-second-per-ip`) once known, never under the proxy's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tracing::debug;

use super::forwarded;
use super::handshake::HandshakeError;
use super::head::{self, MAX_HEADER_FIELDS, Prefixed};
use super::limits::ConnectionPermit;
use super::proxy_protocol::{ProxyHeaderError, read_proxy_header};
use super::{
    Connection, FULL_REFUSAL_TIME, Handshaking, OuterContext, serve_connection, serve_tls,
    timed_out,
};
use crate::config::OuterConfig;
use crate::metrics::Metrics;

/// How a connection's client is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    /// The TCP peer is the client.
    Direct,
    /// The peer is a trusted proxy: its forwarded header names the client.
    Forwarded,
    /// A PROXY header names the client.
    ProxyHeader,
    /// `outer.proxy-protocol` is on and the peer is not a trusted proxy: closed at once.
    Untrusted,
}

/// The route of a connection from `peer`.
pub(super) fn route(config: &OuterConfig, peer: IpAddr) -> Route {
    let trusted = &config.trusted_proxies;
    if config.proxy_protocol {
        if trusted.is_empty() || trusted.contains(peer) {
            Route::ProxyHeader
        } else {
            Route::Untrusted
        }
    } else if !trusted.is_empty() && trusted.contains(peer) {
        Route::Forwarded
    } else {
        Route::Direct
    }
}

/// Counts and logs a connection closed for not being from a trusted proxy.
pub(super) fn refuse_untrusted(peer: SocketAddr, ctx: &OuterContext) {
    Metrics::incr(&ctx.session.metrics.connections_refused_proxy);
    debug!(remote_addr = %peer,
        "connection closed: outer.proxy-protocol is on and the peer is not in outer.trusted-proxies");
}

/// Serves a connection that must open with a PROXY header: reads it under the connection's
/// deadline, counts the connection under the client it names, then goes on as any connection
/// does (TLS, when on, starts after the header).
pub(super) async fn serve(mut stream: TcpStream, ctx: Arc<OuterContext>, connection: Connection) {
    let peer = connection.remote_addr;
    let handshaking = Handshaking::enter(&ctx.handshaking);
    let shutdown = ctx.session.shutdown.clone();
    let read = tokio::select! {
        _ = shutdown.cancelled() => return,
        read = timeout_at(connection.deadline, read_proxy_header(&mut stream)) => read,
    };
    let header = match read {
        Ok(Ok(header)) => header,
        Ok(Err(err)) => {
            // A peer that closes before sending anything (a balancer's TCP health check) was
            // refused nothing.
            if !matches!(err, ProxyHeaderError::Closed) {
                Metrics::incr(&ctx.session.metrics.connections_refused_proxy);
            }
            debug!(remote_addr = %peer, error = %err, "connection closed: no valid PROXY header");
            return;
        }
        Err(_) => return timed_out(&ctx, peer),
    };
    let client = header.source.unwrap_or(peer);
    let trusted = &ctx.config().trusted_proxies;
    // A PROXY source that is itself a trusted proxy (an HTTP proxy behind the TCP balancer)
    // names its client in its forwarded header, as a directly connected one would.
    let forwarded = header.source.is_some() && trusted.contains(client.ip());
    let mut connection = Connection {
        remote_addr: client,
        forwarded,
        ..connection
    };
    let mut stream = Prefixed::new(header.rest, stream);
    // `PROXY UNKNOWN` and v2 `LOCAL` name no client (the balancer's own health checks): they
    // stay unattributed, so the balancer's address is never counted against a per-address limit.
    let attributed = header.source.is_some() && !forwarded;
    if attributed && let Err(err) = ctx.limits.attribute(&mut connection.permit, client.ip()) {
        let metrics = &ctx.session.metrics;
        metrics.refused(err.status().as_u16());
        Metrics::incr(&metrics.connections_refused_per_ip);
        debug!(remote_addr = %client, proxy = %peer, reason = %err,
            "connection refused after its PROXY header");
        // On a TLS listener an answer would need a TLS handshake first: closed, as at accept.
        if ctx.tls.is_none() {
            let deadline = connection
                .deadline
                .min(tokio::time::Instant::now() + FULL_REFUSAL_TIME);
            let _ = timeout_at(deadline, head::write_refusal(&mut stream, &err)).await;
        }
        return;
    }
    drop(handshaking);
    match ctx.tls.as_ref().map(|tls| tls.acceptor()) {
        None => serve_connection(stream, ctx, connection).await,
        Some(acceptor) => serve_tls(acceptor, stream, ctx, connection).await,
    }
}

/// The client of a request from `peer`, a trusted proxy, as the configured forwarded header in
/// `head` names it; counted under its address in `permit`. Refused with 400 when the header's
/// trusted part holds an entry that is not an address, and 429 over a per-address limit.
pub(super) fn forwarded_client(
    head: &[u8],
    peer: SocketAddr,
    ctx: &OuterContext,
    permit: &mut ConnectionPermit,
) -> Result<SocketAddr, HandshakeError> {
    let config = ctx.config();
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
    let mut request = httparse::Request::new(&mut fields);
    // `read_head` parsed this head completely before handing it over.
    let client = match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {
            let name = config.forwarded_header.name();
            let values: Vec<&[u8]> = request
                .headers
                .iter()
                .filter(|field| field.name.eq_ignore_ascii_case(name))
                .map(|field| field.value)
                .collect();
            forwarded::client_address(
                config.forwarded_header,
                &values,
                peer,
                &config.trusted_proxies,
            )?
        }
        _ => peer,
    };
    ctx.limits.attribute(permit, client.ip())?;
    if client != peer {
        debug!(remote_addr = %client, proxy = %peer, "client named by {}", config.forwarded_header.name());
    }
    Ok(client)
}
