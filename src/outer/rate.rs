//! Per-session rate limits: how fast one client may send messages to its peer
//! (`outer.max-messages-per-second`, `outer.max-bytes-per-second`), how far ahead of that rate
//! it may run (`outer.rate-burst`), and when a message over it may pass.
//!
//! Each limit is a token bucket, kept as the moment it will be full again (GCRA, as the
//! `governor` crate keeps its buckets): a message of cost `c` (one message, or its bytes)
//! pushes that moment `c / rate` later, and fits while the moment stays at most one burst
//! ahead of now. A message larger than the whole burst (only a byte cost can be) fits once the
//! bucket is full and leaves it in debt: it is never refused for good, and the session pays
//! for it by waiting before the next one. So over any span `T` a session passes at most
//! `rate × (T + burst)`, plus the excess of one message larger than the burst.
//!
//! Not `governor` itself (which the per-address connection limit uses): its `check_n` refuses
//! a cost above the burst for good (`InsufficientCapacity`), and it waits with a future of its
//! own on a clock of its own, while a session needs the moment to wait for, to sleep on a
//! tokio timer inside `Session::poll_event` (and to test on tokio's paused clock).
//!
//! What the session does with a message that does not fit is `outer.rate-limit-action`: hold
//! it and stop reading its client until the moment comes (`Delivery::hold_until`), or close.
//! A session with no limit set keeps no limiter at all (`Option<Box<RateLimiter>>`, a null
//! pointer), and pays one branch per message.

use std::time::Duration;

use tokio::time::Instant;

use super::close::CloseReason;
use crate::config::{RateAction, RateLimits};
use crate::v1::frame;

/// Control frames (ACK, PEER) a wspair.v1 client may send beyond one per frame written to it
/// before they count against its limits: a few `sync`s of its own, when it connects and when
/// its retransmission timer fires.
const FREE_CONTROL_FRAMES: u64 = 64;

/// The limit a message went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `outer.max-messages-per-second`.
    Messages,
    /// `outer.max-bytes-per-second`.
    Bytes,
}

impl Limit {
    /// Why a session that went over this limit is closed (`outer.rate-limit-action = close`).
    pub fn close_reason(self) -> CloseReason {
        match self {
            Limit::Messages => CloseReason::MessageRate,
            Limit::Bytes => CloseReason::ByteRate,
        }
    }
}

/// One token bucket, as the moment it is full again.
#[derive(Debug)]
struct Bucket {
    /// Units (messages or bytes) earned per second.
    rate: u32,
    /// At or before now, the bucket is full; each unit taken pushes this `1 / rate` later.
    full_at: Instant,
}

impl Bucket {
    /// How long the rate takes to earn `units`, rounded up so that rounding never lets more
    /// through than the rate. At most 16 MiB at 1 unit/s: 194 days, well within `Instant`.
    fn time_for(&self, units: u64) -> Duration {
        let nanos = (u128::from(units) * 1_000_000_000).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// The first moment a message costing `cost` fits: when taking it leaves the bucket at
    /// most `burst` from full, or, for a message larger than the burst, when the bucket is
    /// full. `None`: long ago.
    fn fits_at(&self, cost: Duration, burst: Duration) -> Option<Instant> {
        (self.full_at + cost).checked_sub(burst.max(cost))
    }

    /// Takes `cost` as of `at`.
    fn take(&mut self, cost: Duration, at: Instant) {
        self.full_at = self.full_at.max(at) + cost;
    }
}

/// A session's buckets, and what it does over them.
#[derive(Debug)]
pub struct RateLimiter {
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    burst: Duration,
    action: RateAction,
    /// Control frames a wspair.v1 client sent that were not counted (see [`Self::counts_v1`]).
    free_control_frames: u64,
}

impl RateLimiter {
    /// The limiter for a session opening at `now`, with full buckets; `None` when no limit
    /// is set, so that a session without limits holds nothing.
    pub fn new(limits: &RateLimits, now: Instant) -> Option<Box<RateLimiter>> {
        if limits.is_off() {
            return None;
        }
        let bucket = |rate: u32| (rate > 0).then_some(Bucket { rate, full_at: now });
        Some(Box::new(RateLimiter {
            messages: bucket(limits.messages_per_second),
            bytes: bucket(limits.bytes_per_second),
            burst: limits.burst,
            action: limits.action,
            free_control_frames: 0,
        }))
    }

    /// What to do with a message that does not fit.
    pub fn action(&self) -> RateAction {
        self.action
    }

    /// Takes a message of `bytes` payload bytes, read at `now`, from the buckets. `None`: it
    /// passes now. Otherwise it passes at the moment returned, the first that every limit
    /// allows, and the limit named is the one that held it longest. Its cost is taken as of
    /// that moment, so the session must read nothing more until then, or, if it closes
    /// instead, never look at the limiter again.
    pub fn take(&mut self, bytes: usize, now: Instant) -> Option<(Instant, Limit)> {
        self.take_many(1, bytes, now)
    }

    /// As [`Self::take`], for `messages` messages of `bytes` bytes in all, arrived together
    /// (a wspair.v1 BATCH); with `messages` 0 (a free control frame) only the bytes count.
    pub fn take_many(
        &mut self,
        messages: u64,
        bytes: usize,
        now: Instant,
    ) -> Option<(Instant, Limit)> {
        let burst = self.burst;
        let message_cost = self
            .messages
            .as_ref()
            .filter(|_| messages > 0)
            .map(|bucket| bucket.time_for(messages));
        let byte_cost = self
            .bytes
            .as_ref()
            .map(|bucket| bucket.time_for(bytes as u64));
        let mut at = now;
        let mut held_by = None;
        for (bucket, cost, limit) in [
            (&self.messages, message_cost, Limit::Messages),
            (&self.bytes, byte_cost, Limit::Bytes),
        ] {
            if let (Some(bucket), Some(cost)) = (bucket, cost)
                && let Some(fits) = bucket.fits_at(cost, burst)
                && fits > at
            {
                at = fits;
                held_by = Some(limit);
            }
        }
        if let (Some(bucket), Some(cost)) = (&mut self.messages, message_cost) {
            bucket.take(cost, at);
        }
        if let (Some(bucket), Some(cost)) = (&mut self.bytes, byte_cost) {
            bucket.take(cost, at);
        }
        held_by.map(|limit| (at, limit))
    }

    /// How many messages a frame a wspair.v1 client sent counts for against its message rate
    /// (0: free of it; its bytes count whatever this says), `written` being the DATA and PEER
    /// frames of its peer written to it so far, each of a BATCH counted (not server frames, not
    /// flushes: a client must not buy free frames with requests the node answers).
    ///
    /// Each DATA counts, those of a BATCH included. ACK and PEER frames answer what the client
    /// receives (a library acknowledges what it delivered, and sends `sync` when its peer
    /// appears or syncs), so counting them would let a limit on what a client sends slow what
    /// it receives: they pass free of the message rate while the client has sent no more of
    /// them than frames it answers were written to it, plus [`FREE_CONTROL_FRAMES`]. Beyond
    /// that (a client flooding them) each counts as DATA.
    pub fn charge_v1(&mut self, frame: &[u8], written: u64) -> u64 {
        let control = |this: &mut Self| {
            if this.free_control_frames < written.saturating_add(FREE_CONTROL_FRAMES) {
                this.free_control_frames += 1;
                0
            } else {
                1
            }
        };
        match frame.first() {
            Some(&frame::ACK | &frame::PEER) => control(self),
            // The frame was checked when it was read.
            Some(&frame::BATCH) => frame::inner_frames(&frame[1..])
                .flatten()
                .map(|inner| match inner.first() {
                    Some(&frame::ACK) => control(self),
                    _ => 1,
                })
                .sum(),
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(messages: u32, bytes: u32, burst_ms: u64, start: Instant) -> Box<RateLimiter> {
        RateLimiter::new(
            &RateLimits {
                messages_per_second: messages,
                bytes_per_second: bytes,
                burst: Duration::from_millis(burst_ms),
                action: RateAction::Throttle,
            },
            start,
        )
        .expect("a limit is set")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// What a session with limits holds besides its pointer (the README says 80 bytes).
    #[test]
    fn a_limiter_is_small() {
        assert!(
            size_of::<RateLimiter>() <= 80,
            "{}",
            size_of::<RateLimiter>()
        );
    }

    #[test]
    fn no_limit_no_limiter() {
        let limits = RateLimits {
            messages_per_second: 0,
            bytes_per_second: 0,
            burst: ms(1000),
            action: RateAction::Close,
        };
        assert!(RateLimiter::new(&limits, Instant::now()).is_none());
    }

    #[test]
    fn a_full_burst_passes_at_once_and_then_one_message_per_interval() {
        let t0 = Instant::now();
        let mut rate = limiter(10, 0, 1000, t0);
        for _ in 0..10 {
            assert_eq!(rate.take(5, t0), None);
        }
        // The eleventh waits for one interval; held, it takes its place.
        assert_eq!(rate.take(5, t0), Some((t0 + ms(100), Limit::Messages)));
        // The next, read once the held one passed, waits one interval more.
        assert_eq!(
            rate.take(5, t0 + ms(100)),
            Some((t0 + ms(200), Limit::Messages))
        );
        // Read late, it passes at once.
        assert_eq!(rate.take(5, t0 + ms(350)), None);
    }

    #[test]
    fn a_quiet_spell_refills_one_burst_at_most() {
        let t0 = Instant::now();
        let mut rate = limiter(10, 0, 500, t0);
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(rate.take(1, later), None);
        }
        assert_eq!(
            rate.take(1, later),
            Some((later + ms(100), Limit::Messages))
        );
    }

    #[test]
    fn bytes_are_counted_by_size() {
        let t0 = Instant::now();
        let mut rate = limiter(0, 1000, 1000, t0);
        assert_eq!(rate.take(600, t0), None);
        assert_eq!(rate.take(400, t0), None);
        assert_eq!(rate.take(100, t0), Some((t0 + ms(100), Limit::Bytes)));
    }

    #[test]
    fn a_message_larger_than_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() {
        let t0 = Instant::now();
        let mut rate = limiter(0, 100, 1000, t0);
        // 250 bytes against a burst of 100: passes on a full bucket, 1.5 s in debt.
        assert_eq!(rate.take(250, t0), None);
        // The next small one waits for the debt and its own cost: 2.5 s + 0.1 s − 1 s.
        assert_eq!(rate.take(10, t0), Some((t0 + ms(1600), Limit::Bytes)));
        // A large one after some use waits until the bucket is full again.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(rate.take(50, t1), None);
        assert_eq!(rate.take(250, t1), Some((t1 + ms(500), Limit::Bytes)));
    }

    #[test]
    fn the_later_limit_decides_and_both_take_as_of_then() {
        let t0 = Instant::now();
        // 10 messages/s, 100 bytes/s, both with a burst of 1 s.
        let mut rate = limiter(10, 100, 1000, t0);
        assert_eq!(rate.take(100, t0), None);
        // The message bucket has room; the byte bucket is empty for 50 more bytes: 500 ms.
        assert_eq!(rate.take(50, t0), Some((t0 + ms(500), Limit::Bytes)));
        // The message bucket refilled meanwhile: nine more fit beside the held one.
        for _ in 0..9 {
            assert_eq!(rate.take(0, t0 + ms(500)), None);
        }
        assert_eq!(
            rate.take(0, t0 + ms(500)),
            Some((t0 + ms(600), Limit::Messages))
        );
    }

    #[test]
    fn high_byte_rates_do_not_round_to_free() {
        let t0 = Instant::now();
        // 3 GB/s: a third of a nanosecond a byte, rounded up per message.
        let mut rate = limiter(0, 3_000_000_000, 1, t0);
        let mut passed = 0u64;
        while rate.take(1000, t0).is_none() {
            passed += 1000;
        }
        assert!(passed <= 3_000_000, "{passed} bytes passed in a 1 ms burst");
        assert!(passed >= 2_900_000, "{passed} bytes passed in a 1 ms burst");
    }

    #[test]
    fn v1_control_frames_are_free_while_they_answer_what_was_written() {
        let mut rate = limiter(10, 0, 1000, Instant::now());
        assert_eq!(rate.charge_v1(&[frame::DATA_BINARY, 1, 7], 0), 1);
        assert_eq!(rate.charge_v1(&[frame::DATA_TEXT, 0], 1000), 1);
        for _ in 0..FREE_CONTROL_FRAMES + 10 {
            assert_eq!(rate.charge_v1(&[frame::ACK, 0], 10), 0);
        }
        assert_eq!(rate.charge_v1(&[frame::PEER, b'{'], 10), 1);
        assert_eq!(rate.charge_v1(&[frame::PEER, b'{'], 11), 0);
    }

    #[test]
    fn each_data_of_a_batch_counts_and_its_acks_are_control_frames() {
        let mut rate = limiter(10, 0, 1000, Instant::now());
        let ack = [frame::ACK, 0, 0, 0, 0, 0, 0, 0, 9, 5];
        let mut batch = vec![frame::BATCH];
        for seq in 1..=3 {
            batch.extend_from_slice(&[3, frame::DATA_BINARY, seq, 7]);
        }
        batch.push(ack.len() as u8);
        batch.extend_from_slice(&ack);
        assert_eq!(rate.charge_v1(&batch, 0), 3, "three DATA, one free ACK");
        assert_eq!(rate.take_many(3, batch.len(), Instant::now()), None);
        let mut acks = vec![frame::BATCH];
        for _ in 0..FREE_CONTROL_FRAMES + 1 {
            acks.push(ack.len() as u8);
            acks.extend_from_slice(&ack);
        }
        assert_eq!(rate.charge_v1(&acks, 0), 2, "past the free allowance");
    }
}
