//! `latency` mode: open loop at a fixed total rate; one-way latency into HdrHistograms.
//!
//! Each message carries the time it was scheduled to be sent and the time it was sent. The
//! corrected histogram measures from the schedule, so a sender held up by the relay does not
//! hide the delay it caused (coordinated omission); it also includes the load generator's own
//! lateness. The plain histogram measures from the moment of sending. Both are reported.
//! Messages are sent by the [`pacer`](crate::pacer) thread and received here, one task per
//! direction. With `--v1`, both go through `wspair-client` clients: the pacer feeds each
//! message to a handle and flushes it, and each receiving task takes messages with `next_event`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::{Target, Ws};
use crate::flow::{RunArgs, SeqCheck, header, open_pairs};
use crate::pacer::{self, RawSender, Schedule, Sender, V1Sender};
use crate::procfs;

#[derive(Debug, clap::Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    target: Target,
    /// Pairs driven at once.
    #[arg(long, default_value_t = 100)]
    pairs: usize,
    /// Total messages per second, over every pair and both directions.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// PID of a server whose CPU use during the measured seconds is reported (several may
    /// be given, for a cluster).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Drive `wspair.v1` clients (the `wspair-client` library) instead of raw WebSockets. The
    /// URLs' queries are dropped: the library adds its own.
    #[arg(long)]
    v1: bool,
    #[command(flatten)]
    run: RunArgs,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds")
}

pub async fn run(args: LatencyArgs) -> Result<(), String> {
    let warm_ns = Duration::from_secs_f64(args.run.warmup).as_nanos() as u64;
    let total_ns = warm_ns + Duration::from_secs_f64(args.run.seconds).as_nanos() as u64;
    let schedule = Schedule {
        rate: args.rate.max(1),
        messages: (u128::from(total_ns) * u128::from(args.rate) / 1_000_000_000) as u64,
        senders: 2 * args.pairs as u64,
    };
    // Sender 2i writes on pair i's app side, sender 2i+1 on its web side; receivers likewise
    // in the order of the senders whose messages they take.
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut v1_receivers = Vec::new();
    if args.v1 {
        for (app, web) in crate::v1::open_pairs(&args.target, args.pairs, 256).await? {
            senders.push(Sender::V1(V1Sender::new(app.handle())));
            senders.push(Sender::V1(V1Sender::new(web.handle())));
            v1_receivers.push(web);
            v1_receivers.push(app);
        }
    } else {
        for (app, web) in open_pairs(&args.target, args.pairs, 5000, 256, false)
            .await?
            .0
        {
            let tcp = |ws: &crate::clients::Ws| {
                ws.get_ref()
                    .tcp()
                    .ok_or_else(|| {
                        "latency mode writes on the socket itself: use ws:// URLs".to_string()
                    })
                    .and_then(RawSender::new)
            };
            senders.push(Sender::Raw(tcp(&app)?));
            senders.push(Sender::Raw(tcp(&web)?));
            receivers.push(web);
            receivers.push(app);
        }
    }
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for (sender, ws) in receivers.into_iter().enumerate() {
        let expected = schedule.messages_for(sender as u64);
        tasks.push(tokio::spawn(receive(
            Incoming::Raw(Box::new(ws)),
            origin,
            expected,
            total_ns,
            warm_ns,
        )));
    }
    for (sender, client) in v1_receivers.into_iter().enumerate() {
        let expected = schedule.messages_for(sender as u64);
        tasks.push(tokio::spawn(receive(
            Incoming::V1(client),
            origin,
            expected,
            total_ns,
            warm_ns,
        )));
    }
    let cpu = tokio::spawn(sample_cpu(
        args.server_pid.clone(),
        origin + Duration::from_nanos(warm_ns),
        origin + Duration::from_nanos(total_ns),
    ));
    let size = args.run.size;
    let pacer = std::thread::Builder::new()
        .name("pacer".into())
        .spawn(move || pacer::pace(schedule, origin, size, senders, DRAIN))
        .map_err(|err| err.to_string())?;
    let mut histogram = new_histogram();
    let mut corrected = new_histogram();
    let mut total = SeqCheck::default();
    // v1 clients stay open until every direction is done: each also sends for the other.
    let mut clients = Vec::new();
    for task in tasks {
        let (check, part, part_corrected, client) = task.await.map_err(|err| err.to_string())??;
        clients.push(client);
        total.merge(&check);
        histogram.add(&part).map_err(|err| err.to_string())?;
        corrected
            .add(&part_corrected)
            .map_err(|err| err.to_string())?;
    }
    let cpu = cpu.await.map_err(|err| err.to_string())??;
    let us = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let cus = |q: f64| corrected.value_at_quantile(q) as f64 / 1000.0;
    let achieved = histogram.len() as f64 / args.run.seconds;
    if args.run.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "latency", "v1": args.v1, "pairs": args.pairs, "rate": args.rate, "achieved_rate": achieved,
                "size": args.run.size, "seconds": args.run.seconds,
                "p50_us": us(0.5), "p90_us": us(0.9), "p99_us": us(0.99), "p999_us": us(0.999),
                "max_us": histogram.max() as f64 / 1000.0,
                "corrected_p50_us": cus(0.5), "corrected_p99_us": cus(0.99),
                "corrected_p999_us": cus(0.999), "corrected_max_us": corrected.max() as f64 / 1000.0,
                "server_cpu_percent": cpu.server_percent, "generator_cpu_percent": cpu.generator_percent,
                "received": total.received, "lost": total.lost,
                "duplicated_or_reordered": total.duplicated_or_reordered,
            })
        );
    } else {
        println!(
            "latency: {} msg/s asked, {achieved:.0} measured; p50 {:.0} µs, p90 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs, max {:.0} µs; \
             from schedule: p50 {:.0} µs, p99 {:.0} µs, p99.9 {:.0} µs; CPU: servers {:.0} %, generator {:.0} %; \
             lost {}, dup/reordered {}",
            args.rate,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            histogram.max() as f64 / 1000.0,
            cus(0.5),
            cus(0.99),
            cus(0.999),
            cpu.server_percent,
            cpu.generator_percent,
            total.lost,
            total.duplicated_or_reordered
        );
    }
    pacer.join().map_err(|_| "the pacer thread panicked")??;
    drop(clients);
    if total.lost > 0 || total.duplicated_or_reordered > 0 {
        return Err("messages were lost, duplicated or reordered".into());
    }
    Ok(())
}

/// CPU used during the measured seconds, in percent of one CPU.
struct CpuUse {
    server_percent: f64,
    generator_percent: f64,
}

/// Samples the servers' and this process's CPU time at `from` and at `to`.
async fn sample_cpu(server_pids: Vec<u32>, from: Instant, to: Instant) -> Result<CpuUse, String> {
    let sample = || -> Result<(f64, f64), String> {
        Ok((
            procfs::total_cpu_seconds(&server_pids)?,
            procfs::cpu_seconds("self")?,
        ))
    };
    tokio::time::sleep_until(from.into()).await;
    let (server_before, generator_before) = sample()?;
    tokio::time::sleep_until(to.into()).await;
    let (server_after, generator_after) = sample()?;
    let seconds = to.duration_since(from).as_secs_f64();
    Ok(CpuUse {
        server_percent: 100.0 * (server_after - server_before) / seconds,
        generator_percent: 100.0 * (generator_after - generator_before) / seconds,
    })
}

/// How long the receivers wait for the last messages, and the pacer for full sockets.
const DRAIN: Duration = Duration::from_secs(10);

/// Where a direction's messages come from.
enum Incoming {
    /// A raw socket (boxed: the client is a pointer, the socket a few hundred bytes).
    Raw(Box<Ws>),
    /// A `wspair-client` client.
    V1(wspair_client::Client),
}

impl Incoming {
    /// The next message's payload; `None` for anything else; an error when the connection
    /// ended.
    async fn next(&mut self) -> Result<Option<bytes::Bytes>, String> {
        match self {
            Incoming::Raw(ws) => match ws.next().await {
                Some(Ok(Message::Binary(bytes))) => Ok(Some(bytes)),
                Some(Ok(_)) => Ok(None),
                Some(Err(err)) => Err(err.to_string()),
                None => Err("connection closed".into()),
            },
            Incoming::V1(client) => match client.next_event().await {
                Some(wspair_client::Event::Message { payload, .. }) => Ok(Some(payload)),
                Some(_) => Ok(None),
                None => Err("the client stopped".into()),
            },
        }
    }
}

type Received = (
    SeqCheck,
    Histogram<u64>,
    Histogram<u64>,
    Option<wspair_client::Client>,
);

/// Receives one direction's messages and measures each.
async fn receive(
    mut stream: Incoming,
    origin: Instant,
    n_messages: u64,
    total_ns: u64,
    warm_ns: u64,
) -> Result<Received, String> {
    let mut histogram = new_histogram();
    let mut corrected = new_histogram();
    let mut check = SeqCheck::default();
    let deadline = tokio::time::Instant::from_std(origin + Duration::from_nanos(total_ns) + DRAIN);
    while check.next < n_messages {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => break,
            Ok(Ok(Some(bytes))) => {
                let received_ns = origin.elapsed().as_nanos() as u64;
                let (seq, scheduled_ns) = header(&bytes).ok_or("short payload")?;
                check.observe(seq);
                let sent_ns = u64::from_be_bytes(
                    bytes
                        .get(16..24)
                        .ok_or("short payload")?
                        .try_into()
                        .expect("8 bytes"),
                );
                if scheduled_ns >= warm_ns {
                    let _ = histogram.record(received_ns.saturating_sub(sent_ns).max(1_000));
                    let _ = corrected.record(received_ns.saturating_sub(scheduled_ns).max(1_000));
                }
            }
            Ok(Ok(None)) => continue,
            Ok(Err(err)) => return Err(err),
        }
    }
    check.finish(n_messages);
    let client = match stream {
        Incoming::V1(client) => Some(client),
        Incoming::Raw(_) => None,
    };
    Ok((check, histogram, corrected, client))
}
