//! Reconnect delays and the randomness the client needs.
//!
//! Exponential backoff with full jitter (PROTOCOL.md §11): the n-th delay is drawn uniformly
//! from zero to `min(max, min * 2^n)`, so that clients that lost the same node do not come back
//! in step.

use std::time::Duration;

/// A random u64 from the operating system.
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    u64::from_le_bytes(bytes)
}

/// A random client key: 128 bits only this client knows (PROTOCOL.md §1).
pub(crate) fn random_key() -> u128 {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    u128::from_le_bytes(bytes)
}

/// The delay sequence of one run of failed attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    attempts: u32,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempts: 0,
        }
    }

    /// The upper bound of the next delay, before jitter.
    pub(crate) fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempts.min(20);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The next delay: uniform in `0..=ceiling`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempts = self.attempts.saturating_add(1);
        let nanos = ceiling.as_nanos() as u64;
        Duration::from_nanos(random_u64() % nanos.saturating_add(1))
    }

    /// A connection succeeded: the next failure starts from `min` again.
    pub(crate) fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            ceilings.push(b.ceiling().as_millis());
            let d = b.next_delay();
            assert!(d <= Duration::from_millis(*ceilings.last().unwrap() as u64));
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn sids_are_never_zero() {
        for _ in 0..100 {
            assert_ne!(crate::frame::sid_of_key(random_key()), 0);
        }
    }
}
