//! `wspair client`: connects to a channel as its app or its web, sends stdin lines as
//! messages and prints the messages that arrive, in the spirit of websocat. For poking a
//! running relay by hand or from a script.
//!
//! Raw by default (tokio-tungstenite, an implementation independent of the server's); with
//! `--v1` it speaks wspair.v1 through the `wspair-client` library and reports acks and
//! presence. The exit code says how the session ended (`exit.rs`).

mod exit;
mod lines;
mod raw;
mod target;
mod v1;

use std::time::Duration;

use clap::Args;

use exit::EXIT_CODES_HELP;
pub use exit::Exit;
use lines::{InputMode, Printer};
use target::{RoleArg, Target};

/// `wspair client --help` above the flags: what goes where.
pub const LONG_ABOUT: &str = "\
Connect to a channel as its app or its web: send stdin lines as messages and print the messages
that arrive, one per line.

stdout carries the messages only: text as it is (a text holding newlines spans several lines),
binary as lowercase hex, or base64 with --base64. stderr carries notes on the connection as
`# ` lines (`# connected ...`; with --v1 also `# acked N`, `# presence STATE`, `# disconnected
CODE REASON`, `# refused STATUS REASON`) and errors as `wspair client: ...` lines. At the end of
stdin the client closes with 1000 (with --v1 once everything sent is acknowledged), unless
--once or --no-close says otherwise.";

/// Flags of `wspair client`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct ClientArgs {
    /// ws://HOST:PORT/channel?type=app|web&channelId=ID, or ws://HOST:PORT[/PATH] with
    /// --channel and --role
    #[arg(value_name = "URL", required_unless_present = "url")]
    positional_url: Option<String>,
    /// The URL, as a flag
    #[arg(long, value_name = "URL", conflicts_with = "positional_url")]
    url: Option<String>,
    /// The channel id, when the URL has no channelId
    #[arg(long, value_name = "ID")]
    channel: Option<String>,
    /// The side of the pair, when the URL has no type
    #[arg(long, value_enum)]
    role: Option<RoleArg>,
    /// The path, when the URL has none
    #[arg(long, default_value = "/channel")]
    path: String,
    /// Send each stdin line as a binary message (its bytes as typed) rather than text
    #[arg(long)]
    binary: bool,
    /// Read each stdin line as hex and send the bytes as a binary message
    #[arg(long, conflicts_with = "binary")]
    send_hex: bool,
    /// Print binary messages in base64 rather than hex
    #[arg(long)]
    base64: bool,
    /// Speak wspair.v1: acknowledgements, presence and resume; notes on stderr say when
    /// the peer acknowledged, came and went
    #[arg(long)]
    v1: bool,
    /// Send stdin, then exit once one message has arrived (with --v1, once what was sent
    /// is acknowledged; a message when nothing was sent)
    #[arg(long)]
    once: bool,
    /// At the end of stdin keep the connection and print what arrives, until the server
    /// closes it or the process is stopped
    #[arg(short = 'n', long, conflicts_with = "once")]
    no_close: bool,
    /// With --once, how long to wait after the end of stdin; with --v1, how long
    /// acknowledgements may take after it (500ms, 10s, 2m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// How long the connection may take (--v1 retries network errors and 503 until then)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    match wspair::config::parse_duration(text) {
        Some(duration) if !duration.is_zero() => Ok(duration),
        _ => Err(format!(
            "expected a duration above zero such as 500ms, 10s or 2m, got {text:?}"
        )),
    }
}

/// What a session needs besides the target, shared by the raw and the v1 mode.
#[derive(Debug, Clone, Copy)]
struct Options {
    once: bool,
    no_close: bool,
    timeout: Duration,
    connect_timeout: Duration,
    printer: Printer,
}

/// Runs the command to its end.
pub fn run(args: ClientArgs) -> Exit {
    let url = args
        .positional_url
        .or(args.url)
        .expect("clap requires a URL");
    let target = match Target::resolve(&url, args.channel.as_deref(), args.role, &args.path) {
        Ok(target) => target,
        Err(err) => {
            eprintln!("wspair client: {err}");
            return Exit::Usage;
        }
    };
    let mode = if args.send_hex {
        InputMode::Hex
    } else if args.binary {
        InputMode::Binary
    } else {
        InputMode::Text
    };
    let options = Options {
        once: args.once,
        no_close: args.no_close,
        timeout: args.timeout,
        connect_timeout: args.connect_timeout,
        printer: Printer {
            base64: args.base64,
        },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wspair client: cannot start the runtime: {err}");
            return Exit::Failure;
        }
    };
    let input = lines::read_stdin(mode);
    let exit = if args.v1 {
        runtime.block_on(v1::run(&target, options, input))
    } else {
        runtime.block_on(raw::run(&target, options, input))
    };
    // The stdin thread may still wait in a read: the process ends without it.
    runtime.shutdown_background();
    exit
}

/// Waits until `deadline`, or forever without one: a `select!` branch for an optional timer.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
