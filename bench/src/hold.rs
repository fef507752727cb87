//! `hold` mode: open many idle pairs, verify each, and report the server's memory per
//! connection and the connect rate achieved.

use std::time::Duration;

use crate::clients::Target;
use crate::flow::{open_pairs, verify};
use crate::procfs::{cpu_seconds, rss_kib, total_cpu_seconds};

#[derive(Debug, clap::Args)]
pub struct HoldArgs {
    #[command(flatten)]
    target: Target,
    /// Pairs to open (two connections each).
    #[arg(long, default_value_t = 1000)]
    pairs: usize,
    /// New connections per second to aim for.
    #[arg(long, default_value_t = 5000)]
    connect_rate: u32,
    /// Connections being opened at once, at most.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// PID of the server whose RSS is reported (several may be given, for a cluster).
    #[arg(long)]
    server_pid: Vec<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to keep the pairs open after reporting, so scripts can inspect the server.
    #[arg(long, default_value_t = 0.0)]
    linger: f64,
    /// After verifying, relay this many more messages each way on every pair (checked in
    /// order). Phase changes are announced on stderr (`phase connected`, `phase relayed`,
    /// `phase closing`) so a script can time what the server did in each.
    #[arg(long, default_value_t = 0)]
    relay: usize,
    /// Seconds to wait after announcing each phase before starting the next, so a script can
    /// take a snapshot of the server (or Redis) between phases.
    #[arg(long, default_value_t = 0.0)]
    phase_pause: f64,
    /// Verify each pair (one message each way) as soon as it is open, inside the timed connect
    /// phase and its `--concurrency`, so the connect rate counts verified pairs. Without it,
    /// pairs are verified one by one after the connect phase, untimed.
    #[arg(long)]
    verify_each: bool,
}

pub async fn run(args: HoldArgs) -> Result<(), String> {
    let rss_before = total_rss(&args.server_pid)?;
    let cpu_before = (cpu_seconds("self")?, total_cpu_seconds(&args.server_pid)?);
    let (mut pairs, connect_time) = open_pairs(
        &args.target,
        args.pairs,
        args.connect_rate,
        args.concurrency,
        args.verify_each,
    )
    .await?;
    let generator_cpu = cpu_seconds("self")? - cpu_before.0;
    let server_cpu = total_cpu_seconds(&args.server_pid)? - cpu_before.1;
    let connect_secs = connect_time.as_secs_f64();
    let connections = 2 * pairs.len();
    let connect_rate = connections as f64 / connect_secs;

    if !args.verify_each {
        for (n, (app, web)) in pairs.iter_mut().enumerate() {
            verify(app, web, &format!("a{n}")).await?;
            verify(web, app, &format!("w{n}")).await?;
        }
    }
    eprintln!("phase connected");
    tokio::time::sleep(Duration::from_secs_f64(args.phase_pause)).await;
    if args.relay > 0 {
        let relays = pairs
            .iter_mut()
            .enumerate()
            .map(|(n, (app, web))| async move {
                for i in 0..args.relay {
                    verify(app, web, &format!("a{n}-{i}")).await?;
                    verify(web, app, &format!("w{n}-{i}")).await?;
                }
                Ok::<_, String>(())
            });
        for result in futures::future::join_all(relays).await {
            result?;
        }
        eprintln!("phase relayed {}", 2 * args.relay * pairs.len());
        tokio::time::sleep(Duration::from_secs_f64(args.phase_pause)).await;
    }
    let rss_after = total_rss(&args.server_pid)?;
    let per_connection =
        (rss_after.saturating_sub(rss_before)) as f64 * 1024.0 / connections as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "mode": "hold",
                "pairs": pairs.len(),
                "connections": connections,
                "connect_seconds": connect_secs,
                "connects_per_second": connect_rate,
                "verified_while_connecting": args.verify_each,
                "connect_generator_cpu_percent": 100.0 * generator_cpu / connect_secs,
                "connect_server_cpu_percent": 100.0 * server_cpu / connect_secs,
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "rss_bytes_per_connection": per_connection,
            })
        );
    } else {
        println!(
            "hold: {connections} connections in {connect_secs:.2} s ({connect_rate:.0}/s), all pairs verified; \
             server RSS {rss_before} -> {rss_after} KiB = {:.0} bytes ({:.2} KiB) per connection",
            per_connection,
            per_connection / 1024.0
        );
    }
    if args.linger > 0.0 {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(Duration::from_secs_f64(args.linger)).await;
    }
    eprintln!("phase closing");
    drop(pairs);
    Ok(())
}

fn total_rss(pids: &[u32]) -> Result<u64, String> {
    pids.iter().map(|pid| rss_kib(*pid)).sum()
}
