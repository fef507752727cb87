//! Credit between sessions on different nodes: how many messages a sender may have in flight
//! to a receiver, so that a link never waits on a session and a receiver's queue never
//! overflows.
//!
//! Credit is **absolute** and **per pair of incarnations**, as QUIC's `MAX_STREAM_DATA`: the
//! receiving session R tells the sending session S "you may have sent up to `limit` messages
//! to me". Every data frame carries its position (`seq`, 1 for S's first message to R). A
//! lost, repeated or late credit frame can therefore neither shrink nor inflate a window (the
//! sender keeps the largest limit it heard), and credit meant for one incarnation never
//! reaches another: a reconnected client is a new incarnation whose window starts at 0.
//!
//! The receiver decides ([`Ledger`]). Its window (the node's credit window, which fits the
//! session's queue) is shared by every sender incarnation it has granted: an old one that may
//! still have messages in flight keeps its share until it has ended (its `Unbound` says how
//! many it sent) and those messages were written, or its node died. Whatever is free goes to
//! the current sender. So however often the other side reconnects, the messages granted and
//! not yet written never exceed the window.
//!
//! Losses are found, not assumed away: a gap in positions means frames were lost between the
//! nodes (a link broke); a sender that has waited for credit for a while sends its position
//! (`Sent`, behind its data on the same queue), and the receiver counts what it never got as
//! lost, credits it, and answers with its limit. That also repairs a credit frame that was
//! lost, and a window after a node rejoins the cluster.
//!
//! The sending side ([`Grant`]) is a semaphore of the messages still allowed, so a sender
//! waiting for credit is woken by the frame that brings it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::node::{Incarnation, NodeId};

/// Credit announced to a sender in one frame, at most: larger windows are returned in batches
/// of this many, so a fast pair sends one credit frame per 32 messages.
const CREDIT_BATCH: u64 = 32;

/// How long an ended account waits for frames still on the way, from its `Unbound` (which says
/// how many its sender sent): they may be queued behind other data, or lost with a link. Then
/// the account ends at what arrived, and what the sender said it sent beyond that is counted
/// lost.
pub const SETTLE_GRACE: Duration = Duration::from_secs(3);

/// How long an account whose sender is no longer the peer, and has not said it ended, keeps its
/// share by default: the longest a claim that displaced it can take (`outer.handshake-timeout`,
/// 10 s by default) and a second, because until that claim has its 101 the displaced sender
/// still runs and may send within its limit, and if the claim fails it is the peer again.
/// Nodes pass their own (see [`CreditState::new`]), adding `registry.timeout` for a failed
/// claim's give-back. The `Unbound` of a sender that ended normally comes long before; this
/// covers one lost with a link, or a session that gave up before binding here (a claim whose
/// upgrade failed, known to this node only through the registry).
pub const DEFAULT_SUPERSEDED_GRACE: Duration = Duration::from_secs(11);

/// Most messages a sender accepts permission for beyond what it has sent: a guard against a
/// corrupt or hostile limit, far above any window a configuration allows.
const MAX_AHEAD: u64 = 1 << 24;

/// A sender's window towards one remote incarnation.
#[derive(Debug)]
pub struct Grant {
    /// The receiving session.
    pub receiver: Incarnation,
    limit: AtomicU64,
    /// Positions taken (a message parked for room in the link's queue has one).
    sent: AtomicU64,
    /// The highest position handed to the link's queue: what a `Sent` may claim.
    queued: AtomicU64,
    answered_limit: AtomicU64,
    answered_position: AtomicU64,
    permits: Arc<Semaphore>,
}

impl Grant {
    fn new(receiver: Incarnation) -> Grant {
        Grant {
            receiver,
            limit: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            answered_limit: AtomicU64::new(0),
            answered_position: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new(0)),
        }
    }

    /// A grant that carries on from `revoked`'s positions.
    fn resume(revoked: &Grant) -> Grant {
        let sent = revoked.sent();
        let limit = revoked.limit.load(Ordering::Acquire).max(sent);
        Grant {
            receiver: revoked.receiver,
            limit: AtomicU64::new(limit),
            sent: AtomicU64::new(sent),
            queued: AtomicU64::new(revoked.queued.load(Ordering::Acquire)),
            answered_limit: AtomicU64::new(0),
            answered_position: AtomicU64::new(0),
            permits: Arc::new(Semaphore::new((limit - sent) as usize)),
        }
    }

    /// Raises the limit to `limit` if it is higher; a lower or repeated one changes nothing.
    fn raise(&self, limit: u64) {
        let limit = limit.min(self.sent.load(Ordering::Acquire) + MAX_AHEAD);
        let previous = self.limit.fetch_max(limit, Ordering::AcqRel);
        if limit > previous {
            self.permits.add_permits((limit - previous) as usize);
        }
    }

    /// Takes one message's credit and returns its position, if any is left. Only the one
    /// session that owns this grant sends on it.
    pub fn try_take(&self) -> Option<u64> {
        let permit = self.permits.try_acquire().ok()?;
        permit.forget();
        Some(self.advance())
    }

    /// The position of a message whose credit a waiter acquired (and forgot) itself.
    pub fn advance(&self) -> u64 {
        self.sent.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Gives back the credit and position of the last message taken, which was never sent.
    pub fn untake(&self) {
        self.sent.fetch_sub(1, Ordering::AcqRel);
        self.permits.add_permits(1);
    }

    /// Messages sent on this grant.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Notes that the message at `seq` is in the link's queue.
    pub fn queued(&self, seq: u64) {
        self.queued.fetch_max(seq, Ordering::AcqRel);
    }

    /// The position a `Sent` may claim: every message up to it is in the link's queue or
    /// beyond, so one that does not arrive was lost.
    pub fn position(&self) -> u64 {
        self.queued.load(Ordering::Acquire)
    }

    /// The semaphore a sender waiting for credit polls.
    pub fn permits(&self) -> Arc<Semaphore> {
        Arc::clone(&self.permits)
    }

    /// True once a grant for another receiver replaced this one; wakes its waiter.
    pub fn is_closed(&self) -> bool {
        self.permits.is_closed()
    }
}

/// Credit to announce: `limit` for the sending session `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreditDue {
    /// The sending session.
    pub to: Incarnation,
    /// The absolute limit.
    pub limit: u64,
}

/// What a receiving session knows of one sender incarnation.
#[derive(Debug)]
struct Account {
    sender: Incarnation,
    /// Messages the sender may have sent in total.
    limit: u64,
    /// The last limit announced.
    told: u64,
    /// Highest position received.
    received: u64,
    /// Positions done with: written to the client, or found lost.
    settled: u64,
    /// The sender's last position once it has ended (or its node died): nothing beyond it
    /// will come, and credit beyond it is free again.
    ended_at: Option<u64>,
    /// When this account stops waiting for frames on the way (see [`SETTLE_GRACE`] and
    /// [`DEFAULT_SUPERSEDED_GRACE`]); set once it is no longer the peer's.
    deadline: Option<Instant>,
    /// False until a frame from the sender told where it stands. A new sender starts at 0, but
    /// one this session forgot (its node timed out and came back) does not, and the two cannot
    /// be told apart when the account opens: the first data or `Sent` frame says.
    synced: bool,
}

impl Account {
    fn new(sender: Incarnation) -> Account {
        Account {
            sender,
            limit: 0,
            told: 0,
            received: 0,
            settled: 0,
            ended_at: None,
            deadline: None,
            synced: false,
        }
    }

    /// Credit granted and not yet settled: messages in flight or in the queue, and
    /// permission not yet used.
    fn outstanding(&self) -> u64 {
        let cap = self.ended_at.map_or(self.limit, |end| end.min(self.limit));
        cap.saturating_sub(self.settled)
    }

    /// Learns the sender's position before its next frame, for an account opened blind.
    /// Saturating: a corrupt position cannot overflow the arithmetic.
    fn sync(&mut self, position: u64) {
        if !self.synced {
            self.synced = true;
            if position > self.received {
                let shift = position - self.received;
                self.received = position;
                self.settled = self.settled.saturating_add(shift);
                self.limit = self.limit.saturating_add(shift);
            }
        }
    }

    /// Takes positions up to `position` as reached, those not received as lost; returns them.
    fn settle_to(&mut self, position: u64) -> u64 {
        let lost = position.saturating_sub(self.received);
        self.received += lost;
        self.settled = self.settled.saturating_add(lost);
        lost
    }

    /// True once it is done: ended, and everything up to its end settled.
    fn is_done(&self) -> bool {
        self.ended_at.is_some_and(|end| self.settled >= end)
    }
}

/// How a data frame is to be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Under credit; `lost` positions before it never arrived.
    Credited {
        /// Frames lost before this one.
        lost: u64,
    },
    /// Not under credit (from a sender without an account, beyond its limit or its end, or
    /// at a position already given up as lost): it may be queued only where the queue's own
    /// budget has room.
    Uncredited,
}

/// A receiving session's credit accounts, one per sender incarnation it granted.
#[derive(Debug)]
pub struct Ledger {
    window: u64,
    batch: u64,
    /// How long a sender that is no longer the peer keeps its share without an `Unbound`.
    superseded_grace: Duration,
    accounts: Vec<Account>,
    /// The sender now entitled to free credit: the session's peer.
    current: Option<Incarnation>,
}

impl Ledger {
    /// A ledger for a session whose window is `window` messages, with the default grace for
    /// displaced senders.
    pub fn new(window: usize) -> Ledger {
        Ledger::with_grace(window, DEFAULT_SUPERSEDED_GRACE)
    }

    /// A ledger whose displaced senders keep their share for `superseded_grace` (see
    /// [`DEFAULT_SUPERSEDED_GRACE`]).
    pub fn with_grace(window: usize, superseded_grace: Duration) -> Ledger {
        let window = window.max(1) as u64;
        Ledger {
            window,
            batch: (window / 2).clamp(1, CREDIT_BATCH),
            superseded_grace,
            accounts: Vec::new(),
            current: None,
        }
    }

    fn account(&mut self, sender: Incarnation) -> Option<&mut Account> {
        self.accounts.iter_mut().find(|a| a.sender == sender)
    }

    /// True if `sender` has an account here.
    pub fn knows(&self, sender: Incarnation) -> bool {
        self.accounts.iter().any(|a| a.sender == sender)
    }

    /// `sender` is now this session's peer: opens its account if new (or takes it up again,
    /// its position to be confirmed) and gives it what is free. Every other sender's account
    /// starts its grace. Returns the credit to announce, always (a repeated announcement is
    /// harmless and repairs a lost one).
    pub fn open(&mut self, sender: Incarnation) -> Option<CreditDue> {
        match self.account(sender) {
            Some(account) => {
                account.ended_at = None;
                account.deadline = None;
                account.synced = false;
            }
            None => self.accounts.push(Account::new(sender)),
        }
        let deadline = Instant::now() + self.superseded_grace;
        for account in &mut self.accounts {
            if account.sender != sender && account.deadline.is_none() {
                account.deadline = Some(deadline);
            }
        }
        self.current = Some(sender);
        self.rebalance(true)
    }

    /// A data frame at position `seq` arrived from `sender`.
    pub fn receive(&mut self, sender: Incarnation, seq: u64) -> Receipt {
        let Some(account) = self.account(sender) else {
            return Receipt::Uncredited;
        };
        account.sync(seq.saturating_sub(1));
        if seq <= account.received
            || seq > account.limit
            || account.ended_at.is_some_and(|end| seq > end)
        {
            return Receipt::Uncredited;
        }
        let lost = seq - account.received - 1;
        account.received = seq;
        account.settled = account.settled.saturating_add(lost);
        Receipt::Credited { lost }
    }

    /// `n` messages from `sender` were written to the client.
    pub fn written(&mut self, sender: Incarnation, n: u64) -> Option<CreditDue> {
        let account = self.account(sender)?;
        account.settled = account.settled.saturating_add(n);
        self.rebalance(false)
    }

    /// `sender` says it has sent `sent` messages in all, behind its data: those that did not
    /// arrive were lost. Returns how many, and the credit to announce (always, to the current
    /// sender: it is waiting for it).
    pub fn sent(&mut self, sender: Incarnation, sent: u64) -> (u64, Option<CreditDue>) {
        let Some(account) = self.account(sender) else {
            return (0, None);
        };
        account.sync(sent);
        // A sender cannot have sent beyond its limit; a position past it is not believed.
        let lost = account.settle_to(sent.min(account.limit));
        let force = self.current == Some(sender);
        (lost, self.rebalance(force))
    }

    /// `sender` ended after sending `sent` messages; frames still on the way have until its
    /// grace ends to arrive.
    pub fn ended(&mut self, sender: Incarnation, sent: u64) -> Option<CreditDue> {
        let account = self.account(sender)?;
        // What arrived was sent, whatever the sender says; and an end stated before (a
        // sender's own `Unbound`) is never lowered by a later one (its node saying it no longer
        // holds the session).
        let stated = account.ended_at.unwrap_or(0);
        account.ended_at = Some(sent.max(stated).max(account.received).min(account.limit));
        let settle_by = Instant::now() + SETTLE_GRACE;
        account.deadline = Some(account.deadline.map_or(settle_by, |at| at.min(settle_by)));
        if self.current == Some(sender) {
            self.current = None;
        }
        self.rebalance(false)
    }

    /// `node` died: nothing more comes from its senders beyond what arrived.
    pub fn forget_node(&mut self, node: NodeId) -> Option<CreditDue> {
        for account in &mut self.accounts {
            if account.sender.node == node {
                account.ended_at = Some(account.received);
            }
        }
        if self.current.is_some_and(|current| current.node == node) {
            self.current = None;
        }
        self.rebalance(false)
    }

    /// Ends the accounts whose grace has passed at what arrived, counting what their senders
    /// said they sent beyond it as lost; call now and then (each tick of the session). Returns
    /// the messages found lost, and credit that frees for the current sender, if a batch.
    pub fn sweep(&mut self) -> (u64, Option<CreditDue>) {
        let now = Instant::now();
        let mut lost = 0;
        let mut overdue = false;
        for account in &mut self.accounts {
            if Some(account.sender) != self.current
                && account.deadline.is_some_and(|deadline| deadline <= now)
            {
                overdue = true;
                account.deadline = None;
                let end = *account.ended_at.get_or_insert(account.received);
                lost += account.settle_to(end);
            }
        }
        if !overdue {
            return (0, None);
        }
        (lost, self.rebalance(false))
    }

    /// The current sender's limit if it is on `node`, to announce again after its link
    /// reconnected (credit frames may have been lost with the old connection).
    pub fn current_on(&self, node: NodeId) -> Option<CreditDue> {
        let current = self.current.filter(|current| current.node == node)?;
        let account = self.accounts.iter().find(|a| a.sender == current)?;
        Some(CreditDue {
            to: current,
            limit: account.limit,
        })
    }

    /// Gives what is free to the current sender, drops accounts that are done, and says
    /// what to announce: the current sender's limit when it grew by a batch, or when `force`.
    fn rebalance(&mut self, force: bool) -> Option<CreditDue> {
        let current = self.current;
        self.accounts
            .retain(|a| Some(a.sender) == current || !a.is_done());
        let outstanding: u64 = self.accounts.iter().map(Account::outstanding).sum();
        let free = self.window.saturating_sub(outstanding);
        let batch = self.batch;
        let current = current?;
        let account = self.accounts.iter_mut().find(|a| a.sender == current)?;
        if account.ended_at.is_some() {
            return None;
        }
        account.limit = account.limit.saturating_add(free);
        if force || account.limit >= account.told.saturating_add(batch) {
            account.told = account.limit;
            return Some(CreditDue {
                to: current,
                limit: account.limit,
            });
        }
        None
    }
}

/// A session's credit: its ledger as a receiver, and its grant as a sender.
#[derive(Debug)]
pub struct CreditState {
    ledger: Mutex<Ledger>,
    grants: Mutex<Grants>,
}

/// A sending session's grants: towards its peer, and towards the peer before, kept so that a
/// receiver that comes back (a replacement of it gave up mid-upgrade) finds its positions.
#[derive(Debug, Default)]
struct Grants {
    current: Option<Arc<Grant>>,
    previous: Option<Arc<Grant>>,
}

impl CreditState {
    /// Credit for a session whose window is `window` messages, whose displaced senders keep
    /// their share for `superseded_grace`.
    pub fn new(window: usize, superseded_grace: Duration) -> CreditState {
        CreditState {
            ledger: Mutex::new(Ledger::with_grace(window, superseded_grace)),
            grants: Mutex::default(),
        }
    }

    /// The receiving ledger. Lock order: a hub shard, then a ledger; never the other way
    /// (debug builds check it: see [`assert_no_ledger_held`]).
    pub fn ledger(&self) -> LedgerGuard<'_> {
        LedgerGuard::new(lock(&self.ledger))
    }

    /// The grant towards `receiver`, made (with no credit yet) if the current one is for
    /// another receiver, which is then closed so its waiter looks again, and kept as the
    /// previous one. A grant towards `receiver` that was revoked or replaced comes back with its
    /// positions: the receiver's ledger kept them.
    pub fn grant_for(&self, receiver: Incarnation) -> Arc<Grant> {
        let mut grants = lock(&self.grants);
        if let Some(current) = grants.current.as_ref()
            && current.receiver == receiver
        {
            if !current.is_closed() {
                return Arc::clone(current);
            }
            let revived = Arc::new(Grant::resume(current));
            grants.current = Some(Arc::clone(&revived));
            return revived;
        }
        let next = match grants.previous.take() {
            Some(previous) if previous.receiver == receiver => Grant::resume(&previous),
            _ => Grant::new(receiver),
        };
        let next = Arc::new(next);
        if let Some(old) = grants.current.replace(Arc::clone(&next)) {
            old.permits.close();
            grants.previous = Some(old);
        }
        next
    }

    /// Raises the grant towards `receiver` to `limit`. Returns this session's position if
    /// the limit is below it: the receiver has lost track of it (it forgot this node and
    /// opened its account afresh) and must be told with a `Sent`.
    pub fn credit(&self, receiver: Incarnation, limit: u64) -> Option<u64> {
        let grant = self.grant_for(receiver);
        grant.raise(limit);
        let position = grant.position();
        // Answer a given (limit, position) once: the receiver answers every `Sent` with its
        // limit, which may stay below the position while no room frees.
        let limit_seen = grant.answered_limit.fetch_max(limit, Ordering::AcqRel) >= limit;
        let position_seen = grant
            .answered_position
            .fetch_max(position, Ordering::AcqRel)
            >= position;
        let repeated = limit_seen && position_seen;
        (limit < position && !repeated).then_some(position)
    }

    /// Closes the grant if `gone` says its receiving session is gone, or unreachable for now:
    /// a sender waiting for its credit wakes and looks for the peer again. Its positions are
    /// kept, in case the same session comes back (its node rejoins, a failed replacement gives
    /// it its place back).
    pub fn revoke(&self, gone: impl Fn(Incarnation) -> bool) {
        let grants = lock(&self.grants);
        if let Some(current) = grants.current.as_ref()
            && gone(current.receiver)
        {
            current.permits.close();
        }
    }

    /// Messages sent to `receiver`, if it is the one this session sends to.
    pub fn sent_to(&self, receiver: Incarnation) -> u64 {
        let grants = lock(&self.grants);
        [grants.current.as_ref(), grants.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|grant| grant.receiver == receiver)
            .map_or(0, |grant| grant.sent())
    }
}

/// A locked ledger. In debug builds it counts, per thread, the ledgers held, so that taking a
/// hub shard while one is held (the wrong order) panics in tests instead of deadlocking in
/// production.
pub struct LedgerGuard<'a> {
    guard: MutexGuard<'a, Ledger>,
}

#[cfg(debug_assertions)]
thread_local! {
    static LEDGERS_HELD: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl<'a> LedgerGuard<'a> {
    fn new(guard: MutexGuard<'a, Ledger>) -> LedgerGuard<'a> {
        #[cfg(debug_assertions)]
        LEDGERS_HELD.with(|held| held.set(held.get() + 1));
        LedgerGuard { guard }
    }
}

impl Drop for LedgerGuard<'_> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        LEDGERS_HELD.with(|held| held.set(held.get() - 1));
    }
}

impl std::ops::Deref for LedgerGuard<'_> {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        &self.guard
    }
}

impl std::ops::DerefMut for LedgerGuard<'_> {
    fn deref_mut(&mut self) -> &mut Ledger {
        &mut self.guard
    }
}

/// Panics in debug builds if this thread holds a ledger: called by whoever takes a lock that
/// must come before ledgers (the hub's shards).
pub fn assert_no_ledger_held() {
    #[cfg(debug_assertions)]
    LEDGERS_HELD.with(|held| {
        assert_eq!(
            held.get(),
            0,
            "lock order: a hub shard taken while a ledger is held"
        );
    });
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Each critical section is a few arithmetic steps; a panic inside one leaves the numbers
    // usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(node: u64, session: u64) -> Incarnation {
        Incarnation {
            node: NodeId::from_u64(node).unwrap(),
            session,
        }
    }

    #[test]
    fn a_new_sender_gets_the_whole_window_and_more_in_batches() {
        let mut ledger = Ledger::new(8);
        let s = sender(1, 1);
        assert_eq!(ledger.open(s), Some(CreditDue { to: s, limit: 8 }));
        for seq in 1..=8 {
            assert_eq!(ledger.receive(s, seq), Receipt::Credited { lost: 0 });
        }
        assert_eq!(ledger.written(s, 3), None);
        assert_eq!(ledger.written(s, 1), Some(CreditDue { to: s, limit: 12 }));
    }

    #[test]
    fn a_successor_shares_the_window_with_what_its_predecessor_has_in_flight() {
        let mut ledger = Ledger::new(8);
        let (old, new) = (sender(1, 1), sender(1, 2));
        ledger.open(old);
        for seq in 1..=8 {
            ledger.receive(old, seq);
        }
        // The old sender's 8 messages are queued, unwritten: nothing is free for the new one.
        assert_eq!(ledger.open(new), Some(CreditDue { to: new, limit: 0 }));
        assert_eq!(ledger.ended(old, 8), None);
        assert_eq!(
            ledger.written(old, 8),
            Some(CreditDue { to: new, limit: 8 })
        );
    }

    #[test]
    fn credit_an_ended_sender_never_used_goes_to_the_next() {
        let mut ledger = Ledger::new(8);
        let (old, new) = (sender(1, 1), sender(2, 1));
        ledger.open(old);
        ledger.receive(old, 1);
        ledger.receive(old, 2);
        assert_eq!(ledger.open(new), Some(CreditDue { to: new, limit: 0 }));
        // Ended after two: six are free at once, the two queued ones once written.
        assert_eq!(ledger.ended(old, 2), Some(CreditDue { to: new, limit: 6 }));
        assert_eq!(ledger.written(old, 2), None);
        assert_eq!(ledger.accounts.len(), 1);
        assert_eq!(
            ledger.current_on(new.node),
            Some(CreditDue { to: new, limit: 8 })
        );
    }

    #[test]
    fn gaps_and_probes_count_lost_frames_and_give_their_credit_back() {
        let mut ledger = Ledger::new(4);
        let s = sender(1, 1);
        ledger.open(s);
        assert_eq!(ledger.receive(s, 1), Receipt::Credited { lost: 0 });
        assert_eq!(ledger.receive(s, 3), Receipt::Credited { lost: 1 });
        // The fourth was lost too; the sender, out of credit, says where it stands.
        let (lost, due) = ledger.sent(s, 4);
        assert_eq!(lost, 1);
        ledger.written(s, 2);
        assert_eq!(ledger.sent(s, 4), (0, Some(CreditDue { to: s, limit: 8 })));
        // A frame given up as lost that arrives after all is not credited twice.
        assert_eq!(ledger.receive(s, 4), Receipt::Uncredited);
        assert!(due.is_some());
    }

    #[test]
    fn a_forgotten_sender_is_resynced_from_its_position() {
        let mut ledger = Ledger::new(4);
        let s = sender(1, 1);
        // Opened blind (its node timed out and came back): positions are learnt.
        assert_eq!(ledger.open(s), Some(CreditDue { to: s, limit: 4 }));
        let (lost, due) = ledger.sent(s, 5000);
        assert_eq!(lost, 0);
        assert_eq!(due, Some(CreditDue { to: s, limit: 5004 }));
        assert_eq!(ledger.receive(s, 5001), Receipt::Credited { lost: 0 });
    }

    /// An `Unbound` lost with a link, or never sent (a session that gave up before binding
    /// here): the old sender's share is freed after the grace, whatever its node.
    #[tokio::test(start_paused = true)]
    async fn a_sender_that_never_says_it_ended_frees_its_share_after_the_grace() {
        let mut ledger = Ledger::new(8);
        let (old, new) = (sender(1, 1), sender(2, 1));
        ledger.open(old);
        ledger.receive(old, 1);
        assert_eq!(ledger.open(new), Some(CreditDue { to: new, limit: 0 }));
        assert_eq!(ledger.sweep(), (0, None));
        tokio::time::advance(DEFAULT_SUPERSEDED_GRACE).await;
        // What arrived stays reserved until written; the rest is free.
        assert_eq!(ledger.sweep(), (0, Some(CreditDue { to: new, limit: 7 })));
    }

    /// Frames lost with a link before the sender's `Unbound`: counted once the grace passes,
    /// and the window is whole again.
    #[tokio::test(start_paused = true)]
    async fn frames_lost_before_an_unbound_are_settled_after_the_grace() {
        let mut ledger = Ledger::new(8);
        let (old, new) = (sender(1, 1), sender(1, 2));
        ledger.open(old);
        for seq in 1..=6 {
            ledger.receive(old, seq);
        }
        ledger.open(new);
        ledger.ended(old, 8);
        ledger.written(old, 6);
        tokio::time::advance(SETTLE_GRACE).await;
        let (lost, _) = ledger.sweep();
        assert_eq!(lost, 2);
        assert_eq!(ledger.accounts.len(), 1);
        assert_eq!(
            ledger.current_on(new.node),
            Some(CreditDue { to: new, limit: 8 })
        );
    }

    /// A replacement that gave up mid-upgrade: the displaced sender is the peer again, keeps
    /// its account, and is never ended by the grace its replacement started.
    #[tokio::test(start_paused = true)]
    async fn a_sender_that_is_the_peer_again_keeps_its_credit() {
        let mut ledger = Ledger::new(8);
        let (s1, s2) = (sender(1, 1), sender(1, 2));
        ledger.open(s1);
        for seq in 1..=4 {
            assert_eq!(ledger.receive(s1, seq), Receipt::Credited { lost: 0 });
        }
        ledger.open(s2);
        ledger.ended(s2, 0);
        ledger.open(s1);
        tokio::time::advance(DEFAULT_SUPERSEDED_GRACE * 2).await;
        ledger.sweep();
        ledger.written(s1, 4);
        assert_eq!(ledger.receive(s1, 5), Receipt::Credited { lost: 0 });
        let (_, due) = ledger.sent(s1, 5);
        assert_eq!(due, Some(CreditDue { to: s1, limit: 12 }));
        // Probes do not inflate the window.
        let (_, again) = ledger.sent(s1, 5);
        assert_eq!(again, due);
    }

    #[test]
    fn corrupt_positions_neither_overflow_nor_credit_beyond_the_limit() {
        let mut ledger = Ledger::new(8);
        let s = sender(1, 1);
        ledger.open(s);
        assert_eq!(ledger.receive(s, 9), Receipt::Credited { lost: 0 });
        assert_eq!(ledger.receive(s, 100), Receipt::Uncredited);
        let _ = ledger.sent(s, u64::MAX);
        assert_eq!(ledger.receive(s, u64::MAX), Receipt::Uncredited);
        let mut blind = Ledger::new(8);
        blind.open(s);
        let _ = blind.sent(s, u64::MAX);
        let _ = blind.receive(s, u64::MAX);
        let _ = blind.written(s, u64::MAX);
    }

    #[test]
    fn a_dead_node_frees_what_its_senders_never_sent() {
        let mut ledger = Ledger::new(4);
        let (old, new) = (sender(1, 1), sender(2, 1));
        ledger.open(old);
        ledger.receive(old, 1);
        ledger.open(new);
        assert_eq!(
            ledger.forget_node(old.node),
            Some(CreditDue { to: new, limit: 3 })
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "lock order")]
    fn taking_a_shard_while_holding_a_ledger_panics_in_debug_builds() {
        let state = CreditState::new(4, DEFAULT_SUPERSEDED_GRACE);
        let _ledger = state.ledger();
        assert_no_ledger_held();
    }

    #[test]
    fn grants_keep_the_highest_limit_and_close_when_replaced() {
        let state = CreditState::new(4, DEFAULT_SUPERSEDED_GRACE);
        let r = sender(9, 1);
        state.credit(r, 2);
        state.credit(r, 1);
        let grant = state.grant_for(r);
        assert_eq!(grant.try_take(), Some(1));
        assert_eq!(grant.try_take(), Some(2));
        assert_eq!(grant.try_take(), None);
        grant.untake();
        assert_eq!(grant.try_take(), Some(2));
        state.revoke(|receiver| receiver == r);
        assert!(grant.is_closed());
        let revived = state.grant_for(r);
        assert_eq!(revived.try_take(), None, "positions and limit carry over");
        state.credit(r, 3);
        assert_eq!(revived.try_take(), Some(3));
        let other = state.grant_for(sender(9, 2));
        assert!(revived.is_closed());
        assert_eq!(other.try_take(), None);
        assert_eq!(state.sent_to(r), 3);
        // The receiver before comes back: its positions with it.
        let back = state.grant_for(r);
        assert_eq!(back.sent(), 3);
        assert!(other.is_closed());
    }

    /// S (sender) sent 3 messages to R; a replacement R2 of R announced itself to
    /// S's node (its Bound, then its Credit, switches S's current grant to R2); R2 gave up
    /// and R was restored; S's client closes before sending again. S's `Unbound` to R says
    /// `sent_to(R)`, which looks only at the current grant (R2's): 0. R's ledger ends S's
    /// account at 0 and drops it while its 3 credited messages are still in R's queue, so the
    /// next sender gets the whole window on top of them.
    #[test]
    fn an_unbound_after_a_failed_replacement_reports_what_was_sent_to_the_receiver() {
        let (s, s2) = (sender(1, 1), sender(1, 2));
        let (r, r2) = (sender(2, 1), sender(2, 2));
        // Sender side.
        let state = CreditState::new(4, DEFAULT_SUPERSEDED_GRACE);
        let mut ledger = Ledger::new(4);
        let due = ledger.open(s).unwrap();
        assert_eq!(state.credit(r, due.limit), None);
        let grant = state.grant_for(r);
        for _ in 0..3 {
            let seq = grant.try_take().unwrap();
            grant.queued(seq);
            assert_eq!(ledger.receive(s, seq), Receipt::Credited { lost: 0 });
        }
        // R2's Credit lands on S (hub records R2 as S's peer), then R2 is gone, R is back.
        state.credit(r2, 4);
        let reported = state.sent_to(r);
        assert_eq!(reported, 3, "Unbound to R under-reports what S sent to R");
        let _ = (ledger.ended(s, reported), s2);
    }

    /// an `Unbound` saying less than what arrived drops the account
    /// with credited messages still queued; the next sender gets the full window on top.
    #[test]
    fn an_under_reported_unbound_never_lets_credit_exceed_the_window() {
        let (s, s2) = (sender(1, 1), sender(1, 2));
        let mut ledger = Ledger::new(4);
        ledger.open(s);
        for seq in 1..=3 {
            assert_eq!(ledger.receive(s, seq), Receipt::Credited { lost: 0 });
        }
        ledger.ended(s, 0); // none of the 3 written yet: the client is paused
        let due = ledger.open(s2).unwrap();
        assert!(
            3 + due.limit <= 4,
            "credited and unwritten: 3 queued + {} granted > window 4",
            due.limit
        );
    }

    /// a live sender displaced at the receiver by a claim that is still upgrading
    /// (it goes on sending: its node evicts it only at `activate`) has its account ended after
    /// SETTLE_GRACE; its frames within its limit are then uncredited (dropped when the local
    /// share of the queue is full) until the claim gives up and it is the peer again.
    #[tokio::test(start_paused = true)]
    async fn a_displaced_sender_keeps_its_credit_while_its_successor_may_still_fail() {
        let (s1, s2) = (sender(1, 1), sender(3, 1));
        let mut ledger = Ledger::new(8);
        ledger.open(s1);
        assert_eq!(ledger.receive(s1, 1), Receipt::Credited { lost: 0 });
        ledger.open(s2); // s2's Bound: a claim in progress on another node
        tokio::time::advance(SETTLE_GRACE).await;
        let _ = ledger.sweep();
        assert_eq!(
            ledger.receive(s1, 2),
            Receipt::Credited { lost: 0 },
            "frame 2 is within the limit s1 was told (8)"
        );
    }

    /// a sender whose position is above the receiver's limit (a grant that resumed
    /// towards an account the receiver had to open again, sharing the window with another
    /// account) ping-pongs Credit/Sent with the receiver for as long as no room frees: the
    /// Credit handler answers `limit < position` with `Sent` at once (inbound.rs Credit arm),
    /// and `on_sent` always answers the current sender with its (unchanged) limit.
    #[test]
    fn credit_and_sent_do_not_ping_pong_while_the_receiver_is_paused() {
        let (other, s) = (sender(1, 1), sender(2, 1));
        let r = sender(3, 1);
        let mut ledger = Ledger::new(4);
        // Another sender's 2 messages wait in the paused receiver's queue.
        ledger.open(other);
        ledger.receive(other, 1);
        ledger.receive(other, 2);
        ledger.ended(other, 2);
        // S's grant towards R resumes at position 6, limit 10 (R's node forgot S's account).
        let state = CreditState::new(4, DEFAULT_SUPERSEDED_GRACE);
        state.credit(r, 10);
        let grant = state.grant_for(r);
        for _ in 0..6 {
            let seq = grant.try_take().unwrap();
            grant.queued(seq);
        }
        state.revoke(|_| true);
        let grant = state.grant_for(r);
        // R opens a blind account for S and tells it what is free: 2.
        let mut due = ledger.open(s).unwrap();
        assert_eq!(due.limit, 2);
        // S sends its 4 permits (7..=10): 7 syncs the account (limit 2 + 6 = 8), 9 and 10 are
        // beyond it.
        for _ in 0..4 {
            let seq = grant.try_take().unwrap();
            grant.queued(seq);
            let _ = ledger.receive(s, seq);
        }
        let mut rounds = 0;
        while let Some(position) = state.credit(r, due.limit) {
            let (_, again) = ledger.sent(s, position);
            due = again.expect("on_sent always answers the current sender");
            rounds += 1;
            assert!(
                rounds < 1000,
                "Credit {} / Sent {position} forever",
                due.limit
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Whatever senders come, send within their credit, get written, say where they stand
        /// and end, in any order: the credit outstanding over all of them never exceeds the
        /// window, and a sender never gets a limit below one it was given.
        #[test]
        fn the_credit_granted_never_exceeds_the_window(
            window in 1usize..16,
            ops in proptest::collection::vec((0u8..5, 0usize..3, 1u64..5), 0..300),
        ) {
            let mut ledger = Ledger::with_grace(window, Duration::from_secs(60));
            let senders = [sender(1, 1), sender(1, 2), sender(2, 1)];
            let (mut limit, mut sent, mut pending) = ([0u64; 3], [0u64; 3], [0u64; 3]);
            let mut ended = [false; 3];
            for (op, who, n) in ops {
                if ended[who] {
                    continue;
                }
                let s = senders[who];
                let due = match op {
                    0 => ledger.open(s),
                    1 => {
                        if sent[who] < limit[who] {
                            sent[who] += 1;
                            if let Receipt::Credited { .. } = ledger.receive(s, sent[who]) {
                                pending[who] += 1;
                            }
                        }
                        None
                    }
                    2 => {
                        let k = n.min(pending[who]);
                        pending[who] -= k;
                        if k > 0 { ledger.written(s, k) } else { None }
                    }
                    3 => ledger.sent(s, sent[who]).1,
                    _ => {
                        ended[who] = true;
                        ledger.ended(s, sent[who])
                    }
                };
                if let Some(due) = due {
                    let i = senders.iter().position(|x| *x == due.to).unwrap();
                    proptest::prop_assert!(due.limit >= limit[i], "a limit went down");
                    limit[i] = due.limit;
                }
                let outstanding: u64 = ledger.accounts.iter().map(Account::outstanding).sum();
                proptest::prop_assert!(
                    outstanding <= window as u64,
                    "outstanding {} over the window {}", outstanding, window
                );
            }
        }
    }
}
