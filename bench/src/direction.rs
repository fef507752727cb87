//! What one direction of a `throughput` pair does, whatever its clients (raw WebSockets, the
//! v1 library, or the v1 state machine in the raw loop): send numbered payloads while the run
//! lasts, keeping `--window` of them in flight, and check and count what arrives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::sync::{Semaphore, watch};

use crate::flow::{SeqCheck, header, payload};

/// How long a receiver waits after the run for messages still on their way.
const DRAIN: Duration = Duration::from_secs(10);

/// The run's clock and one direction's window: the sender takes a permit per message, the
/// receiver gives it back.
#[derive(Debug, Clone)]
pub struct Flow {
    pub window: Arc<Semaphore>,
    pub size: usize,
    pub warm_until: Instant,
    pub stop_at: Instant,
}

impl Flow {
    /// When a receiver stops waiting for messages still on their way.
    pub fn drain_until(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.stop_at + DRAIN)
    }

    /// The next message to send, once the window has room, with whether it uses the window
    /// up (a sender that batches its writes flushes then, as a client with a window would);
    /// `None` once the run is over.
    pub async fn next_message(&self, seq: u64) -> Option<(Vec<u8>, bool)> {
        if Instant::now() >= self.stop_at {
            return None;
        }
        self.window.acquire().await.expect("never closed").forget();
        Some((
            payload(seq, 0, self.size),
            self.window.available_permits() == 0,
        ))
    }
}

/// What a receiver saw: the sequence check, and the messages that arrived in the measured
/// time.
#[derive(Debug)]
pub struct Tally {
    flow: Flow,
    pub check: SeqCheck,
    pub counted: u64,
}

impl Tally {
    pub fn new(flow: Flow) -> Tally {
        Tally {
            flow,
            check: SeqCheck::default(),
            counted: 0,
        }
    }

    /// A message arrived: checks its number, counts it, and gives its window permit back.
    pub fn take(&mut self, payload: &[u8]) -> Result<(), String> {
        let (seq, _) = header(payload).ok_or("short payload")?;
        self.check.observe(seq);
        let now = Instant::now();
        if now >= self.flow.warm_until && now < self.flow.stop_at {
            self.counted += 1;
        }
        self.flow.window.add_permits(1);
        Ok(())
    }

    /// Whether every one of `sent` messages (when the sender has said how many) arrived.
    pub fn has_all(&self, sent: Option<u64>) -> bool {
        sent.is_some_and(|sent| self.check.next >= sent)
    }

    /// Takes messages from `incoming` until all the sender sent (published on `sent_rx` once
    /// it stops) arrived, or the drain deadline passed. `incoming` yields `Some(payload)` for a
    /// message and `None` for anything else. Returns how many were sent, if the sender said.
    pub async fn receive_all(
        &mut self,
        mut sent_rx: watch::Receiver<Option<u64>>,
        mut incoming: impl Stream<Item = Result<Option<Bytes>, String>> + Unpin,
    ) -> Result<Option<u64>, String> {
        let drain_until = self.flow.drain_until();
        let mut sent = None;
        while !self.has_all(sent) {
            tokio::select! {
                changed = sent_rx.changed(), if sent.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    sent = *sent_rx.borrow();
                }
                item = tokio::time::timeout_at(drain_until, incoming.next()) => match item {
                    Err(_) => break,
                    Ok(Some(Ok(Some(payload)))) => self.take(&payload)?,
                    Ok(Some(Ok(None))) => {}
                    Ok(Some(Err(err))) => return Err(err),
                    Ok(None) => return Err("connection closed".into()),
                },
            }
        }
        Ok(sent)
    }

    /// The end: messages sent but never received count as lost. Returns the number sent.
    pub fn finish(&mut self, sent: Option<u64>) -> u64 {
        let sent = sent.unwrap_or(self.check.next);
        self.check.finish(sent);
        sent
    }
}

/// What one direction did.
pub struct DirectionResult {
    pub sent: u64,
    pub check: SeqCheck,
    pub counted: u64,
    /// A v1 receiving client, kept until every direction is done: dropping it would stop the
    /// client that the other direction sends with.
    pub keep: Option<wspair_client::Client>,
}

impl DirectionResult {
    pub fn new(
        mut tally: Tally,
        sent: Option<u64>,
        keep: Option<wspair_client::Client>,
    ) -> DirectionResult {
        let sent = tally.finish(sent);
        DirectionResult {
            sent,
            check: tally.check,
            counted: tally.counted,
            keep,
        }
    }
}
