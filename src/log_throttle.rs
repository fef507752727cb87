//! Warnings that repeat: in an outage one cause can make thousands of them (a release that
//! fails for every session closing while Redis is down, a heartbeat a second, a refused
//! connection per attempt). [`warn_throttled!`](crate::warn_throttled) writes at most one line
//! per call site every [`INTERVAL`], with `suppressed`: how many were left out since the last
//! line, so the log says how bad it was without saying it ten thousand times.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The least time between two lines of one call site.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// One call site's memory: when it last wrote, and what it left out since.
#[derive(Debug)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl Throttle {
    /// A call site that has not written yet.
    pub const fn new() -> Throttle {
        Throttle {
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written at `now`: `Some(n)` with the lines left out since the
    /// last one (which this one stands for too), or `None` when it is too soon.
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| now.duration_since(at) < INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }

    /// [`Throttle::allow_at`] now.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

/// `tracing::warn!` at most once per [`INTERVAL`] from this call site, with a `suppressed`
/// field counting the lines left out before it.
#[macro_export]
macro_rules! warn_throttled {
    ($($arg:tt)+) => {{
        static THROTTLE: $crate::log_throttle::Throttle = $crate::log_throttle::Throttle::new();
        if let Some(suppressed) = THROTTLE.allow() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_carries_the_count_of_those_left_out() {
        let throttle = Throttle::new();
        let start = Instant::now();
        assert_eq!(throttle.allow_at(start), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(throttle.allow_at(start + Duration::from_millis(ms)), None);
        }
        assert_eq!(throttle.allow_at(start + INTERVAL), Some(3));
        assert_eq!(throttle.allow_at(start + INTERVAL * 3), Some(0));
    }
}
