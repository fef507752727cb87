//! The `wspair` command: parses the command line, sets up logging, loads the configuration and
//! runs a node until SIGINT or SIGTERM; the other subcommands (`client`, `check-config`,
//! `completions`, `manpage`) are in `cli/`. Nothing else lives here.
//!
//! Exit codes of `serve`: 0 after a clean shutdown, 64 for bad usage or configuration (nothing
//! was bound), 1 for a failure at run time (such as a port already in use). `client` has its
//! own table (`wspair client --help`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use wspair::config::KEYS;
use wspair::{Config, Server};

/// Exit code for bad usage or configuration (BSD `EX_USAGE`).
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "wspair",
    version,
    about = "Relays WebSocket messages between the app and the web of a pair"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run a node. Settings come from defaults, then --config FILE, then WSPAIR_* environment
    /// variables, then flags; a later source wins.
    Serve(ServeArgs),
    /// Connect to a channel as its app or its web: send stdin lines as messages and print
    /// the messages that arrive, one per line
    #[command(long_about = cli::client::LONG_ABOUT)]
    Client(cli::client::ClientArgs),
    /// Check a configuration file as `serve` would read it (with WSPAIR_* environment
    /// variables) and print the effective configuration, secrets redacted; exit 64 with the
    /// error naming the key otherwise. Binds and dials nothing
    CheckConfig {
        /// The TOML configuration file.
        file: PathBuf,
    },
    /// Ask a node to drain through its admin API (POST /admin/drain): it stops taking clients
    /// and its wspair.v1 clients move to other nodes; with --wait, return once it has drained.
    /// Exit codes: 0 done (with --wait: no session left), 3 drain.timeout passed with sessions
    /// left, 1 any failure (including the node no longer draining: it restarted)
    Drain(cli::drain::DrainArgs),
    /// Print the completion script for SHELL (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) of wspair and its subcommands
    Manpage,
}

/// `serve`'s flags: `--config` plus one flag per configuration key, generated from `KEYS`.
#[derive(Debug)]
struct ServeArgs {
    config: Option<PathBuf>,
    /// Key and text of every setting given by flag or environment variable.
    overrides: Vec<(&'static str, String)>,
}

impl Args for ServeArgs {
    fn augment_args(command: Command) -> Command {
        let command = command.arg(
            Arg::new("config")
                .long("config")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file; see the README for every key"),
        );
        KEYS.iter().fold(command, |command, spec| {
            command.arg(
                Arg::new(spec.key)
                    .long(spec.flag())
                    .env(spec.env_var())
                    .value_name("VALUE")
                    .help(format!("{} [default: {}]", spec.help, spec.default)),
            )
        })
    }

    fn augment_args_for_update(command: Command) -> Command {
        Self::augment_args(command)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let overrides = KEYS
            .iter()
            .filter_map(|spec| {
                let value = matches.get_one::<String>(spec.key)?;
                Some((spec.key, value.clone()))
            })
            .collect();
        Ok(ServeArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            overrides,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            return if err.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let args = match cli.command {
        Commands::Serve(args) => args,
        Commands::Client(args) => {
            // The client reports on stderr itself; the library's logs are there for RUST_LOG.
            init_logging("error", false);
            return cli::client::run(args).into();
        }
        Commands::CheckConfig { file } => return cli::check_config::run(&file, EXIT_USAGE),
        Commands::Drain(args) => return cli::drain::run(args),
        Commands::Completions { shell } => {
            return written(cli::generate::completions::<Cli>(shell));
        }
        Commands::Manpage => return written(cli::generate::manpage::<Cli>()),
    };
    let overrides: Vec<(&str, String)> = args.overrides;
    let config = match Config::load(args.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("wspair: configuration error: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging("info", config.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wspair: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

/// Logs to stderr at `default_level`, or as `RUST_LOG` says; as text, or one JSON object per
/// line (`log.format = "json"`).
fn init_logging(default_level: &str, json: bool) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        logs.json().flatten_event(true).init();
    } else {
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

/// The exit code of a subcommand that writes to stdout.
fn written(result: std::io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wspair: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> ExitCode {
    let server = match Server::bind(config).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("wspair: {err}");
            return ExitCode::FAILURE;
        }
    };
    let stop = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(stop.clone()));
    let (outer_tls, inner_tls) = (server.tls(), server.inner_tls());
    let reloads = (outer_tls.is_some() || inner_tls.is_some())
        .then(|| tokio::spawn(reload_on_sighup(outer_tls, inner_tls)));
    let outcome = server.run(stop).await;
    signals.abort();
    if let Some(reloads) = reloads {
        reloads.abort();
    }
    if outcome.drained {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Loads the TLS certificates and keys again on every SIGHUP (the client listener's and the
/// inner links'); a failed reload keeps the old ones.
async fn reload_on_sighup(
    outer: Option<std::sync::Arc<wspair::tls::Tls>>,
    inner: Option<std::sync::Arc<wspair::tls::inner::InnerTls>>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler installs once");
    while hangup.recv().await.is_some() {
        if let Some(tls) = &outer {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(err) => {
                    tracing::warn!(error = %err, "SIGHUP: TLS certificate not reloaded; keeping the old one")
                }
            }
        }
        if let Some(tls) = &inner {
            match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: inner TLS certificate reloaded"),
                Err(err) => {
                    tracing::warn!(error = %err, "SIGHUP: inner TLS certificate not reloaded; keeping the old one")
                }
            }
        }
    }
}

/// Cancels `stop` on the first SIGINT or SIGTERM.
async fn cancel_on_signal(stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler installs once");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
    }
    stop.cancel();
}
