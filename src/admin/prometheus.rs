//! `GET /metrics`: the node's counters, gauges and histograms in the Prometheus text format
//! (version 0.0.4, what every Prometheus and `promtool` read), encoded by the
//! `prometheus-client` crate.
//!
//! The node counts with plain relaxed atomics (`crate::metrics`), which cost nothing on the
//! message path; this module reads them at scrape time (a `Collector`) and names them the
//! Prometheus way: one family per thing counted, a label per reason, status or code, instead of
//! one name per reason as `/healthz` has them. [`FAMILIES`] is that mapping.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family as LabelledFamily;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use std::sync::Arc;

use crate::outer::session::SessionContext;

/// How a `/healthz` counter appears in `/metrics`: its family (without `_total`, which the
/// encoder adds), its help, and its label, if the family has one.
struct Family {
    family: &'static str,
    help: &'static str,
    counters: &'static [(&'static str, Option<(&'static str, &'static str)>)],
}

/// Every counter of `Metrics::snapshot`, by family. A test checks none is left out.
const FAMILIES: &[Family] = &[
    Family {
        family: "wspair_sessions_opened",
        help: "Sessions that completed the upgrade",
        counters: &[("wspair_sessions_opened_total", None)],
    },
    Family {
        family: "wspair_handshakes_refused",
        help: "Connections refused before the upgrade, whatever the status",
        counters: &[("wspair_handshakes_refused_total", None)],
    },
    Family {
        family: "wspair_handshakes_timed_out",
        help: "Connections dropped for not upgrading within outer.handshake-timeout",
        counters: &[("wspair_handshakes_timed_out_total", None)],
    },
    Family {
        family: "wspair_connections_refused",
        help: "Connections refused at accept, by limit",
        counters: &[
            (
                "wspair_connections_refused_full_total",
                Some(("limit", "max_connections")),
            ),
            (
                "wspair_connections_refused_per_ip_total",
                Some(("limit", "per_ip")),
            ),
            (
                "wspair_connections_refused_proxy_total",
                Some(("limit", "proxy_protocol")),
            ),
        ],
    },
    Family {
        family: "wspair_tls_handshakes_failed",
        help: "TLS handshakes on the client port that failed",
        counters: &[("wspair_tls_handshakes_failed_total", None)],
    },
    Family {
        family: "wspair_token_refreshes",
        help: "Fresh tokens v1 clients handed their sessions, by result",
        counters: &[
            (
                "wspair_tokens_refreshed_total",
                Some(("result", "accepted")),
            ),
            ("wspair_tokens_refused_total", Some(("result", "refused"))),
        ],
    },
    Family {
        family: "wspair_request_heads_too_large",
        help: "Request heads refused with 431 or 414",
        counters: &[("wspair_request_heads_too_large_total", None)],
    },
    Family {
        family: "wspair_messages_relayed",
        help: "Messages written to the receiving client",
        counters: &[("wspair_messages_relayed_total", None)],
    },
    Family {
        family: "wspair_messages_dropped",
        help: "Messages dropped, by reason",
        counters: &[
            (
                "wspair_messages_dropped_no_peer_total",
                Some(("reason", "no_peer")),
            ),
            (
                "wspair_messages_dropped_closed_total",
                Some(("reason", "receiver_closed")),
            ),
            (
                "wspair_messages_dropped_remote_total",
                Some(("reason", "remote_receiver_gone")),
            ),
            (
                "wspair_messages_lost_between_nodes_total",
                Some(("reason", "lost_between_nodes")),
            ),
        ],
    },
    Family {
        family: "wspair_sessions_ended",
        help: "Sessions the node ended, by cause (closes by code are in wspair_sessions_closed)",
        counters: &[
            ("wspair_sessions_stalled_total", Some(("cause", "stalled"))),
            (
                "wspair_sessions_replaced_total",
                Some(("cause", "replaced")),
            ),
            ("wspair_sessions_fenced_total", Some(("cause", "fenced"))),
            ("wspair_sessions_idle_total", Some(("cause", "idle"))),
            (
                "wspair_sessions_protocol_errors_total",
                Some(("cause", "protocol_error")),
            ),
            (
                "wspair_sessions_message_limits_total",
                Some(("cause", "message_limits")),
            ),
            ("wspair_sessions_too_big_total", Some(("cause", "too_big"))),
            (
                "wspair_sessions_rate_limited_total",
                Some(("cause", "rate_limited")),
            ),
        ],
    },
    Family {
        family: "wspair_rate_limit_pauses",
        help: "Times a session held a message over its rate and stopped reading its client",
        counters: &[("wspair_rate_limit_pauses_total", None)],
    },
    Family {
        family: "wspair_links_refused",
        help: "Inner connections refused at their handshake",
        counters: &[("wspair_links_refused_total", None)],
    },
    Family {
        family: "wspair_links_malformed",
        help: "Inner links closed for a malformed frame",
        counters: &[("wspair_links_malformed_total", None)],
    },
    Family {
        family: "wspair_link_dial_failures",
        help: "Failed attempts to dial another node",
        counters: &[("wspair_link_dial_failures_total", None)],
    },
    Family {
        family: "wspair_link_frames_dropped",
        help: "Frames dropped from an inner link's queue when the link went down",
        counters: &[("wspair_link_frames_dropped_total", None)],
    },
    Family {
        family: "wspair_inner_frames_stale",
        help: "Inner frames naming a session that no longer exists",
        counters: &[("wspair_inner_frames_stale_total", None)],
    },
    Family {
        family: "wspair_registry_unavailable",
        help: "Upgrades refused with 503 because the registry or the peer's node did not answer",
        counters: &[("wspair_registry_unavailable_total", None)],
    },
    Family {
        family: "wspair_upgrades_failed",
        help: "Claims whose upgrade never completed",
        counters: &[("wspair_upgrades_failed_total", None)],
    },
];

/// Reads the node's state at each scrape.
#[derive(Debug)]
struct NodeCollector {
    ctx: Arc<SessionContext>,
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.ctx.metrics.snapshot();
        let value = |name: &str| {
            snapshot
                .iter()
                .find(|(counter, _)| *counter == name)
                .map_or(0, |(_, value)| *value)
        };
        for family in FAMILIES {
            let sample = ConstCounter::new(0u64);
            let mut metric = encoder.encode_descriptor(
                family.family,
                family.help,
                None,
                sample.metric_type(),
            )?;
            match family.counters {
                [(counter, None)] => ConstCounter::new(value(counter)).encode(metric)?,
                labelled => {
                    for (counter, label) in labelled {
                        let label = label.expect("a family of several counters labels each");
                        ConstCounter::new(value(counter))
                            .encode(metric.encode_family(&[label])?)?;
                    }
                }
            }
        }
        let (sum, count, buckets) = self.ctx.metrics.histograms.message_size.snapshot();
        let mut sizes = encoder.encode_descriptor(
            "wspair_message_size_bytes",
            "Sizes of the data messages clients sent (payload bytes, after decompression)",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        sizes.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
            sum, count, &buckets, None,
        )?;
        let router = &self.ctx.router;
        let (connections, pairs) = router.hub.counts();
        let (link_bytes, pending_releases) = router.backlog();
        let gauges: [(&str, &str, i64); 7] = [
            (
                "wspair_connections",
                "Client sessions this node holds",
                to_i64(connections),
            ),
            (
                "wspair_pairs",
                "Channels with both roles connected to this node",
                to_i64(pairs),
            ),
            (
                "wspair_cross_node_pairs",
                "Channels with one role on this node and the other on another node",
                to_i64(router.hub.cross_node_pairs()),
            ),
            (
                "wspair_links",
                "Inner links to other nodes",
                to_i64(router.n_links()),
            ),
            (
                "wspair_link_queued_bytes",
                "Payload bytes waiting in the links to other nodes",
                to_i64(link_bytes),
            ),
            (
                "wspair_pending_releases",
                "Route releases that failed and wait for their retry (Redis was unreachable)",
                to_i64(pending_releases),
            ),
            (
                "wspair_ready",
                "1 when the node takes new clients (see /readyz), else 0",
                i64::from(super::unready_reasons(&self.ctx).is_empty()),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The registry `/metrics` encodes: the node's collector, and the build's version as the
/// label of a gauge that is always 1 (the Prometheus convention for build information).
pub fn registry(ctx: Arc<SessionContext>) -> Registry {
    let mut registry = Registry::default();
    let histograms = &ctx.metrics.histograms;
    for (name, help, histogram) in [
        (
            "wspair_pairing_wait_seconds",
            "From a client's upgrade with no peer until its peer's session was known",
            &histograms.pairing_wait,
        ),
        (
            "wspair_session_duration_seconds",
            "From a session's upgrade to its close",
            &histograms.session_duration,
        ),
        (
            "wspair_registry_call_duration_seconds",
            "Each Redis call, answered or timed out",
            &histograms.registry_call,
        ),
        (
            "wspair_link_round_trip_seconds",
            "An inner link's ping to its pong",
            &histograms.link_round_trip,
        ),
    ] {
        registry.register(name, help, histogram.clone());
    }
    let by_label = &histograms.by_label;
    registry.register(
        "wspair_handshakes_refused_by_status",
        "Connections refused before the upgrade, by the HTTP status they were (or would have been) answered with",
        by_label.refusals.clone(),
    );
    registry.register(
        "wspair_sessions_closed",
        "Sessions closed, by who closed them (server, client, lost: no close frame) and the close code",
        by_label.closes.clone(),
    );
    registry.register_collector(Box::new(NodeCollector { ctx }));
    let build = LabelledFamily::<[(&'static str, &'static str); 1], Gauge>::default();
    build
        .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
        .set(1);
    registry.register("wspair_build_info", "The running build", build);
    registry
}

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The text of one scrape.
pub fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::FAMILIES;

    #[test]
    fn every_counter_has_a_family() {
        let metrics = crate::metrics::Metrics::default();
        for (name, _) in metrics.snapshot() {
            let found = FAMILIES
                .iter()
                .flat_map(|family| family.counters.iter())
                .any(|(counter, _)| *counter == name);
            assert!(found, "{name} is not exported in /metrics");
        }
    }
}
