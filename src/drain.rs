//! Drain: how a stopping node moves its wspair.v1 clients to other nodes before it closes what
//! is left (PROTOCOL.md §9).
//!
//! On SIGINT or SIGTERM the node first drains: new upgrades are refused with 503, raw sessions
//! are closed with 1001 at once (as they always were), and each v1 session is sent `goaway` at
//! a random moment within `drain.spread`, so its client reconnects to another node and resumes
//! there, without all of them reconnecting in the same instant. A v1 session ends when its
//! client's new connection takes its slot. The drain ends when no session is left, or after
//! `drain.timeout`; the shutdown then closes whatever remains with 1001.

use std::collections::HashSet;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::DrainConfig;
use crate::hub::{Hub, SessionHandle};

/// How often the drain looks for sessions that are left, and for v1 sessions that appeared
/// since it began (a claim that was already running).
const LOOK_INTERVAL: Duration = Duration::from_millis(50);

/// Drains the node's sessions (see the module docs); returns once none is left or
/// `config.timeout` has passed. `draining` is cancelled first: upgrades are refused from then
/// on, and sessions stopped from then on close with 1001.
pub async fn drain(hub: &Hub, config: DrainConfig, draining: &CancellationToken) {
    draining.cancel();
    let start = Instant::now();
    let deadline = start + config.timeout;
    let mut told = HashSet::new();
    let mut schedule = Vec::new();
    let spread_ms = u64::try_from(config.spread.as_millis()).unwrap_or(u64::MAX);
    let mut first = true;
    loop {
        let mut left = 0;
        for handle in v1_sessions_closing_raw(hub) {
            left += 1;
            if told.insert(handle.id) {
                // Sessions found at the start are spread; a late one is told at once.
                let offset = if first && spread_ms > 0 {
                    Duration::from_millis(random_below(spread_ms))
                } else {
                    Duration::ZERO
                };
                schedule.push((start + offset, handle));
            }
        }
        if first {
            info!(v1_sessions = left, spread = ?config.spread, "draining: asking v1 clients to move");
            first = false;
        }
        let now = Instant::now();
        schedule.retain(|(at, handle)| {
            if *at > now {
                return true;
            }
            if let Some(watch) = &handle.watch {
                watch.goaway();
            }
            false
        });
        if left == 0 || now >= deadline {
            info!(left, waited = ?now.duration_since(start), "drain over");
            return;
        }
        tokio::time::sleep(LOOK_INTERVAL.min(deadline - now)).await;
    }
}

/// The live v1 sessions of `hub`; every raw one is stopped on the way (it closes with 1001).
fn v1_sessions_closing_raw(hub: &Hub) -> Vec<SessionHandle> {
    let mut v1 = Vec::new();
    hub.for_each_local(|_, _, handle| {
        if handle.watch.is_some() {
            v1.push(handle.clone());
        } else {
            handle.stop.cancel();
        }
    });
    v1
}

/// A random number in `0..bound`.
fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    u64::from_le_bytes(bytes) % bound
}
