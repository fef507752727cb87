//! `failover` mode: how long a cluster takes to relay every pair again after one node dies.
//!
//! Opens `--pairs` pairs over the nodes given with `--node`, app and web always on different
//! nodes and spread evenly over every ordered pair of nodes (with three nodes, a third of the
//! clients are on each, and two thirds of the pairs have one side on the node that dies). Every
//! pair relays one message each way. Then the generator kills the last node (`--kill-pid`,
//! SIGKILL) and starts the clock. That node's clients see their socket die and reconnect, after
//! a random delay of up to `--reconnect-jitter-ms`, to one of the other nodes: alternately their
//! peer's node and another, so both cases are measured. A refused reconnect (an HTTP status, a
//! refused or reset connection) is counted by kind and retried after `--retry-ms` plus jitter;
//! a surviving client whose socket closes is counted and reconnects to its own node.
//!
//! A pair has recovered when a message sent after the kill has crossed it in each direction.
//! Both sides send one as soon as both are connected to live nodes (at once for the pairs the
//! death did not touch), and again every `--retry-ms` until it arrives, since a message with no
//! peer to go to is dropped. Losses are expected here and not checked.
//!
//! Why: a node's death is the disruption a cluster is built for; this is what its clients feel,
//! including whatever the survivors keep of the dead node (its routes, the credit its sessions
//! held) until they declare it dead, `registry.node-ttl` after its last heartbeat.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::clients::{Connector, SourceIps, Ws, channel_id, parse_ip_range};

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// A node's WebSocket URL, with `{role}` (app or web) and `{id}` (the channel id) to fill
    /// in; once per node. The last one is the node that is killed.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// PID of the last node's process, killed with SIGKILL.
    #[arg(long)]
    pub kill_pid: u32,
    /// Pairs (two connections each).
    #[arg(long, default_value_t = 1000)]
    pub pairs: usize,
    /// A client whose socket died waits a random delay of up to this many ms before it
    /// reconnects (0: at once).
    #[arg(long, default_value_t = 100)]
    reconnect_jitter_ms: u64,
    /// Ms between attempts: a failed reconnect (plus jitter), a message not yet relayed.
    #[arg(long, default_value_t = 50)]
    retry_ms: u64,
    /// Seconds after the kill by which a pair must have recovered.
    #[arg(long, default_value_t = 30.0)]
    pub limit_secs: f64,
    /// Seconds between verifying every pair and the kill.
    #[arg(long, default_value_t = 1.0)]
    pub settle_secs: f64,
    /// Source addresses for client sockets, as `A` or `A-B`.
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_ip_range)]
    source_ips: SourceIps,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print a line per pair on stderr: its nodes, when each direction recovered, messages sent.
    #[arg(long)]
    per_pair: bool,
    /// Drive `wspair.v1` clients (the `wspair-client` library) under a steady load instead of
    /// raw probes, and count lost, duplicated and reordered messages across the reconnects
    /// (see `failover_v1.rs`). `--reconnect-jitter-ms` and `--retry-ms` do not apply: the
    /// library reconnects by itself, after its own backoff (0–100 ms at first).
    #[arg(long)]
    pub v1: bool,
    /// With `--v1`: ms between two messages of one client (each side of every pair sends).
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// With `--v1`: seconds the load goes on after every pair flows again (or the limit).
    #[arg(long, default_value_t = 2.0)]
    pub after_secs: f64,
}

/// One side of a pair.
struct Side {
    role: &'static str,
    node: usize,
    ws: Option<Ws>,
    /// When a side whose socket died reconnects.
    reconnect_at: Option<tokio::time::Instant>,
}

/// What a pair lived through after the kill.
struct Outcome {
    /// `untouched`, `reconnected to peer's node` or `reconnected to another node`.
    case: &'static str,
    /// Kill to the second direction's first message.
    recovered: Option<Duration>,
    /// Kill to the moment the client on the dead node saw its socket die.
    noticed: Option<Duration>,
    /// Kill to the reconnected client's 101.
    reconnected: Option<Duration>,
    /// What was missing, for a pair that did not recover.
    missing: String,
    /// Kept open until every pair is done.
    _sockets: Vec<Ws>,
}

/// Everything the pairs share: where to connect, and the errors they met, by kind.
struct Shared {
    nodes: Vec<String>,
    victim: usize,
    connector: Connector,
    retry: Duration,
    jitter_ms: u64,
    limit: Duration,
    per_pair: bool,
    errors: Mutex<BTreeMap<String, (u64, String)>>,
}

impl Shared {
    fn url(&self, node: usize, role: &str) -> String {
        self.nodes[node].replace("{role}", role)
    }

    fn count(&self, kind: String, detail: String) {
        let mut errors = self.errors.lock().expect("not poisoned");
        errors.entry(kind).or_insert((0, detail)).0 += 1;
    }
}

pub async fn run(args: FailoverArgs) -> Result<(), String> {
    if args.v1 {
        return crate::failover_v1::run(args).await;
    }
    let nodes = args.nodes.len();
    if nodes < 3 {
        return Err("give at least three --node URLs: the last is killed, and its clients reconnect to the peer's node or another".into());
    }
    // Every ordered pair of distinct nodes, in turn.
    let layouts: Vec<(usize, usize)> = (1..nodes)
        .flat_map(|step| (0..nodes).map(move |a| (a, (a + step) % nodes)))
        .collect();
    let shared = Arc::new(Shared {
        nodes: args.nodes.clone(),
        victim: nodes - 1,
        connector: Connector::with_source_ips(&args.source_ips, false),
        retry: Duration::from_millis(args.retry_ms.max(1)),
        jitter_ms: args.reconnect_jitter_ms,
        limit: Duration::from_secs_f64(args.limit_secs),
        per_pair: args.per_pair,
        errors: Mutex::default(),
    });
    let run_id = (seed() % 1_000_000_000) as u32;

    let opening = Arc::new(Semaphore::new(128));
    let mut opened = Vec::with_capacity(args.pairs);
    for n in 0..args.pairs {
        let (shared, opening) = (Arc::clone(&shared), Arc::clone(&opening));
        let (app_node, web_node) = layouts[n % layouts.len()];
        opened.push(tokio::spawn(async move {
            let _permit = opening.acquire().await.expect("never closed");
            let id = channel_id(run_id, n);
            let mut app = shared
                .connector
                .connect(&shared.url(app_node, "app"), &id)
                .await?;
            let mut web = shared
                .connector
                .connect(&shared.url(web_node, "web"), &id)
                .await?;
            verify(&mut app, &mut web, "a", n).await?;
            verify(&mut web, &mut app, "w", n).await?;
            Ok::<_, String>((id, app, web))
        }));
    }
    let (killed_tx, killed_rx) = watch::channel(None::<Instant>);
    let mut pairs = Vec::with_capacity(args.pairs);
    for (n, task) in opened.into_iter().enumerate() {
        let (id, app, web) = task.await.map_err(|err| err.to_string())??;
        let (app_node, web_node) = layouts[n % layouts.len()];
        // Alternately the peer's node and another live one.
        let others: Vec<usize> = (0..nodes - 1)
            .filter(|node| *node != app_node && *node != web_node)
            .collect();
        let peer_node = if app_node == shared.victim {
            web_node
        } else {
            app_node
        };
        let refuge = match (n / layouts.len()) % 2 {
            0 => peer_node,
            _ => others.first().copied().unwrap_or(peer_node),
        };
        let sides = [side("app", app_node, app), side("web", web_node, web)];
        pairs.push(tokio::spawn(after_kill(
            n,
            id,
            sides,
            refuge,
            Arc::clone(&shared),
            killed_rx.clone(),
        )));
    }
    let victim_clients = layouts
        .iter()
        .cycle()
        .take(args.pairs)
        .filter(|(a, w)| *a == shared.victim || *w == shared.victim)
        .count();

    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    // The clock starts once `kill` has returned: the signal was delivered by then.
    let asked = Instant::now();
    let status = tokio::process::Command::new("kill")
        .args(["-9", &args.kill_pid.to_string()])
        .status()
        .await
        .map_err(|err| format!("kill: {err}"))?;
    let kill_at = Instant::now();
    let killed_at_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    if !status.success() {
        return Err(format!("kill -9 {} failed: {status}", args.kill_pid));
    }
    let kill_command = kill_at - asked;
    killed_tx.send_replace(Some(kill_at));

    let mut outcomes = Vec::with_capacity(pairs.len());
    for task in pairs {
        outcomes.push(task.await.map_err(|err| err.to_string())?);
    }
    report(
        &args,
        &shared,
        victim_clients,
        killed_at_unix,
        kill_command,
        &outcomes,
    )
}

fn side(role: &'static str, node: usize, ws: Ws) -> Side {
    Side {
        role,
        node,
        ws: Some(ws),
        reconnect_at: None,
    }
}

/// Pair `n` from the kill on: reconnects what died, sends a message each way until one has
/// arrived, and returns what it took.
async fn after_kill(
    n: usize,
    id: String,
    mut sides: [Side; 2],
    refuge: usize,
    shared: Arc<Shared>,
    mut killed: watch::Receiver<Option<Instant>>,
) -> Outcome {
    let Ok(kill_at) = killed
        .wait_for(Option::is_some)
        .await
        .map(|at| (*at).expect("some"))
    else {
        return Outcome::untouched_unfinished(sides);
    };
    let deadline = tokio::time::Instant::from_std(kill_at + shared.limit);
    let affected = sides.iter().any(|side| side.node == shared.victim);
    let mut rng = seed() ^ n as u64;
    let mut jitter = |max_ms: u64| Duration::from_millis(xorshift(&mut rng) % (max_ms + 1));
    // Index 0: app to web (received by the web side), 1: web to app.
    let mut recovered: [Option<Duration>; 2] = [None, None];
    let mut sent = [0u64; 2];
    let mut noticed = None;
    let mut reconnected = None;
    let mut next_probe = (!affected).then(tokio::time::Instant::now);
    while recovered.iter().any(Option::is_none) {
        let wake = [next_probe, sides[0].reconnect_at, sides[1].reconnect_at]
            .into_iter()
            .flatten()
            .fold(deadline, tokio::time::Instant::min);
        let [app, web] = &mut sides;
        let (index, read) = tokio::select! {
            read = next(&mut app.ws) => (0, Some(read)),
            read = next(&mut web.ws) => (1, Some(read)),
            () = tokio::time::sleep_until(wake) => (0, None),
        };
        let now = tokio::time::Instant::now();
        if let Some(read) = read {
            let side = &mut sides[index];
            match read {
                Some(Ok(Message::Text(text))) => {
                    // A message received by the web side went app to web (direction 0).
                    let direction = 1 - index;
                    if text.starts_with(&format!("p{direction} ")) && recovered[direction].is_none()
                    {
                        recovered[direction] = Some(kill_at.elapsed());
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    dead(
                        side,
                        &shared,
                        frame.map(|f| u16::from(f.code)),
                        now,
                        &mut jitter,
                    );
                    next_probe = None;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    if side.node == shared.victim && noticed.is_none() {
                        noticed = Some(kill_at.elapsed());
                    }
                    dead(side, &shared, None, now, &mut jitter);
                    next_probe = None;
                }
            }
            continue;
        }
        if now >= deadline {
            break;
        }
        for side in &mut sides {
            if side.reconnect_at.is_some_and(|at| at <= now) {
                let node = if side.node == shared.victim {
                    refuge
                } else {
                    side.node
                };
                let attempt = tokio::time::timeout(
                    Duration::from_secs(5),
                    shared
                        .connector
                        .try_connect(&shared.url(node, side.role), &id),
                )
                .await;
                match attempt {
                    Ok(Ok(ws)) => {
                        side.ws = Some(ws);
                        side.node = node;
                        side.reconnect_at = None;
                        reconnected = Some(kill_at.elapsed());
                    }
                    Ok(Err(failure)) => {
                        shared.count(failure.kind, failure.detail);
                        side.reconnect_at = Some(now + shared.retry + jitter(shared.jitter_ms));
                    }
                    Err(_) => {
                        shared.count("reconnect timed out (5 s)".into(), String::new());
                        side.reconnect_at = Some(now + shared.retry + jitter(shared.jitter_ms));
                    }
                }
            }
        }
        let live = sides
            .iter()
            .all(|side| side.ws.is_some() && side.node != shared.victim);
        if !live {
            next_probe = None;
            continue;
        }
        if next_probe.is_none_or(|at| at <= tokio::time::Instant::now()) {
            for direction in 0..2 {
                if recovered[direction].is_none() {
                    let text = format!("p{direction} {}", sent[direction]);
                    sent[direction] += 1;
                    if let Some(ws) = sides[direction].ws.as_mut() {
                        // A failed send shows up as a failed read.
                        let _ = ws.send(Message::text(text)).await;
                    }
                }
            }
            next_probe = Some(tokio::time::Instant::now() + shared.retry);
        }
    }
    if shared.per_pair {
        eprintln!(
            "{id}: app on node {}, web on node {}; app to web after {:?}, web to app after {:?}; messages sent {sent:?}; reconnected after {reconnected:?}",
            sides[0].node, sides[1].node, recovered[0], recovered[1]
        );
    }
    let case = if !affected {
        "untouched"
    } else if sides[0].node == sides[1].node {
        "reconnected to peer's node"
    } else {
        "reconnected to another node"
    };
    let missing = ["app to web", "web to app"]
        .iter()
        .zip(recovered)
        .filter(|(_, at)| at.is_none())
        .map(|(what, _)| *what)
        .collect::<Vec<_>>()
        .join(", ");
    let missing = if missing.is_empty() {
        missing
    } else {
        let state: Vec<String> = sides
            .iter()
            .map(|s| {
                let up = if s.ws.is_some() { "up" } else { "down" };
                format!("{} on node {} {up}", s.role, s.node)
            })
            .collect();
        format!("{id}: {missing} never relayed ({})", state.join(", "))
    };
    Outcome {
        case,
        recovered: recovered[0].zip(recovered[1]).map(|(a, b)| a.max(b)),
        noticed,
        reconnected,
        missing,
        _sockets: sides.into_iter().filter_map(|side| side.ws).collect(),
    }
}

impl Outcome {
    fn untouched_unfinished(sides: [Side; 2]) -> Outcome {
        Outcome {
            case: "untouched",
            recovered: None,
            noticed: None,
            reconnected: None,
            missing: "the kill never came".into(),
            _sockets: sides.into_iter().filter_map(|side| side.ws).collect(),
        }
    }
}

/// A side's socket died (or was closed with `code`): counted if its node lives on, and
/// reconnected after a jittered delay.
fn dead(
    side: &mut Side,
    shared: &Shared,
    code: Option<u16>,
    now: tokio::time::Instant,
    jitter: &mut impl FnMut(u64) -> Duration,
) {
    if side.node != shared.victim {
        let code = code.map_or("no close frame".into(), |code| code.to_string());
        shared.count(
            format!("client on a live node closed ({code})"),
            format!("{} on node {}", side.role, side.node),
        );
    }
    side.ws = None;
    side.reconnect_at = Some(now + jitter(shared.jitter_ms));
}

/// The next thing a socket yields; never, if it is not connected.
async fn next(ws: &mut Option<Ws>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

/// Sends `text` from `from` and checks `to` receives it.
async fn verify(from: &mut Ws, to: &mut Ws, text: &str, n: usize) -> Result<(), String> {
    from.send(Message::text(text))
        .await
        .map_err(|err| err.to_string())?;
    match tokio::time::timeout(Duration::from_secs(10), next_text(to)).await {
        Ok(Some(got)) if got == text => Ok(()),
        other => Err(format!("pair {n}: not relayed before the kill: {other:?}")),
    }
}

/// The next text message, skipping pings and pongs.
async fn next_text(ws: &mut Ws) -> Option<String> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(text)) => return Some(text.as_str().to_owned()),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            _ => return None,
        }
    }
}

pub fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
        | 1
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// p50, p99 and max in ms of `times`, and how many there are.
pub fn summary(mut times: Vec<Duration>) -> serde_json::Value {
    times.sort();
    let at = |q: f64| {
        let index = ((q * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1;
        times[index].as_secs_f64() * 1e3
    };
    if times.is_empty() {
        return serde_json::json!({ "count": 0 });
    }
    serde_json::json!({
        "count": times.len(),
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "max_ms": at(1.0),
    })
}

fn report(
    args: &FailoverArgs,
    shared: &Shared,
    victim_clients: usize,
    killed_at_unix: f64,
    kill_command: Duration,
    outcomes: &[Outcome],
) -> Result<(), String> {
    let recovered: Vec<Duration> = outcomes.iter().filter_map(|o| o.recovered).collect();
    let never: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.recovered.is_none())
        .map(|o| o.missing.as_str())
        .collect();
    let all = (never.is_empty()).then(|| recovered.iter().max().copied().unwrap_or_default());
    let mut by_case = serde_json::Map::new();
    for case in [
        "untouched",
        "reconnected to peer's node",
        "reconnected to another node",
    ] {
        let times = outcomes
            .iter()
            .filter(|o| o.case == case)
            .filter_map(|o| o.recovered)
            .collect();
        by_case.insert(case.into(), summary(times));
    }
    let errors = shared.errors.lock().expect("not poisoned");
    let json = serde_json::json!({
        "mode": "failover",
        "pairs": outcomes.len(),
        "nodes": args.nodes.len(),
        "clients_on_killed_node": victim_clients,
        "killed_at_unix": killed_at_unix,
        "kill_command_ms": kill_command.as_secs_f64() * 1e3,
        "reconnect_jitter_ms": args.reconnect_jitter_ms,
        "retry_ms": args.retry_ms,
        "limit_seconds": args.limit_secs,
        "all_pairs_flowing_seconds": all.map(|d| d.as_secs_f64()),
        "recovery": summary(recovered),
        "recovery_by_case": by_case,
        "socket_death_noticed": summary(outcomes.iter().filter_map(|o| o.noticed).collect()),
        "reconnected": summary(outcomes.iter().filter_map(|o| o.reconnected).collect()),
        "never_recovered": never.len(),
        "never_recovered_examples": never.iter().take(5).collect::<Vec<_>>(),
        "errors": errors.iter().map(|(kind, (n, _))| (kind.clone(), serde_json::json!(n))).collect::<serde_json::Map<_, _>>(),
        "error_examples": errors.iter().map(|(kind, (_, detail))| (kind.clone(), serde_json::json!(detail))).collect::<serde_json::Map<_, _>>(),
    });
    if args.json {
        println!("{json}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&json).expect("valid JSON")
        );
    }
    if !never.is_empty() {
        return Err(format!(
            "{} pairs did not relay both ways within {} s of the kill",
            never.len(),
            args.limit_secs
        ));
    }
    Ok(())
}
