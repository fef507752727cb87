//! `wspair drain`: asks a node's admin API to drain (`POST /admin/drain`) and, with `--wait`,
//! follows its progress until no session is left or `drain.timeout` has passed. What a
//! Kubernetes `preStop` hook or a deploy script runs before stopping a node: the node stops
//! taking clients, its v1 clients move, and the hook returns when they have.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// How often `--wait` asks for progress.
const POLL: Duration = Duration::from_millis(250);
/// How long one admin call may take.
const CALL_TIME: Duration = Duration::from_secs(10);

/// `wspair drain`'s flags.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    /// The node's admin listener.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:1026")]
    admin: String,
    /// The node's `admin.token`, if it has one.
    #[arg(long, env = "WSPAIR_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Return only once the drain is over (no session left, or drain.timeout passed).
    #[arg(long)]
    wait: bool,
    /// What the drain does with raw clients: close them with 1001 now, or wait for them to
    /// leave until drain.timeout (default: as the node's drain.raw says).
    #[arg(long, value_parser = ["close", "wait"])]
    raw: Option<String>,
}

/// One admin call: the status and the JSON body.
async fn call(
    args: &DrainArgs,
    method: Method,
    path: &str,
) -> Result<(StatusCode, serde_json::Value), String> {
    let stream = tokio::net::TcpStream::connect(args.admin.as_str())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", args.admin))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, args.admin.as_str());
    if let Some(token) = &args.token {
        request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&body).map_err(|e| {
        format!("the admin API answered {status} with something other than JSON: {e}")
    })?;
    Ok((status, json))
}

/// How a drain ended, for the exit code.
enum Drained {
    /// Asked (without `--wait`), or over with no session left.
    Done,
    /// Over at `drain.timeout` with sessions still on the node.
    SessionsLeft(u64),
}

async fn drain(args: &DrainArgs) -> Result<Drained, String> {
    let path = match &args.raw {
        Some(raw) => format!("/admin/drain?raw={raw}"),
        None => "/admin/drain".to_owned(),
    };
    let (status, body) = tokio::time::timeout(CALL_TIME, call(args, Method::POST, &path))
        .await
        .map_err(|_| "the admin API did not answer in time".to_owned())??;
    if status != StatusCode::ACCEPTED {
        return Err(format!(
            "{status}: {}",
            body["error"].as_str().unwrap_or("")
        ));
    }
    println!("{body}");
    if !args.wait {
        return Ok(Drained::Done);
    }
    let mut last = body;
    loop {
        tokio::time::sleep(POLL).await;
        let (status, progress) =
            tokio::time::timeout(CALL_TIME, call(args, Method::GET, "/admin/drain"))
                .await
                .map_err(|_| "the admin API did not answer in time".to_owned())??;
        if status != StatusCode::OK {
            return Err(format!(
                "{status}: {}",
                progress["error"].as_str().unwrap_or("")
            ));
        }
        let changed = ["v1_left", "raw_left", "goaway_sent", "done"]
            .iter()
            .any(|field| progress[field] != last[field]);
        if changed {
            println!("{progress}");
        }
        if progress["draining"] != true {
            // Another process answers there now (the node restarted): its drain is not ours.
            return Err(
                "the node is no longer draining: it restarted, or another one answers".into(),
            );
        }
        if progress["done"] == true {
            let left = ["v1_left", "raw_left"]
                .iter()
                .filter_map(|field| progress[field].as_u64())
                .sum();
            return Ok(if left == 0 {
                Drained::Done
            } else {
                Drained::SessionsLeft(left)
            });
        }
        last = progress;
    }
}

/// Runs `wspair drain`: exit 0 once asked (or, with `--wait`, drained with no session left), 3
/// when `drain.timeout` passed with sessions left, 1 on any failure.
pub fn run(args: DrainArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wspair drain: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(drain(&args)) {
        Ok(Drained::Done) => ExitCode::SUCCESS,
        Ok(Drained::SessionsLeft(left)) => {
            eprintln!("wspair drain: drain.timeout passed with {left} sessions left on the node");
            ExitCode::from(3)
        }
        Err(err) => {
            eprintln!("wspair drain: {err}");
            ExitCode::FAILURE
        }
    }
}
