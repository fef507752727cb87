//! Every counter wspair keeps, in one place.
//!
//! Counters are relaxed atomics: they are read for `/healthz` and logs, never used to make
//! decisions, so no ordering between them is promised. Names follow `wspair_<thing>_<unit>`
//! in [`Metrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// The node's counters. One instance per server, shared by reference.
#[derive(Debug, Default)]
pub struct Metrics {
    /// The distributions `/metrics` shows (not in `/healthz`).
    pub histograms: crate::histograms::Histograms,
    /// Sessions that completed the upgrade.
    pub sessions_opened: AtomicU64,
    /// Requests refused with an HTTP error before the upgrade (400, 404, 405, 409, 414, 426,
    /// 431, 503).
    pub handshakes_refused: AtomicU64,
    /// Connections dropped because they had not upgraded within `outer.handshake-timeout`.
    pub handshakes_timed_out: AtomicU64,
    /// Connections over `outer.max-connections`, answered with 503 (or closed) at once (also
    /// counted in `handshakes_refused`).
    pub connections_refused_full: AtomicU64,
    /// Connections over `outer.max-connections-per-ip` or `outer.connections-per-second-per-ip`,
    /// answered with 429 (or closed) at once (also counted in `handshakes_refused`).
    pub connections_refused_per_ip: AtomicU64,
    /// Connections closed with `outer.proxy-protocol` on because they did not open with a valid
    /// PROXY header, or came from a peer not in `outer.trusted-proxies`.
    pub connections_refused_proxy: AtomicU64,
    /// TLS handshakes that failed (`outer.tls-*` on): no common protocol, a client that
    /// distrusts the certificate, plaintext on a TLS port.
    pub tls_handshakes_failed: AtomicU64,
    /// Fresh tokens v1 clients handed their sessions that were accepted (`auth.*`).
    pub tokens_refreshed: AtomicU64,
    /// Fresh tokens v1 clients handed their sessions that were refused (bad, expired, for
    /// another slot, or sooner than 1 s after the last).
    pub tokens_refused: AtomicU64,
    /// Request heads refused with 431 or 414 for exceeding `outer.max-request-head` or the
    /// header field limit (also counted in `handshakes_refused`).
    pub request_heads_too_large: AtomicU64,
    /// Messages written to the receiving client (not merely queued for it).
    pub messages_relayed: AtomicU64,
    /// Messages dropped because the peer was not connected when they arrived.
    pub messages_dropped_no_peer: AtomicU64,
    /// Messages dropped because the session they were queued for closed before sending them.
    pub messages_dropped_closed: AtomicU64,
    /// Sessions closed with 1013 because they accepted nothing for `outer.stall-timeout`.
    pub sessions_stalled: AtomicU64,
    /// Sessions closed with 4001 because a newer client of the same role took over.
    pub sessions_replaced: AtomicU64,
    /// Sessions closed with 4001 because registering them again found their route held by
    /// another session: a newer client replaced them but its `Evict` never reached this node.
    pub sessions_fenced: AtomicU64,
    /// Sessions closed with 4002 because they were silent for `outer.idle-timeout`.
    pub sessions_idle: AtomicU64,
    /// Sessions closed with 1002 or 1007: the client broke the protocol or sent bad UTF-8.
    pub sessions_protocol_errors: AtomicU64,
    /// Sessions closed with 1008: a message over `outer.message-timeout` or
    /// `outer.max-fragments`.
    pub sessions_message_limits: AtomicU64,
    /// Sessions closed with 1009: a message over `outer.max-frame-size`.
    pub sessions_too_big: AtomicU64,
    /// Sessions closed with 1008 for sending faster than `outer.max-messages-per-second` or
    /// `outer.max-bytes-per-second` (`outer.rate-limit-action = close`).
    pub sessions_rate_limited: AtomicU64,
    /// Times a session held a message over its rate and stopped reading its client until the
    /// rate allowed it (`outer.rate-limit-action = throttle`).
    pub rate_limit_pauses: AtomicU64,
    /// Inner connections cut because the handshake failed (TLS with `inner.tls-*`: no
    /// certificate of the cluster's CA, or no TLS at all; wrong secret, version, timeout, a frame
    /// over the handshake limit) or too many were handshaking at once.
    pub links_refused: AtomicU64,
    /// Inner links closed because the remote node sent a malformed or oversized frame.
    pub links_malformed: AtomicU64,
    /// Failed attempts to dial a remote node.
    pub link_dial_failures: AtomicU64,
    /// Frames dropped because their link could not be (re)established in time or broke.
    pub link_frames_dropped: AtomicU64,
    /// Messages from a remote node for a session this node no longer holds.
    pub messages_dropped_remote: AtomicU64,
    /// Messages another node sent that never arrived (a link broke under them), found from the
    /// positions data frames carry; the sending node may have counted them in
    /// `link_frames_dropped` too.
    pub messages_lost_between_nodes: AtomicU64,
    /// Inner control frames naming a session incarnation this node no longer holds (credit
    /// for a replaced session, a late announcement): dropped, never applied to a successor.
    pub inner_frames_stale: AtomicU64,
    /// Upgrade requests answered 503 because the registry was unavailable.
    pub registry_unavailable: AtomicU64,
    /// Upgrades that passed every check but never completed: the client went away while its
    /// role was being claimed or after the 101, or the deadline passed. The session they
    /// displaced keeps its place.
    pub upgrades_failed: AtomicU64,
}

impl Metrics {
    /// Counts a connection refused before its upgrade, answered with `status` (or closed:
    /// the status it would have got).
    pub fn refused(&self, status: u16) {
        Metrics::incr(&self.handshakes_refused);
        self.histograms.by_label.refused(status);
    }

    /// Adds one to `counter`.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Every counter with its metric name, for `/healthz`.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        vec![
            ("wspair_sessions_opened_total", read(&self.sessions_opened)),
            (
                "wspair_handshakes_refused_total",
                read(&self.handshakes_refused),
            ),
            (
                "wspair_handshakes_timed_out_total",
                read(&self.handshakes_timed_out),
            ),
            (
                "wspair_connections_refused_full_total",
                read(&self.connections_refused_full),
            ),
            (
                "wspair_connections_refused_per_ip_total",
                read(&self.connections_refused_per_ip),
            ),
            (
                "wspair_connections_refused_proxy_total",
                read(&self.connections_refused_proxy),
            ),
            (
                "wspair_tls_handshakes_failed_total",
                read(&self.tls_handshakes_failed),
            ),
            (
                "wspair_tokens_refreshed_total",
                read(&self.tokens_refreshed),
            ),
            ("wspair_tokens_refused_total", read(&self.tokens_refused)),
            (
                "wspair_request_heads_too_large_total",
                read(&self.request_heads_too_large),
            ),
            (
                "wspair_messages_relayed_total",
                read(&self.messages_relayed),
            ),
            (
                "wspair_messages_dropped_no_peer_total",
                read(&self.messages_dropped_no_peer),
            ),
            (
                "wspair_messages_dropped_closed_total",
                read(&self.messages_dropped_closed),
            ),
            (
                "wspair_sessions_stalled_total",
                read(&self.sessions_stalled),
            ),
            (
                "wspair_sessions_replaced_total",
                read(&self.sessions_replaced),
            ),
            ("wspair_sessions_fenced_total", read(&self.sessions_fenced)),
            ("wspair_sessions_idle_total", read(&self.sessions_idle)),
            (
                "wspair_sessions_protocol_errors_total",
                read(&self.sessions_protocol_errors),
            ),
            (
                "wspair_sessions_message_limits_total",
                read(&self.sessions_message_limits),
            ),
            (
                "wspair_sessions_too_big_total",
                read(&self.sessions_too_big),
            ),
            (
                "wspair_sessions_rate_limited_total",
                read(&self.sessions_rate_limited),
            ),
            (
                "wspair_rate_limit_pauses_total",
                read(&self.rate_limit_pauses),
            ),
            ("wspair_links_refused_total", read(&self.links_refused)),
            ("wspair_links_malformed_total", read(&self.links_malformed)),
            (
                "wspair_link_dial_failures_total",
                read(&self.link_dial_failures),
            ),
            (
                "wspair_link_frames_dropped_total",
                read(&self.link_frames_dropped),
            ),
            (
                "wspair_messages_dropped_remote_total",
                read(&self.messages_dropped_remote),
            ),
            (
                "wspair_messages_lost_between_nodes_total",
                read(&self.messages_lost_between_nodes),
            ),
            (
                "wspair_inner_frames_stale_total",
                read(&self.inner_frames_stale),
            ),
            (
                "wspair_registry_unavailable_total",
                read(&self.registry_unavailable),
            ),
            ("wspair_upgrades_failed_total", read(&self.upgrades_failed)),
        ]
    }
}
