//! What flows in a benchmark: numbered, timestamped payloads, the checker that finds lost,
//! duplicated and reordered messages, and opening many pairs at a paced rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Connector, Target, Ws, channel_id};

/// Bytes at the start of every payload: sequence number, then send time in ns since the run
/// started (the scheduled time, in latency mode).
pub const HEADER_BYTES: usize = 16;

/// A payload of `size` bytes (at least [`HEADER_BYTES`]) carrying `seq` and `sent_ns`.
pub fn payload(seq: u64, sent_ns: u64, size: usize) -> Vec<u8> {
    let mut bytes = vec![b'.'; size.max(HEADER_BYTES)];
    bytes[..8].copy_from_slice(&seq.to_be_bytes());
    bytes[8..16].copy_from_slice(&sent_ns.to_be_bytes());
    bytes
}

/// Reads the sequence number and send time back.
pub fn header(bytes: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(bytes.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// Settings the throughput and latency modes share.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Message size in bytes (at least 16; 24 in latency mode, whose header also carries the
    /// send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of warm-up, not counted.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Checks one direction's sequence numbers.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqCheck {
    /// The next sequence number expected.
    pub next: u64,
    /// Messages received.
    pub received: u64,
    /// Sequence numbers skipped (never seen, as far as this check knows).
    pub lost: u64,
    /// Sequence numbers seen twice or arriving after a later one.
    pub duplicated_or_reordered: u64,
}

impl SeqCheck {
    /// Notes the arrival of `seq`.
    pub fn observe(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.lost += seq - self.next;
            self.next = seq + 1;
        } else {
            self.duplicated_or_reordered += 1;
        }
    }

    /// Adds another direction's counts.
    pub fn merge(&mut self, other: &SeqCheck) {
        self.received += other.received;
        self.lost += other.lost;
        self.duplicated_or_reordered += other.duplicated_or_reordered;
    }

    /// At the end: messages sent but never received count as lost.
    pub fn finish(&mut self, sent: u64) {
        if sent > self.next {
            self.lost += sent - self.next;
            self.next = sent;
        }
    }
}

/// Opens `pairs` pairs at `connect_rate` connections per second, `concurrency` at a time.
/// With `verify`, each pair relays one message each way before it counts as open (and before
/// its place among the `concurrency` is given up).
pub async fn open_pairs(
    target: &Target,
    pairs: usize,
    connect_rate: u32,
    concurrency: usize,
    verify: bool,
) -> Result<(Vec<(Ws, Ws)>, Duration), String> {
    let connector = Arc::new(Connector::new(target));
    let run_id = run_id();
    let started = Instant::now();
    let pending = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / connect_rate.max(1) * 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(pairs);
    for n in 0..pairs {
        ticker.tick().await;
        let permit = Arc::clone(&pending)
            .acquire_owned()
            .await
            .expect("never closed");
        let connector = Arc::clone(&connector);
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let id = channel_id(run_id, n);
            let mut app = connector.connect(&target.app_url, &id).await?;
            let mut web = connector.connect(&target.web_url, &id).await?;
            if verify {
                self::verify(&mut app, &mut web, &format!("a{n}")).await?;
                self::verify(&mut web, &mut app, &format!("w{n}")).await?;
            }
            drop(permit);
            Ok::<_, String>((app, web))
        }));
    }
    let mut opened = Vec::with_capacity(pairs);
    for task in tasks {
        opened.push(task.await.map_err(|err| err.to_string())??);
    }
    Ok((opened, started.elapsed()))
}

/// A number for this run's channel ids: random, so concurrent or successive runs never share
/// a channel id.
pub fn run_id() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    (std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        % 1_000_000_000) as u32
}

/// Sends one message from `from` and checks `to` receives exactly it (within 10 s).
pub async fn verify(from: &mut Ws, to: &mut Ws, text: &str) -> Result<(), String> {
    from.send(Message::text(text))
        .await
        .map_err(|err| err.to_string())?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), to.next())
            .await
            .map_err(|_| format!("pair {text}: message not relayed within 10 s"))?;
        match next {
            Some(Ok(Message::Text(got))) if got.as_str() == text => return Ok(()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => return Err(format!("pair {text}: expected {text:?}, got {other:?}")),
        }
    }
}
