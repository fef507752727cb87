//! `wspair-bench`: a load generator that drives real WebSocket pairs through a running wspair
//! (or the baseline relay) and reports what it measured, as a table line or JSON.
//!
//! Every mode checks what it receives; a failed connection or a lost, duplicated or reordered
//! message makes the run fail (exit code 1). `failover` is the exception by design: messages
//! sent while a node dies are lost, and only a pair that never recovers fails the run.

mod clients;
mod direction;
mod failover;
mod failover_v1;
mod flow;
mod hold;
mod latency;
mod pacer;
mod procfs;
mod sansio;
mod throughput;
mod v1;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "wspair-bench",
    about = "Drives WebSocket pairs through a running relay"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Open N idle pairs at a given connect rate, verify each pair with one message each way,
    /// and report the server's RSS per connection.
    Hold(hold::HoldArgs),
    /// Keep a fixed window of messages in flight per pair and direction; report messages/s.
    /// `--v1` drives wspair.v1 clients (the `wspair-client` library) instead.
    Throughput(throughput::ThroughputArgs),
    /// Send at a fixed total rate (open loop); report one-way latency percentiles. `--v1`
    /// drives wspair.v1 clients (the `wspair-client` library) instead.
    Latency(latency::LatencyArgs),
    /// Open pairs across cluster nodes, kill one node with SIGKILL, reconnect its clients to
    /// the others; report how long until every pair relays both ways again. With `--v1`, the
    /// pairs are wspair.v1 clients under load, and every message is checked across the kill.
    Failover(failover::FailoverArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Hold(args) => hold::run(args).await,
        Mode::Throughput(args) => throughput::run(args).await,
        Mode::Latency(args) => latency::run(args).await,
        Mode::Failover(args) => failover::run(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wspair-bench: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
