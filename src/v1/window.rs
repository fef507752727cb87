//! The end-to-end window a node enforces on its v1 client (PROTOCOL.md §7): at most `msgs`
//! numbered messages, and `bytes` of their payloads, sent and not acknowledged.
//!
//! The node sees both ends of the count: the client's DATA as it reads them, and the peer's
//! ACKs for the client's stream as it writes them to the client, so its view of what is
//! acknowledged is never behind the client's. A client that reconnected states in its `sync`
//! what it has outstanding; the sizes of messages sent on an earlier connection are learnt when
//! they are resent (until then they count as empty), so the node is never stricter than the
//! client's own library.

use std::collections::VecDeque;

use super::frame::SyncPositions;

/// Why a client is closed with 4008.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Numbered DATA before the client's `sync` on this connection.
    #[error("numbered DATA before sync")]
    NoSync,
    /// A position beyond the next new one.
    #[error("DATA skipped ahead to {seq} (next is {next})")]
    Skip {
        /// The position sent.
        seq: u64,
        /// The position expected at most.
        next: u64,
    },
    /// More messages or bytes outstanding than the window allows.
    #[error("window exceeded: {msgs} messages, {bytes} bytes unacknowledged")]
    Exceeded {
        /// Messages outstanding.
        msgs: u64,
        /// Payload bytes outstanding (of those the node saw).
        bytes: u64,
    },
}

/// What one v1 session's client has outstanding.
#[derive(Debug)]
pub struct Window {
    max_msgs: u64,
    max_bytes: u64,
    synced: bool,
    /// Every position up to this one is acknowledged.
    acked: u64,
    /// The position of the next new message.
    next: u64,
    /// Payload sizes of positions `acked + 1 .. next`, 0 while unknown.
    sizes: VecDeque<u32>,
    bytes: u64,
}

impl Window {
    /// A window of `max_msgs` messages and `max_bytes` payload bytes.
    pub fn new(max_msgs: u32, max_bytes: u64) -> Window {
        Window {
            max_msgs: u64::from(max_msgs),
            max_bytes,
            synced: false,
            acked: 0,
            next: 1,
            sizes: VecDeque::new(),
            bytes: 0,
        }
    }

    /// The client's own `sync`: what it has outstanding.
    pub fn on_sync(&mut self, positions: SyncPositions) -> Result<(), Violation> {
        self.synced = true;
        if positions.next > self.next {
            let unseen = positions.next - self.next;
            // More than a window unacknowledged is refused below before anything is stored.
            if unseen <= self.max_msgs + 1 {
                self.sizes.extend((0..unseen).map(|_| 0));
            }
            self.next = positions.next;
        }
        self.acknowledge(positions.base - 1);
        self.check()
    }

    /// The peer acknowledged the client's stream up to `hw` (the ACK is being written to
    /// the client). Before the client's `sync` on this connection nothing is counted: the
    /// `sync` states what the client has outstanding, ACKs it had received included. An ACK
    /// beyond what the client sent is taken for all it sent, never more.
    pub fn on_ack(&mut self, hw: u64) {
        if self.synced {
            self.acknowledge(hw.min(self.next - 1));
        }
    }

    /// The client sent DATA at `seq` with `len` payload bytes.
    pub fn on_data(&mut self, seq: u64, len: usize) -> Result<(), Violation> {
        if seq == 0 {
            return Ok(());
        }
        if !self.synced {
            return Err(Violation::NoSync);
        }
        if seq <= self.acked {
            return Ok(());
        }
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        if seq < self.next {
            let index = (seq - self.acked - 1) as usize;
            if let Some(size) = self.sizes.get_mut(index)
                && *size == 0
            {
                *size = len;
                self.bytes += u64::from(len);
            }
        } else if seq == self.next {
            self.sizes.push_back(len);
            self.bytes += u64::from(len);
            self.next += 1;
        } else {
            return Err(Violation::Skip {
                seq,
                next: self.next,
            });
        }
        self.check()
    }

    fn acknowledge(&mut self, hw: u64) {
        if hw <= self.acked {
            return;
        }
        // Sizes are kept for positions the node saw only: one pop per size, never one step
        // per position (a `sync` may state any position).
        let known =
            usize::try_from(hw - self.acked).map_or(self.sizes.len(), |n| n.min(self.sizes.len()));
        for size in self.sizes.drain(..known) {
            self.bytes -= u64::from(size);
        }
        self.acked = hw;
        if self.sizes.is_empty() && self.sizes.capacity() > 64 {
            self.sizes = VecDeque::new();
        }
    }

    fn check(&self) -> Result<(), Violation> {
        let msgs = self.next - 1 - self.acked;
        let too_many = msgs > self.max_msgs;
        // One message alone may be as large as a frame may be.
        let too_big = self.bytes > self.max_bytes && msgs > 1;
        if too_many || too_big {
            return Err(Violation::Exceeded {
                msgs,
                bytes: self.bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synced(msgs: u32, bytes: u64) -> Window {
        let mut window = Window::new(msgs, bytes);
        window.on_sync(SyncPositions { base: 1, next: 1 }).unwrap();
        window
    }

    #[test]
    fn numbered_data_needs_a_sync_first_but_unnumbered_does_not() {
        let mut window = Window::new(4, 100);
        assert_eq!(window.on_data(0, 10), Ok(()));
        assert_eq!(window.on_data(1, 10), Err(Violation::NoSync));
    }

    #[test]
    fn the_window_closes_at_its_message_count_and_acks_reopen_it() {
        let mut window = synced(2, 1000);
        window.on_data(1, 1).unwrap();
        window.on_data(2, 1).unwrap();
        assert!(matches!(
            window.on_data(3, 1),
            Err(Violation::Exceeded { msgs: 3, .. })
        ));
        let mut window = synced(2, 1000);
        window.on_data(1, 1).unwrap();
        window.on_data(2, 1).unwrap();
        window.on_ack(1);
        assert_eq!(window.on_data(3, 1), Ok(()));
        // A resend of an acknowledged or outstanding message adds nothing.
        assert_eq!(window.on_data(1, 1), Ok(()));
        assert_eq!(window.on_data(3, 1), Ok(()));
    }

    #[test]
    fn the_window_closes_at_its_bytes_but_one_message_may_fill_it_alone() {
        let mut window = synced(10, 100);
        assert_eq!(window.on_data(1, 150), Ok(()));
        assert!(window.on_data(2, 1).is_err());
        let mut window = synced(10, 100);
        window.on_data(1, 60).unwrap();
        window.on_ack(1);
        window.on_data(2, 60).unwrap();
        assert!(matches!(
            window.on_data(3, 60),
            Err(Violation::Exceeded { bytes: 120, .. })
        ));
    }

    #[test]
    fn skipping_ahead_is_a_violation() {
        let mut window = synced(10, 100);
        assert_eq!(
            window.on_data(2, 1),
            Err(Violation::Skip { seq: 2, next: 1 })
        );
    }

    #[test]
    fn a_resumed_client_states_its_outstanding_messages_and_resends_them() {
        let mut window = Window::new(4, 100);
        window.on_ack(40);
        window
            .on_sync(SyncPositions { base: 41, next: 44 })
            .unwrap();
        // Sent on an earlier connection: sizes learnt as they are resent.
        window.on_data(41, 30).unwrap();
        window.on_data(42, 30).unwrap();
        window.on_data(44, 30).unwrap();
        assert!(window.on_data(45, 1).is_err());
        let mut window = Window::new(4, 100);
        assert!(window.on_sync(SyncPositions { base: 1, next: 10 }).is_err());
    }

    #[test]
    fn an_ack_beyond_what_was_sent_cannot_open_the_window_ahead() {
        let mut window = synced(2, 1000);
        window.on_data(1, 1).unwrap();
        window.on_ack(1_000);
        window.on_data(2, 1).unwrap();
        window.on_data(3, 1).unwrap();
        assert!(window.on_data(4, 1).is_err());
    }

    /// A client's own `sync` stating a position far ahead, with nothing outstanding
    /// (`base == next`), must be handled at once: the node acknowledges up to `base - 1` one
    /// position at a time, so a single frame of ~60 bytes keeps a worker busy for ages.
    #[test]
    fn a_sync_far_ahead_is_handled_at_once() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut window = Window::new(1024, 1 << 20);
            let far = 1u64 << 40;
            let outcome = window.on_sync(SyncPositions {
                base: far,
                next: far,
            });
            let _ = done_tx.send(outcome);
        });
        let outcome = done_rx.recv_timeout(std::time::Duration::from_secs(2));
        assert!(
            outcome.is_ok(),
            "Window::on_sync with base = next = 2^40 did not return within 2 s (it counts up one position at a time)"
        );
    }

    /// An ACK relayed to a client before its own `sync` (the peer can send one for any sid)
    /// with `hw` = 2^64 - 1 must neither panic nor switch the window off.
    #[test]
    fn an_ack_of_the_largest_mark_before_sync_keeps_the_window() {
        let outcome = std::panic::catch_unwind(|| {
            let mut window = Window::new(2, 1000);
            window.on_ack(u64::MAX);
            window.on_sync(SyncPositions { base: 1, next: 1 }).unwrap();
            let mut results = Vec::new();
            for seq in 1..=3 {
                results.push(window.on_data(seq, 1));
            }
            results
        });
        let results =
            outcome.expect("Window::on_ack(u64::MAX) before sync panicked (overflow of acked + 1)");
        assert!(
            results[2].is_err(),
            "a third unacknowledged message fits a window of 2: {results:?}"
        );
    }
}
