//! Byte budgets: how many payload bytes a queue may hold, beside how many items.
//!
//! A queue bounded only in messages is bounded in memory only by the message size times its
//! length, and permessage-deflate makes messages cheap to send and large to hold: a few dozen
//! compressed bytes on the wire can become 10 kB in a queue. Every queue that holds payloads
//! (a session's outbound queue, a link's data queue) therefore also takes bytes from a
//! [`ByteBudget`] before it accepts a message, and gives them back once the message has left.
//!
//! A budget is a semaphore of bytes: senders take a message's length, and a sender that finds
//! too little waits on [`ByteBudget::poll_take`], which is how backpressure reaches it. A
//! message longer than the whole budget takes all of it, so it still passes, alone.
//! Configuration makes every budget at least `outer.max-frame-size`, so that case is only a
//! guard.

use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::PollSemaphore;

/// The bytes one queue may still accept. Cheap to clone; clones share the budget.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    bytes: Arc<Semaphore>,
    /// The whole budget: what a message longer than it costs.
    limit: u32,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> ByteBudget {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// What a payload of `len` bytes costs.
    fn cost(&self, len: usize) -> u32 {
        u32::try_from(len).unwrap_or(u32::MAX).min(self.limit)
    }

    /// Takes `len` bytes if the budget has them; never waits.
    pub fn try_take(&self, len: usize) -> bool {
        match self.bytes.try_acquire_many(self.cost(len)) {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives back what a payload of `len` bytes took, once it has left the queue.
    pub fn give_back(&self, len: usize) {
        let cost = self.cost(len);
        if cost > 0 {
            self.bytes.add_permits(cost as usize);
        }
    }

    /// Queues `item`, `len` payload bytes, on `tx` if this budget has the bytes and `tx` a free
    /// slot; never waits. A queue short of either hands the item back as `Full`; the bytes are
    /// taken only if the item is queued.
    pub fn try_send<T>(
        &self,
        tx: &mpsc::Sender<T>,
        item: T,
        len: usize,
    ) -> Result<(), TrySendError<T>> {
        if !self.try_take(len) {
            return Err(if tx.is_closed() {
                TrySendError::Closed(item)
            } else {
                TrySendError::Full(item)
            });
        }
        tx.try_send(item).inspect_err(|_| self.give_back(len))
    }

    /// Marks the queue as gone: waiters wake and learn it, and nothing more is taken.
    pub fn close(&self) {
        self.bytes.close();
    }

    /// Bytes the queue may still accept.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Bytes taken and not given back: what the queue holds, plus what parked senders were
    /// granted and have not queued yet.
    pub fn used(&self) -> usize {
        (self.limit as usize).saturating_sub(self.available())
    }

    /// A waiter for this budget, for a sender that found it short.
    pub fn waiter(&self) -> BudgetWaiter {
        BudgetWaiter {
            semaphore: PollSemaphore::new(Arc::clone(&self.bytes)),
            budget: self.clone(),
        }
    }
}

/// Waits until a budget has the bytes a parked message needs.
#[derive(Debug)]
pub struct BudgetWaiter {
    semaphore: PollSemaphore,
    budget: ByteBudget,
}

impl BudgetWaiter {
    /// Gives back what `len` bytes took, for a message that was not queued after all.
    pub fn give_back(&self, len: usize) {
        self.budget.give_back(len);
    }

    /// Ready once `len` bytes are taken from the budget (`true`), or once the queue is gone
    /// ([`ByteBudget::close`], `false`).
    pub fn poll_take(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<bool> {
        let cost = self.budget.cost(len);
        match self.semaphore.poll_acquire_many(cx, cost) {
            Poll::Ready(Some(permit)) => {
                permit.forget();
                Poll::Ready(true)
            }
            Poll::Ready(None) => Poll::Ready(false),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A session's queue: room for `outer.send-queue` messages and `outer.send-queue-bytes`
/// payload bytes, taken by every message except those that arrive under credit from another
/// node (credit has already reserved their room, see `credit`).
#[derive(Debug, Clone)]
pub struct QueueBudget {
    slots: ByteBudget,
    bytes: ByteBudget,
}

impl QueueBudget {
    /// Room for `slots` messages and `bytes` payload bytes.
    pub fn new(slots: usize, bytes: usize) -> QueueBudget {
        QueueBudget {
            slots: ByteBudget::new(slots),
            bytes: ByteBudget::new(bytes),
        }
    }

    /// Takes room for one message of `len` bytes if there is; never waits.
    pub fn try_take(&self, len: usize) -> bool {
        if !self.slots.try_take(1) {
            return false;
        }
        if !self.bytes.try_take(len) {
            self.slots.give_back(1);
            return false;
        }
        true
    }

    /// Gives back the room `messages` messages of `bytes` bytes in all took.
    pub fn give_back(&self, messages: usize, bytes: usize) {
        self.slots.give_back(messages);
        self.bytes.give_back(bytes);
    }

    /// Marks the queue as gone: waiters wake and learn it.
    pub fn close(&self) {
        self.slots.close();
        self.bytes.close();
    }

    /// A waiter for a sender that found too little room.
    pub fn waiter(&self) -> QueueWaiter {
        QueueWaiter {
            slots: self.slots.waiter(),
            bytes: self.bytes.waiter(),
            bytes_taken: false,
        }
    }
}

/// Waits until a queue has room for a parked message: its bytes first, then a slot.
#[derive(Debug)]
pub struct QueueWaiter {
    slots: BudgetWaiter,
    bytes: BudgetWaiter,
    bytes_taken: bool,
}

impl QueueWaiter {
    /// Ready once the room for a message of `len` bytes is taken (`true`), or the queue is
    /// gone (`false`). Bytes taken stay taken while the slot is awaited.
    pub fn poll_take(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<bool> {
        if !self.bytes_taken {
            match self.bytes.poll_take(cx, len) {
                Poll::Ready(true) => self.bytes_taken = true,
                other => return other,
            }
        }
        match self.slots.poll_take(cx, 1) {
            Poll::Ready(taken) => {
                if !taken {
                    self.bytes.give_back(len);
                }
                self.bytes_taken = false;
                Poll::Ready(taken)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Gives back what a message of `len` bytes holds of the room, when it is abandoned.
    pub fn abandon(&mut self, len: usize) {
        if std::mem::take(&mut self.bytes_taken) {
            self.bytes.give_back(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_until_short_and_refills_on_give_back() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_take(60));
        assert!(!budget.try_take(60));
        assert!(budget.try_take(40));
        budget.give_back(60);
        assert_eq!(budget.available(), 60);
    }

    #[test]
    fn a_message_longer_than_the_budget_takes_all_of_it() {
        let budget = ByteBudget::new(100);
        assert!(budget.try_take(1000));
        assert_eq!(budget.available(), 0);
        assert!(budget.try_take(0));
        budget.give_back(1000);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_bytes_come_back() {
        let budget = ByteBudget::new(10);
        assert!(budget.try_take(10));
        let mut waiter = budget.waiter();
        let taking = std::future::poll_fn(|cx| waiter.poll_take(cx, 5).map(|taken| assert!(taken)));
        let giving = async {
            tokio::task::yield_now().await;
            budget.give_back(5);
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(taking, giving)
        })
        .await
        .expect("the waiter is woken");
        assert_eq!(budget.available(), 0);
    }

    #[tokio::test]
    async fn closing_wakes_a_waiter_and_says_so() {
        let budget = ByteBudget::new(10);
        assert!(budget.try_take(10));
        let mut waiter = budget.waiter();
        let taking = std::future::poll_fn(|cx| waiter.poll_take(cx, 5));
        let closing = async {
            tokio::task::yield_now().await;
            budget.close();
        };
        let (taken, ()) = tokio::join!(taking, closing);
        assert!(!taken);
        assert!(!budget.try_take(0));
    }
}
