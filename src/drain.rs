//! Drain: how a node moves its clients away before it stops, or before an operator takes it out
//! of service without stopping it (PROTOCOL.md §9).
//!
//! A drain starts on SIGINT or SIGTERM, or from the admin API (`POST /admin/drain`), once:
//! new upgrades are refused with 503, and each v1 session is sent `goaway` at a random moment
//! within `drain.spread`, so its client reconnects to another node and resumes there, without
//! all of them reconnecting in the same instant. A v1 session ends when its client's new
//! connection takes its slot. Raw clients cannot resume: with `drain.raw = "close"` (the
//! default) they are closed with 1001 at once, as they always were; with `"wait"` they are left
//! to end on their own. The drain is over when no session is left, or after `drain.timeout`;
//! a stopping node then closes whatever remains with 1001. A node drained from the admin API
//! keeps running, refusing upgrades, with whatever sessions remain, until it is stopped.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::DrainConfig;
use crate::hub::{Hub, SessionHandle};

/// How often the drain looks for sessions that are left, and for v1 sessions that appeared
/// since it began (a claim that was already running).
const LOOK_INTERVAL: Duration = Duration::from_millis(50);

/// A node's drain: started at most once, watched by the admin API, awaited by the shutdown.
#[derive(Debug)]
pub struct Drain {
    config: DrainConfig,
    /// Cancelled when the drain starts: upgrades are refused from then on, and sessions
    /// stopped from then on close with 1001.
    pub draining: CancellationToken,
    started_at: Mutex<Option<Instant>>,
    done: AtomicBool,
    finished: Notify,
    v1_left: AtomicU64,
    raw_left: AtomicU64,
    goaway_sent: AtomicU64,
}

/// Where a drain stands, for `GET /admin/drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainProgress {
    /// Whether a drain was started.
    pub started: bool,
    /// How long ago it started.
    pub elapsed: Duration,
    /// Whether it is over (no session left, or `drain.timeout` passed).
    pub done: bool,
    /// v1 sessions still on this node at the last look.
    pub v1_left: u64,
    /// Raw sessions still on this node at the last look.
    pub raw_left: u64,
    /// v1 sessions sent `goaway` so far.
    pub goaway_sent: u64,
}

impl Drain {
    /// A drain that has not started.
    pub fn new(config: DrainConfig) -> Drain {
        Drain {
            config,
            draining: CancellationToken::new(),
            started_at: Mutex::new(None),
            done: AtomicBool::new(false),
            finished: Notify::new(),
            v1_left: AtomicU64::new(0),
            raw_left: AtomicU64::new(0),
            goaway_sent: AtomicU64::new(0),
        }
    }

    /// Starts the drain in a task of its own unless it has started already; returns whether
    /// this call started it.
    pub fn start(self: &Arc<Self>, hub: Arc<Hub>) -> bool {
        self.start_with(hub, self.config.wait_for_raw)
    }

    /// As [`Drain::start`], waiting for raw sessions or closing them as `wait_for_raw` says
    /// rather than as `drain.raw` does (`POST /admin/drain?raw=wait`).
    pub fn start_with(self: &Arc<Self>, hub: Arc<Hub>, wait_for_raw: bool) -> bool {
        {
            let mut started = self.started_at.lock().unwrap_or_else(|p| p.into_inner());
            if started.is_some() {
                return false;
            }
            *started = Some(Instant::now());
        }
        self.draining.cancel();
        let drain = Arc::clone(self);
        tokio::spawn(async move {
            drain.run(&hub, wait_for_raw).await;
            drain.done.store(true, Ordering::Release);
            drain.finished.notify_waiters();
        });
        true
    }

    /// Returns once the drain is over; starts it first if needed.
    pub async fn finish(self: &Arc<Self>, hub: Arc<Hub>) {
        let finished = self.finished.notified();
        tokio::pin!(finished);
        finished.as_mut().enable();
        self.start(hub);
        if !self.done.load(Ordering::Acquire) {
            finished.await;
        }
    }

    /// Where the drain stands.
    pub fn progress(&self) -> DrainProgress {
        let started_at = *self.started_at.lock().unwrap_or_else(|p| p.into_inner());
        DrainProgress {
            started: started_at.is_some(),
            elapsed: started_at.map_or(Duration::ZERO, |at| at.elapsed()),
            done: self.done.load(Ordering::Acquire),
            v1_left: self.v1_left.load(Ordering::Relaxed),
            raw_left: self.raw_left.load(Ordering::Relaxed),
            goaway_sent: self.goaway_sent.load(Ordering::Relaxed),
        }
    }

    /// Drains `hub` (see the module docs); returns once no session is left or
    /// `drain.timeout` has passed.
    async fn run(&self, hub: &Hub, wait_for_raw: bool) {
        let config = self.config;
        let start = Instant::now();
        let deadline = start + config.timeout;
        let mut told = HashSet::new();
        let mut schedule = Vec::new();
        let spread_ms = u64::try_from(config.spread.as_millis()).unwrap_or(u64::MAX);
        let mut first = true;
        loop {
            let (v1, raw) = sessions(hub, !wait_for_raw);
            self.v1_left.store(v1.len() as u64, Ordering::Relaxed);
            self.raw_left.store(raw, Ordering::Relaxed);
            if first {
                info!(v1_sessions = v1.len(), raw_sessions = raw, spread = ?config.spread,
                    "draining: asking v1 clients to move");
            }
            for handle in v1 {
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
            first = false;
            let now = Instant::now();
            schedule.retain(|(at, handle)| {
                if *at > now {
                    return true;
                }
                if let Some(watch) = &handle.watch {
                    watch.goaway();
                    self.goaway_sent.fetch_add(1, Ordering::Relaxed);
                }
                false
            });
            let (v1_left, raw_left) = (
                self.v1_left.load(Ordering::Relaxed),
                self.raw_left.load(Ordering::Relaxed),
            );
            if v1_left + raw_left == 0 || now >= deadline {
                info!(v1_left, raw_left, told = told.len(), waited = ?now.duration_since(start),
                    "drain over");
                return;
            }
            tokio::time::sleep(LOOK_INTERVAL.min(deadline - now)).await;
        }
    }
}

/// The live v1 sessions of `hub` and the number of raw ones; with `close_raw`, every raw one
/// is stopped on the way (it closes with 1001) and not counted.
fn sessions(hub: &Hub, close_raw: bool) -> (Vec<SessionHandle>, u64) {
    let mut v1 = Vec::new();
    let mut raw = 0;
    hub.for_each_local(|_, _, handle| {
        if handle.watch.is_some() {
            v1.push(handle.clone());
        } else if close_raw {
            handle.stop.cancel();
        } else {
            raw += 1;
        }
    });
    (v1, raw)
}

/// A random number in `0..bound`.
fn random_below(bound: u64) -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    u64::from_le_bytes(bytes) % bound
}
