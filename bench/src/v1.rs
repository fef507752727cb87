//! What the `--v1` modes share: opening pairs of `wspair-client` clients (the library speaking
//! `wspair.v1`) instead of raw WebSockets, and reading their messages.
//!
//! The v1 modes drive the library exactly as an application would: `send_binary` on a
//! [`Handle`] from one task, `next_event` on the [`Client`] from another. Their payloads are the
//! raw modes' (a sequence number and timestamps, see [`flow`](crate::flow)), so the same checks
//! count lost, duplicated and reordered messages; the library's own header comes on top.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wspair_client::{Client, Config, Role};

use crate::clients::Target;

/// The base URL the library wants (it adds `type`, `channelId`, `sid` and `gen` itself): a
/// bench URL template with its query removed.
pub fn base_url(template: &str) -> String {
    template
        .split_once('?')
        .map_or(template, |(base, _)| base)
        .to_string()
}

/// A client's settings for channel `id`, trying `urls` in turn on every new connection.
pub fn config(urls: &[String], id: &str, role: Role) -> Config {
    Config::new(urls.iter().cloned(), id, role)
}

/// Opens `pairs` pairs of v1 clients on `target` (`concurrency` being opened at a time). Each
/// pair is `(app, web)`.
pub async fn open_pairs(
    target: &Target,
    pairs: usize,
    concurrency: usize,
) -> Result<Vec<(Client, Client)>, String> {
    let app_url = vec![base_url(&target.app_url)];
    let web_url = vec![base_url(&target.web_url)];
    let run_id = crate::flow::run_id();
    let opening = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(pairs);
    for n in 0..pairs {
        let (app_url, web_url) = (app_url.clone(), web_url.clone());
        let opening = Arc::clone(&opening);
        tasks.push(tokio::spawn(async move {
            let _permit = opening.acquire().await.expect("never closed");
            let id = crate::clients::channel_id(run_id, n);
            let app = connect(config(&app_url, &id, Role::App), n).await?;
            let web = connect(config(&web_url, &id, Role::Web), n).await?;
            Ok::<_, String>((app, web))
        }));
    }
    let mut opened = Vec::with_capacity(pairs);
    for task in tasks {
        opened.push(task.await.map_err(|err| err.to_string())??);
    }
    Ok(opened)
}

/// Connects one client of pair `n`, waiting at most 10 s for its welcome.
async fn connect(config: Config, n: usize) -> Result<Client, String> {
    tokio::time::timeout(Duration::from_secs(10), Client::connect(config))
        .await
        .map_err(|_| format!("pair {n}: no welcome within 10 s"))?
        .map_err(|err| format!("pair {n}: {err}"))
}
