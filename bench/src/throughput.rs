//! `throughput` mode: every pair keeps a fixed window of messages in flight in each direction
//! for a fixed time; reports messages and bytes delivered per second.
//!
//! With `--v1`, every client is a `wspair-client` library instance speaking `wspair.v1`: the
//! sender queues each message with `feed_binary` on the client's handle and flushes once the
//! window is used up, as the raw sender flushes its sink, and the receiver takes messages with
//! `next_event`, under the same window of messages in flight per direction as the raw mode, so
//! the two figures compare the cost of the library and the protocol on the same load.
//! `--v1-send` sends each message with `send_binary` instead, which leaves the writing to the
//! client's own task: what an application that never flushes gets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::{Bytes, Message};

use crate::clients::{Target, Ws};
use crate::direction::{DirectionResult, Flow, Tally};
use crate::flow::{RunArgs, SeqCheck, open_pairs};

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
    /// Drive `wspair.v1` clients made of the library's sans-IO state machine in the raw
    /// mode's own I/O loop (see `sansio.rs`).
    #[arg(long, conflicts_with = "v1")]
    v1_sans_io: bool,
    /// With `--v1`: send each message with `send_binary` (the client's task writes) instead of
    /// `feed_binary` and a `flush` once the window is used up.
    #[arg(long, requires = "v1")]
    v1_send: bool,
    #[command(flatten)]
    run: RunArgs,
}

pub async fn run(args: ThroughputArgs) -> Result<(), String> {
    let mut tasks = Vec::new();
    if args.v1_sans_io {
        let pairs = open_sans_io(&args).await?;
        let flow = flows(&args);
        for ((app, app_stream), (web, web_stream)) in pairs {
            let done = Arc::new(crate::sansio::PairDone::default());
            let app_to_web = crate::sansio::direction(
                Arc::clone(&app),
                Arc::clone(&web),
                web_stream,
                Arc::clone(&done),
                flow(),
            );
            tasks.push(tokio::spawn(app_to_web));
            tasks.push(tokio::spawn(crate::sansio::direction(
                web,
                app,
                app_stream,
                done,
                flow(),
            )));
        }
    } else if args.v1 {
        let pairs = crate::v1::open_pairs(&args.target, args.pairs, 256).await?;
        let flow = flows(&args);
        for (app, web) in pairs {
            let (app_handle, web_handle) = (app.handle(), web.handle());
            for (handle, receiver) in [(app_handle, web), (web_handle, app)] {
                tasks.push(tokio::spawn(direction_v1(
                    handle,
                    receiver,
                    flow(),
                    args.v1_send,
                )));
            }
        }
    } else {
        let (pairs, _) = open_pairs(&args.target, args.pairs, 5000, 256, false).await?;
        let flow = flows(&args);
        for (app, web) in pairs {
            let (app_sink, app_stream) = app.split();
            let (web_sink, web_stream) = web.split();
            tasks.push(tokio::spawn(direction(app_sink, web_stream, flow())));
            tasks.push(tokio::spawn(direction(web_sink, app_stream, flow())));
        }
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
        clients.push(result.keep);
    }
    drop(clients);
    report(&args, total, counted, sent)
}

/// The run starts now: makes each direction's [`Flow`], with a window of its own.
fn flows(args: &ThroughputArgs) -> impl Fn() -> Flow {
    let warm_until = Instant::now() + Duration::from_secs_f64(args.run.warmup);
    let stop_at = warm_until + Duration::from_secs_f64(args.run.seconds);
    let (window, size) = (args.window, args.run.size);
    move || Flow {
        window: Arc::new(Semaphore::new(window)),
        size,
        warm_until,
        stop_at,
    }
}

/// Opens the pairs of `--v1-sans-io`, one after another.
async fn open_sans_io(args: &ThroughputArgs) -> Result<Vec<(SansIoSide, SansIoSide)>, String> {
    let app_base = crate::v1::base_url(&args.target.app_url);
    let web_base = crate::v1::base_url(&args.target.web_url);
    let run_id = crate::flow::run_id();
    let mut pairs = Vec::with_capacity(args.pairs);
    for n in 0..args.pairs {
        let id = crate::clients::channel_id(run_id, n);
        // Keys unique to this run and pair.
        let key = |side: u128| (u128::from(run_id) << 64) | (2 * n as u128 + side);
        let app = crate::sansio::open(&app_base, &id, "app", key(1)).await?;
        let web = crate::sansio::open(&web_base, &id, "web", key(2)).await?;
        pairs.push((app, web));
    }
    Ok(pairs)
}

type SansIoSide = (Arc<crate::sansio::Side>, crate::sansio::Stream);

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

async fn direction(mut sink: Sink, stream: Stream, flow: Flow) -> Result<DirectionResult, String> {
    // The sender publishes how many it sent once it stops, so the receiver knows when it has all.
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let sending = flow.clone();
    let sender = tokio::spawn(async move {
        let mut seq = 0;
        while let Some((bytes, window_used_up)) = sending.next_message(seq).await {
            sink.feed(Message::binary(Bytes::from(bytes)))
                .await
                .map_err(|err| err.to_string())?;
            if window_used_up {
                sink.flush().await.map_err(|err| err.to_string())?;
            }
            seq += 1;
        }
        sink.flush().await.map_err(|err| err.to_string())?;
        let _ = sent_tx.send(Some(seq));
        Ok::<_, String>(sink)
    });
    let incoming = stream.map(|message| match message {
        Ok(Message::Binary(bytes)) => Ok(Some(bytes)),
        Ok(_) => Ok(None),
        Err(err) => Err(err.to_string()),
    });
    let mut tally = Tally::new(flow);
    let sent = tally.receive_all(sent_rx, incoming).await?;
    let _sink = sender.await.map_err(|err| err.to_string())??;
    Ok(DirectionResult::new(tally, sent, None))
}

/// One direction of a v1 pair: `handle` sends (its client is the sender), `receiver` takes the
/// messages; the semaphore keeps `--window` messages in flight, as in the raw mode. `send`:
/// `send_binary` rather than `feed_binary` and `flush`.
async fn direction_v1(
    handle: wspair_client::Handle,
    mut receiver: wspair_client::Client,
    flow: Flow,
    send: bool,
) -> Result<DirectionResult, String> {
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let sending = flow.clone();
    let sender = tokio::spawn(async move {
        let mut seq = 0;
        while let Some((bytes, window_used_up)) = sending.next_message(seq).await {
            let payload = Bytes::from(bytes);
            if send {
                handle.send_binary(payload).await
            } else {
                // As the raw sender: queue each message, write the burst once the window is
                // used up.
                handle.feed_binary(payload).await
            }
            .map_err(|err| err.to_string())?;
            if window_used_up && !send {
                handle.flush().await.map_err(|err| err.to_string())?;
            }
            seq += 1;
        }
        handle.flush().await.map_err(|err| err.to_string())?;
        let _ = sent_tx.send(Some(seq));
        Ok::<_, String>(handle)
    });
    let mut tally = Tally::new(flow);
    let incoming = futures::stream::unfold(&mut receiver, async |receiver| {
        let item = match receiver.next_event().await? {
            wspair_client::Event::Message { payload, .. } => Ok(Some(payload)),
            _ => Ok(None),
        };
        Some((item, receiver))
    });
    let sent = tally.receive_all(sent_rx, Box::pin(incoming)).await?;
    let _handle = sender.await.map_err(|err| err.to_string())??;
    Ok(DirectionResult::new(tally, sent, Some(receiver)))
}
