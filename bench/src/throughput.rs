//! `throughput` mode: every pair keeps a fixed window of messages in flight in each direction
//! for a fixed time; reports messages and bytes delivered per second.
//!
//! With `--v1`, every client is a `wspair-client` library instance speaking `wspair.v1`: the
//! sender calls `send_binary` on the client's handle and the receiver takes messages with
//! `next_event`, under the same window of messages in flight per direction as the raw mode, so
//! the two figures compare the cost of the library and the protocol on the same load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::clients::{Target, Ws};
use crate::flow::{RunArgs, SeqCheck, header, open_pairs, payload};

#[derive(Debug, clap::Args)]
pub struct ThroughputArgs {
    #[command(flatten)]
    target: Target,
    /// Pairs driven at once.
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// Messages in flight per pair and direction.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Drive `wspair.v1` clients (the `wspair-client` library) instead of raw WebSockets. The
    /// URLs' queries are dropped: the library adds its own.
    #[arg(long)]
    v1: bool,
    #[command(flatten)]
    run: RunArgs,
}

/// What one direction of one pair did.
struct DirectionResult {
    sent: u64,
    check: SeqCheck,
    counted: u64,
    /// A v1 receiving client, kept until every direction is done: dropping it would stop the
    /// client that the other direction sends with.
    _client: Option<wspair_client::Client>,
}

pub async fn run(args: ThroughputArgs) -> Result<(), String> {
    let mut tasks = Vec::new();
    if args.v1 {
        let pairs = crate::v1::open_pairs(&args.target, args.pairs, 256).await?;
        let warm_until = Instant::now() + Duration::from_secs_f64(args.run.warmup);
        let stop_at = warm_until + Duration::from_secs_f64(args.run.seconds);
        for (app, web) in pairs {
            let (app_handle, web_handle) = (app.handle(), web.handle());
            for (handle, receiver) in [(app_handle, web), (web_handle, app)] {
                tasks.push(tokio::spawn(direction_v1(
                    handle,
                    receiver,
                    Arc::new(Semaphore::new(args.window)),
                    args.run.size,
                    warm_until,
                    stop_at,
                )));
            }
        }
    } else {
        let (pairs, _) = open_pairs(&args.target, args.pairs, 5000, 256, false).await?;
        let warm_until = Instant::now() + Duration::from_secs_f64(args.run.warmup);
        let stop_at = warm_until + Duration::from_secs_f64(args.run.seconds);
        spawn_raw(pairs, &args, warm_until, stop_at, &mut tasks);
    }
    let mut total = SeqCheck::default();
    let mut counted = 0;
    let mut sent = 0;
    let mut clients = Vec::new();
    for task in tasks {
        let result = task.await.map_err(|err| err.to_string())??;
        total.merge(&result.check);
        counted += result.counted;
        sent += result.sent;
        clients.push(result._client);
    }
    drop(clients);
    report(&args, total, counted, sent)
}

type DirectionTask = tokio::task::JoinHandle<Result<DirectionResult, String>>;

/// Spawns both directions of every raw pair.
fn spawn_raw(
    pairs: Vec<(Ws, Ws)>,
    args: &ThroughputArgs,
    warm_until: Instant,
    stop_at: Instant,
    tasks: &mut Vec<DirectionTask>,
) {
    for (app, web) in pairs {
        let (app_sink, app_stream) = app.split();
        let (web_sink, web_stream) = web.split();
        // Each direction's window: the sender takes a permit per message, the receiver gives it back.
        let app_to_web = Arc::new(Semaphore::new(args.window));
        let web_to_app = Arc::new(Semaphore::new(args.window));
        tasks.push(tokio::spawn(direction(
            app_sink,
            web_stream,
            Arc::clone(&app_to_web),
            args.run.size,
            warm_until,
            stop_at,
        )));
        tasks.push(tokio::spawn(direction(
            web_sink,
            app_stream,
            Arc::clone(&web_to_app),
            args.run.size,
            warm_until,
            stop_at,
        )));
    }
}

fn report(args: &ThroughputArgs, total: SeqCheck, counted: u64, sent: u64) -> Result<(), String> {
    let rate = counted as f64 / args.run.seconds;
    let mbytes = rate * args.run.size as f64 / 1e6;
    if args.run.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "throughput", "v1": args.v1, "pairs": args.pairs, "window": args.window, "size": args.run.size,
                "seconds": args.run.seconds, "messages_per_second": rate, "megabytes_per_second": mbytes,
                "sent": sent, "received": total.received, "lost": total.lost,
                "duplicated_or_reordered": total.duplicated_or_reordered,
            })
        );
    } else {
        println!(
            "throughput{}: {rate:.0} msg/s ({mbytes:.1} MB/s), {} pairs, window {}, {} B; sent {sent}, received {}, lost {}, dup/reordered {}",
            if args.v1 { " (v1)" } else { "" },
            args.pairs,
            args.window,
            args.run.size,
            total.received,
            total.lost,
            total.duplicated_or_reordered
        );
    }
    if total.lost > 0 || total.duplicated_or_reordered > 0 {
        return Err("messages were lost, duplicated or reordered".into());
    }
    Ok(())
}

type Sink = futures::stream::SplitSink<Ws, Message>;
type Stream = futures::stream::SplitStream<Ws>;

async fn direction(
    mut sink: Sink,
    mut stream: Stream,
    window: Arc<Semaphore>,
    size: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> Result<DirectionResult, String> {
    let sender_window = Arc::clone(&window);
    // The sender publishes how many it sent once it stops, so the receiver knows when it has all.
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let sender = tokio::spawn(async move {
        let mut seq = 0u64;
        while Instant::now() < stop_at {
            let permit = sender_window.acquire().await.expect("never closed");
            permit.forget();
            let bytes = payload(seq, 0, size);
            sink.feed(Message::binary(Bytes::from(bytes)))
                .await
                .map_err(|err| err.to_string())?;
            // Flush when the window is used up, as a client with a window would.
            if sender_window.available_permits() == 0 {
                sink.flush().await.map_err(|err| err.to_string())?;
            }
            seq += 1;
        }
        sink.flush().await.map_err(|err| err.to_string())?;
        let _ = sent_tx.send(Some(seq));
        Ok::<_, String>(sink)
    });
    let mut check = SeqCheck::default();
    let mut counted = 0u64;
    let mut sent = None;
    let drain_until = tokio::time::Instant::from_std(stop_at + Duration::from_secs(10));
    while sent.is_none_or(|sent| check.next < sent) {
        tokio::select! {
            changed = sent_rx.changed(), if sent.is_none() => {
                if changed.is_err() {
                    break;
                }
                sent = *sent_rx.borrow();
            }
            next = tokio::time::timeout_at(drain_until, stream.next()) => match next {
                Err(_) => break,
                Ok(Some(Ok(Message::Binary(bytes)))) => {
                    let (seq, _) = header(&bytes).ok_or("short payload")?;
                    check.observe(seq);
                    let now = Instant::now();
                    if now >= warm_until && now < stop_at {
                        counted += 1;
                    }
                    window.add_permits(1);
                }
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(err))) => return Err(err.to_string()),
                Ok(None) => return Err("connection closed".into()),
            },
        }
    }
    let _sink = sender.await.map_err(|err| err.to_string())??;
    let sent = sent.unwrap_or(check.next);
    check.finish(sent);
    Ok(DirectionResult {
        sent,
        check,
        counted,
        _client: None,
    })
}

/// One direction of a v1 pair: `handle` sends (its client is the sender), `receiver` takes the
/// messages; the semaphore keeps `--window` messages in flight, as in the raw mode.
async fn direction_v1(
    handle: wspair_client::Handle,
    mut receiver: wspair_client::Client,
    window: Arc<Semaphore>,
    size: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> Result<DirectionResult, String> {
    let sender_window = Arc::clone(&window);
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let sender = tokio::spawn(async move {
        let mut seq = 0u64;
        while Instant::now() < stop_at {
            let permit = sender_window.acquire().await.expect("never closed");
            permit.forget();
            handle
                .send_binary(Bytes::from(payload(seq, 0, size)))
                .await
                .map_err(|err| err.to_string())?;
            seq += 1;
        }
        let _ = sent_tx.send(Some(seq));
        Ok::<_, String>(handle)
    });
    let mut check = SeqCheck::default();
    let mut counted = 0u64;
    let mut sent = None;
    let drain_until = tokio::time::Instant::from_std(stop_at + Duration::from_secs(10));
    while sent.is_none_or(|sent| check.next < sent) {
        tokio::select! {
            changed = sent_rx.changed(), if sent.is_none() => {
                if changed.is_err() {
                    break;
                }
                sent = *sent_rx.borrow();
            }
            next = tokio::time::timeout_at(drain_until, receiver.next_event()) => match next {
                Err(_) => break,
                Ok(Some(wspair_client::Event::Message { payload, .. })) => {
                    let (seq, _) = header(&payload).ok_or("short payload")?;
                    check.observe(seq);
                    let now = Instant::now();
                    if now >= warm_until && now < stop_at {
                        counted += 1;
                    }
                    window.add_permits(1);
                }
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the client stopped".into()),
            },
        }
    }
    let _handle = sender.await.map_err(|err| err.to_string())??;
    let sent = sent.unwrap_or(check.next);
    check.finish(sent);
    Ok(DirectionResult {
        sent,
        check,
        counted,
        _client: Some(receiver),
    })
}
