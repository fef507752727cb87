//! `wspair check-config FILE`: loads a configuration as `serve` would (defaults, the file, then
//! `WSPAIR_*` environment variables), loads the files it names (TLS, token keys), and prints the
//! effective configuration with secrets redacted, or the error naming the key at fault.
//! Nothing is bound and nothing is dialled, so it runs anywhere the file will be deployed.

use std::path::Path;
use std::process::ExitCode;

use wspair::config::KEYS;
use wspair::{Config, Server};

/// The settings given by `WSPAIR_*` environment variables, as `serve` reads them.
fn environment() -> Vec<(&'static str, String)> {
    KEYS.iter()
        .filter_map(|spec| Some((spec.key, std::env::var(spec.env_var()).ok()?)))
        .collect()
}

/// Checks `file`; exit 0 with the configuration on stdout, or 64 with the error on stderr.
pub fn run(file: &Path, usage_error: u8) -> ExitCode {
    let checked = Config::load(Some(file), &environment())
        .map_err(|err| format!("configuration error: {err}"))
        .and_then(|config| {
            Server::check(&config)
                .map(|()| config)
                .map_err(|err| format!("configuration error: {err}"))
        });
    match checked {
        Ok(config) => {
            println!(
                "# {}: valid; the effective configuration, secrets redacted",
                file.display()
            );
            print!("{}", config.effective.to_toml());
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("wspair: {}: {err}", file.display());
            ExitCode::from(usage_error)
        }
    }
}
