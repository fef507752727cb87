//! `failover --v1`: a node dies under wspair.v1 clients carrying a steady load; every message
//! is checked across the reconnects, and each pair's resume time is measured.
//!
//! The layout is the raw mode's (see `failover.rs`): `--pairs` pairs with app and web on
//! different nodes, spread over every ordered pair of nodes, the last node killed with SIGKILL.
//! Each client is a `wspair-client` library instance whose URLs are its own node and, for the
//! clients of the node that dies, a refuge (alternately the peer's node and the third one): the
//! library moves to its next URL on every reconnect, after its own backoff.
//!
//! Every client sends a numbered message every `--interval-ms` from the moment the pairs are
//! open until `--after-secs` after the last pair flows again, whatever the state of its
//! connection (the library keeps what it cannot send yet). Then the senders stop, the receivers
//! wait until they have every message sent to them, and the sequence checks count what was
//! lost, duplicated or reordered: the protocol promises none of either, kill or not.
//!
//! A pair *resumes* when a message sent after the kill has arrived in each direction; its resume
//! time is the later of the two, from the moment `kill` returned. Every client sends one message
//! as soon as `kill` has returned, out of its schedule, so the figure does not include waiting
//! for the next tick; the clients' schedules are spread over the interval, so the load is even.
//!
//! `library_events` in the report counts what the clients were told besides messages:
//! reconnects (`connected`), disconnects by close code, refusals, stream resets, and
//! `peer reported raw` / `unnumbered message`: a node that says a v1 peer is raw makes its
//! client send what its outbox holds unnumbered, at most once (PROTOCOL.md §6), so a loss or a
//! duplicate there is the node's report, not the resume.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Semaphore, watch};
use wspair_client::{Client, Event, Handle, Role};

use crate::failover::{FailoverArgs, seed};
use crate::flow::{SeqCheck, header, payload};
use crate::v1::{base_url, config};

/// Payload size: the sequence number and the send time.
const SIZE: usize = 16;
/// How long receivers wait for the last messages once the senders stopped.
const DRAIN: Duration = Duration::from_secs(20);

/// What every direction shares with the run.
struct Clock {
    origin: Instant,
    /// ns after `origin` at which `kill` returned; `u64::MAX` before.
    kill_ns: AtomicU64,
    /// Library events other than messages, by kind (disconnects, refusals, stream resets).
    events: Mutex<BTreeMap<String, u64>>,
}

impl Clock {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    fn count(&self, kind: String) {
        *self
            .events
            .lock()
            .expect("not poisoned")
            .entry(kind)
            .or_default() += 1;
    }
}

/// What one direction of one pair lived through.
struct Direction {
    check: SeqCheck,
    sent: u64,
    /// Kill to the first arrival of a message sent after the kill.
    resumed: Option<Duration>,
    _client: Client,
}

pub async fn run(args: FailoverArgs) -> Result<(), String> {
    let nodes = args.nodes.len();
    if nodes < 3 {
        return Err("give at least three --node URLs: the last is killed".into());
    }
    let victim = nodes - 1;
    let layouts: Vec<(usize, usize)> = (1..nodes)
        .flat_map(|step| (0..nodes).map(move |a| (a, (a + step) % nodes)))
        .collect();
    let url = |node: usize| base_url(&args.nodes[node]);
    let run_id = (seed() % 1_000_000_000) as u32;
    let clock = Arc::new(Clock {
        origin: Instant::now(),
        kill_ns: AtomicU64::new(u64::MAX),
        events: Mutex::default(),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (killed_tx, killed_rx) = watch::channel(false);
    let interval = Duration::from_millis(args.interval_ms.max(1));

    // Open every pair, 128 clients at a time.
    let opening = Arc::new(Semaphore::new(128));
    let mut opened = Vec::with_capacity(args.pairs);
    let mut cases = Vec::with_capacity(args.pairs);
    for n in 0..args.pairs {
        let (app_node, web_node) = layouts[n % layouts.len()];
        let others: Vec<usize> = (0..nodes - 1)
            .filter(|node| *node != app_node && *node != web_node)
            .collect();
        let peer_node = if app_node == victim {
            web_node
        } else {
            app_node
        };
        let refuge = match (n / layouts.len()) % 2 {
            0 => peer_node,
            _ => others.first().copied().unwrap_or(peer_node),
        };
        let urls = |node: usize| {
            if node == victim {
                vec![url(node), url(refuge)]
            } else {
                vec![url(node)]
            }
        };
        cases.push(if app_node != victim && web_node != victim {
            "untouched"
        } else if refuge == peer_node {
            "reconnected to peer's node"
        } else {
            "reconnected to another node"
        });
        let (app_urls, web_urls) = (urls(app_node), urls(web_node));
        let opening = Arc::clone(&opening);
        opened.push(tokio::spawn(async move {
            let _permit = opening.acquire().await.expect("never closed");
            let id = crate::clients::channel_id(run_id, n);
            let connect = async |urls: Vec<String>, role| {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    Client::connect(config(&urls, &id, role)),
                )
                .await
                .map_err(|_| format!("pair {n}: no welcome within 10 s"))?
                .map_err(|err| format!("pair {n}: {err}"))
            };
            let app = connect(app_urls, Role::App).await?;
            let web = connect(web_urls, Role::Web).await?;
            Ok::<_, String>((app, web))
        }));
    }
    let mut directions = Vec::with_capacity(2 * args.pairs);
    let (flowing_tx, mut flowing_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut rng = seed();
    for task in opened {
        let (app, web) = task.await.map_err(|err| err.to_string())??;
        let (app_handle, web_handle) = (app.handle(), web.handle());
        for (handle, receiver) in [(app_handle, web), (web_handle, app)] {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let phase = interval.mul_f64((rng % 1000) as f64 / 1000.0);
            directions.push(tokio::spawn(direction(
                handle,
                receiver,
                Arc::clone(&clock),
                (interval, phase),
                killed_rx.clone(),
                stop_rx.clone(),
                flowing_tx.clone(),
            )));
        }
    }
    drop(flowing_tx);
    // Every direction has delivered a message before the kill.
    for _ in 0..directions.len() {
        tokio::time::timeout(Duration::from_secs(30), flowing_rx.recv())
            .await
            .map_err(|_| "some pairs did not flow within 30 s of opening")?;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;

    let asked = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-9", &args.kill_pid.to_string()])
        .status()
        .await
        .map_err(|err| format!("kill: {err}"))?;
    clock.kill_ns.store(clock.now_ns(), Ordering::Release);
    let _ = killed_tx.send(true);
    let kill_command = asked.elapsed();
    if !status.success() {
        return Err(format!("kill -9 {} failed: {status}", args.kill_pid));
    }
    // Each direction reports here once it resumed; the load goes on `after_secs` after the
    // last one (or the limit).
    let limit = Duration::from_secs_f64(args.limit_secs);
    let kill_at = clock.origin + Duration::from_nanos(clock.kill_ns.load(Ordering::Acquire));
    let mut resumed = 0;
    let deadline = tokio::time::Instant::from_std(kill_at + limit);
    while resumed < directions.len() {
        match tokio::time::timeout_at(deadline, flowing_rx.recv()).await {
            Ok(Some(())) => resumed += 1,
            _ => break,
        }
    }
    tokio::time::sleep(Duration::from_secs_f64(args.after_secs)).await;
    let _ = stop_tx.send(true);

    let mut results = Vec::with_capacity(directions.len());
    for task in directions {
        results.push(task.await.map_err(|err| err.to_string())??);
    }
    report(&args, &clock, &cases, kill_command, &results)
}

/// One direction: `handle` sends every `interval` (first after `phase`), and at once when the
/// kill has happened, until stopped; `receiver` checks what arrives and notes when the first
/// message sent after the kill did.
async fn direction(
    handle: Handle,
    mut receiver: Client,
    clock: Arc<Clock>,
    (interval, phase): (Duration, Duration),
    mut killed: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
    flowing: tokio::sync::mpsc::UnboundedSender<()>,
) -> Result<Direction, String> {
    let sender_clock = Arc::clone(&clock);
    let mut sender_stop = stop.clone();
    let sender = tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        let mut kill_seen = false;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = stopped(&mut killed), if !kill_seen => kill_seen = true,
                () = stopped(&mut sender_stop) => break,
            }
            let body = payload(seq, sender_clock.now_ns(), SIZE);
            // With a full window this waits, and the load of this direction pauses.
            handle
                .send_binary(Bytes::from(body))
                .await
                .map_err(|err| format!("send: {err}"))?;
            seq += 1;
        }
        Ok::<_, String>((seq, handle))
    });
    let mut check = SeqCheck::default();
    let mut resumed = None;
    let mut first = true;
    let mut sent: Option<u64> = None;
    let mut sender = Some(sender);
    let mut drain_until = None;
    loop {
        if sent.is_some_and(|sent| check.next >= sent) {
            break;
        }
        let event = tokio::select! {
            event = receiver.next_event() => event,
            () = stopped(&mut stop), if sent.is_none() && drain_until.is_none() => {
                let (count, _handle) = sender.take().expect("once").await.map_err(|err| err.to_string())??;
                sent = Some(count);
                drain_until = Some(tokio::time::Instant::now() + DRAIN);
                continue;
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or_else(|| tokio::time::Instant::now() + DRAIN)), if drain_until.is_some() => break,
        };
        match event {
            Some(Event::Message {
                payload,
                seq: library_seq,
                ..
            }) => {
                if library_seq == 0 {
                    // Sent unnumbered, at most once: what a v1 client sends a peer its node
                    // reports raw.
                    clock.count("unnumbered message".into());
                }
                let (seq, sent_ns) = header(&payload).ok_or("short payload")?;
                check.observe(seq);
                if first {
                    first = false;
                    let _ = flowing.send(());
                }
                let kill_ns = clock.kill_ns.load(Ordering::Acquire);
                if resumed.is_none() && sent_ns >= kill_ns {
                    resumed = Some(Duration::from_nanos(clock.now_ns() - kill_ns));
                    let _ = flowing.send(());
                }
            }
            Some(Event::Disconnected { code, .. }) => {
                clock.count(format!(
                    "disconnected ({})",
                    code.map_or("no close frame".into(), |c| c.to_string())
                ));
            }
            Some(Event::Refused { status, .. }) => {
                clock.count(format!("reconnect refused ({status})"))
            }
            Some(Event::StreamReset { .. }) => clock.count("stream reset".into()),
            Some(Event::Connected { .. }) => clock.count("connected".into()),
            Some(Event::RawPeer) => clock.count("peer reported raw".into()),
            Some(_) => {}
            None => return Err("a client stopped".into()),
        }
    }
    let sent = sent.unwrap_or(check.next);
    check.finish(sent);
    Ok(Direction {
        check,
        sent,
        resumed,
        _client: receiver,
    })
}

/// Waits until the run says stop (or never, if the run is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// min, median, p99 and max in ms of `times`, and how many there are.
fn distribution(mut times: Vec<Duration>) -> serde_json::Value {
    if times.is_empty() {
        return serde_json::json!({ "count": 0 });
    }
    times.sort();
    let at = |q: f64| {
        let index = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1;
        times[index].as_secs_f64() * 1e3
    };
    serde_json::json!({
        "count": times.len(),
        "min_ms": times[0].as_secs_f64() * 1e3,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

fn report(
    args: &FailoverArgs,
    clock: &Clock,
    cases: &[&'static str],
    kill_command: Duration,
    results: &[Direction],
) -> Result<(), String> {
    let mut total = SeqCheck::default();
    let mut sent = 0;
    for direction in results {
        total.merge(&direction.check);
        sent += direction.sent;
    }
    // Directions 2n and 2n+1 are pair n's.
    let pairs: Vec<Option<Duration>> = results
        .chunks(2)
        .map(|both| both[0].resumed.zip(both[1].resumed).map(|(a, b)| a.max(b)))
        .collect();
    let never = pairs.iter().filter(|p| p.is_none()).count();
    let mut by_case = serde_json::Map::new();
    for case in [
        "untouched",
        "reconnected to peer's node",
        "reconnected to another node",
    ] {
        let times = pairs
            .iter()
            .zip(cases)
            .filter(|(_, c)| **c == case)
            .filter_map(|(p, _)| *p)
            .collect();
        by_case.insert(case.into(), distribution(times));
    }
    let events = clock.events.lock().expect("not poisoned");
    let json = serde_json::json!({
        "mode": "failover", "v1": true,
        "pairs": pairs.len(),
        "nodes": args.nodes.len(),
        "interval_ms": args.interval_ms,
        "offered_msgs_per_second": 2.0 * pairs.len() as f64 * 1000.0 / args.interval_ms.max(1) as f64,
        "kill_command_ms": kill_command.as_secs_f64() * 1e3,
        "sent": sent, "received": total.received, "lost": total.lost,
        "duplicated_or_reordered": total.duplicated_or_reordered,
        "resume": distribution(pairs.iter().flatten().copied().collect()),
        "resume_by_case": by_case,
        "never_resumed": never,
        "library_events": events.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("valid JSON")
        );
    }
    if never > 0 {
        return Err(format!(
            "{never} pairs did not flow both ways within {} s of the kill",
            args.limit_secs
        ));
    }
    if total.lost > 0 || total.duplicated_or_reordered > 0 {
        return Err("messages were lost, duplicated or reordered".into());
    }
    Ok(())
}
