//! The distributions a node keeps for `/metrics`: how long clients wait for their peer, how
//! long sessions last, how big messages are, how fast Redis answers and how long a round trip
//! between nodes takes.
//!
//! All but message sizes are `prometheus-client` histograms, observed once per event that is
//! rare next to messages (a claim, a session's end, a Redis call, a link ping). Message sizes
//! are observed per message, so they are not: a session counts its messages' sizes in
//! [`LocalSizes`], plain integers of its own, and adds them to the shared [`MessageSizes`] at
//! each tick and when it ends: a few atomic additions per tick instead of three contended ones
//! per message.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// One label and its value.
pub type Label = [(&'static str, String); 1];

/// Who closed a session, and with which code.
pub type CloseLabels = [(&'static str, String); 2];

/// Counters by a label whose values are not known in advance (`/metrics` only): refusals by
/// HTTP status, closes by close code.
#[derive(Debug, Default)]
pub struct ByLabel {
    /// `wspair_handshakes_refused_by_status_total{status}`.
    pub refusals: Family<Label, Counter>,
    /// `wspair_sessions_closed_total{by, code}`: see [`ByLabel::closed`].
    pub closes: Family<CloseLabels, Counter>,
}

impl ByLabel {
    /// Counts a refusal answered with `status`.
    pub fn refused(&self, status: u16) {
        self.refusals
            .get_or_create(&[("status", status.to_string())])
            .inc();
    }

    /// Counts a session that ended: `by` the client (with the code it sent), the server
    /// (with the code it sent), or neither (`lost`: no close frame). A client's code outside
    /// the ones RFC 6455 defines (1000 to 1015) is counted as `application`, so clients cannot
    /// make a series per code they choose, nor pass as the server's own codes.
    pub fn closed(&self, by: &'static str, code: Option<u16>) {
        let code = match (by, code) {
            (_, None) => "none".to_owned(),
            ("client", Some(code)) if !(1000..=1015).contains(&code) => "application".to_owned(),
            (_, Some(code)) => code.to_string(),
        };
        self.closes
            .get_or_create(&[("by", by.to_owned()), ("code", code)])
            .inc();
    }
}

/// Upper bounds of the message size buckets, in bytes; one more bucket takes the rest.
pub const SIZE_BOUNDS: [u64; 8] = [64, 256, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576];
const SIZE_BUCKETS: usize = SIZE_BOUNDS.len() + 1;

/// The node's histograms.
#[derive(Debug)]
pub struct Histograms {
    /// `wspair_pairing_wait_seconds`: from a client's claim with no peer until its peer's
    /// session is known to this node (local, or announced by another node).
    pub pairing_wait: Histogram,
    /// `wspair_session_duration_seconds`: from the upgrade to the close.
    pub session_duration: Histogram,
    /// `wspair_registry_call_duration_seconds`: each Redis call, answered or not (a timeout
    /// counts as `registry.timeout`).
    pub registry_call: Histogram,
    /// `wspair_link_round_trip_seconds`: a link's `Ping` to its `Pong`.
    pub link_round_trip: Histogram,
    /// `wspair_message_size_bytes`: data messages clients send.
    pub message_size: MessageSizes,
    /// Refusals and closes by their status and code.
    pub by_label: ByLabel,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            // 1 ms to about 1.5 h.
            pairing_wait: Histogram::new(exponential_buckets(0.001, 4.0, 12)),
            // 1 s to about 3 days.
            session_duration: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            // 100 µs to about 1.6 s.
            registry_call: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            link_round_trip: Histogram::new(exponential_buckets(0.0001, 2.0, 15)),
            message_size: MessageSizes::default(),
            by_label: ByLabel::default(),
        }
    }
}

/// The node's message size counts, added to by sessions.
#[derive(Debug, Default)]
pub struct MessageSizes {
    counts: [AtomicU64; SIZE_BUCKETS],
    sum: AtomicU64,
}

impl MessageSizes {
    /// Adds what a session counted, and clears it.
    pub fn add(&self, local: &mut LocalSizes) {
        if local.sum == 0 && local.counts.iter().all(|&n| n == 0) {
            return;
        }
        for (total, n) in self.counts.iter().zip(local.counts.iter_mut()) {
            if *n > 0 {
                total.fetch_add(u64::from(std::mem::take(n)), Ordering::Relaxed);
            }
        }
        self.sum
            .fetch_add(std::mem::take(&mut local.sum), Ordering::Relaxed);
    }

    /// The sum of the sizes, the count, and each finite bucket's upper bound with its count
    /// (not cumulative); what is above the last bound is in the count alone, as the encoder
    /// writes the `+Inf` bucket from it.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect();
        let buckets: Vec<(f64, u64)> = SIZE_BOUNDS
            .iter()
            .map(|&bound| bound as f64)
            .zip(counts.iter().copied())
            .collect();
        let sum = self.sum.load(Ordering::Relaxed) as f64;
        (sum, counts.iter().sum(), buckets)
    }
}

/// A session's own message size counts since it last added them to [`MessageSizes`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LocalSizes {
    counts: [u32; SIZE_BUCKETS],
    sum: u64,
}

impl LocalSizes {
    /// Counts one message of `len` bytes.
    pub fn observe(&mut self, len: usize) {
        let bucket = SIZE_BOUNDS
            .iter()
            .position(|&bound| len as u64 <= bound)
            .unwrap_or(SIZE_BOUNDS.len());
        // A session adds its counts at every tick, long before a u32 could fill.
        self.counts[bucket] = self.counts[bucket].saturating_add(1);
        self.sum += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_add_their_sizes_into_the_buckets_and_start_again() {
        let shared = MessageSizes::default();
        let mut local = LocalSizes::default();
        for len in [0, 64, 65, 1_048_576, 1_048_577] {
            local.observe(len);
        }
        shared.add(&mut local);
        assert_eq!(local, LocalSizes::default());
        local.observe(10);
        shared.add(&mut local);
        let (sum, count, buckets) = shared.snapshot();
        assert_eq!(count, 6);
        assert_eq!(sum, (64 + 65 + 1_048_576 + 1_048_577 + 10) as f64);
        assert_eq!(buckets[0], (64.0, 3));
        assert_eq!(buckets[1], (256.0, 1));
        assert_eq!(buckets[7], (1_048_576.0, 1));
        assert_eq!(
            buckets.len(),
            8,
            "the one above every bound is in the count only"
        );
    }
}
