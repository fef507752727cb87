//! `wspair client` without `--v1`: one plain WebSocket connection, messages both ways as they
//! are, and an exit code from how the connection ended.
//!
//! tokio-tungstenite rather than the server's own library, so the tool sees the relay as any
//! other client does.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use super::exit::Exit;
use super::lines::Outgoing;
use super::target::Target;
use super::{Options, sleep_until};

/// How long the server has to answer our close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(2);

/// Where the session stands.
enum Phase {
    /// Sending stdin lines.
    Sending,
    /// stdin ended; waiting for a message (`--once`, until the deadline) or for nothing
    /// (`--no-close`).
    Listening { deadline: Option<Instant> },
    /// Our close frame is sent; waiting for the server's reply.
    Closing { deadline: Instant },
}

/// Connects to `target` and relays between the terminal and the connection until it ends.
pub async fn run(
    target: &Target,
    options: Options,
    mut input: mpsc::Receiver<Result<Outgoing, String>>,
) -> Exit {
    let url = target.to_string();
    let connecting = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true);
    let ws = match tokio::time::timeout(options.connect_timeout, connecting).await {
        Ok(Ok((ws, _response))) => ws,
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|body| String::from_utf8_lossy(body).trim().to_owned())
                .unwrap_or_default();
            eprintln!("wspair client: refused: HTTP {}: {body}", status.as_u16());
            return Exit::Refused;
        }
        Ok(Err(err)) => {
            eprintln!("wspair client: cannot connect to {url}: {err}");
            return Exit::ConnectionFailed;
        }
        Err(_) => {
            eprintln!(
                "wspair client: no connection to {url} within {:?}",
                options.connect_timeout
            );
            return Exit::ConnectionFailed;
        }
    };
    let printer = options.printer;
    printer.note(format_args!("connected {url}"));
    let (mut sink, mut stream) = ws.split();
    let mut phase = Phase::Sending;
    let mut received = false;
    let mut outcome = Exit::Normal;
    loop {
        let deadline = match phase {
            Phase::Sending | Phase::Listening { deadline: None } => None,
            Phase::Listening { deadline: Some(at) } | Phase::Closing { deadline: at } => Some(at),
        };
        let sending = matches!(phase, Phase::Sending);
        tokio::select! {
            line = input.recv(), if sending => match line {
                Some(Ok(out)) => {
                    // Text lines were checked to be UTF-8 when read.
                    let message = match tungstenite::Utf8Bytes::try_from(out.payload.clone()) {
                        Ok(text) if out.text => Message::Text(text),
                        _ => Message::Binary(out.payload),
                    };
                    if let Err(err) = sink.send(message).await {
                        eprintln!("wspair client: connection lost: {err}");
                        return Exit::ConnectionFailed;
                    }
                }
                Some(Err(err)) => {
                    eprintln!("wspair client: {err}");
                    outcome = Exit::Failure;
                    phase = close(&mut sink).await;
                }
                None if options.once && received => phase = close(&mut sink).await,
                None if options.once => {
                    phase = Phase::Listening { deadline: Some(Instant::now() + options.timeout) };
                }
                None if options.no_close => phase = Phase::Listening { deadline: None },
                None => phase = close(&mut sink).await,
            },
            message = stream.next() => match message {
                Some(Ok(Message::Text(text))) => {
                    if printer.message(true, text.as_bytes()).is_err() {
                        return Exit::Failure;
                    }
                    received = true;
                    if options.once && matches!(phase, Phase::Listening { .. }) {
                        phase = close(&mut sink).await;
                    }
                }
                Some(Ok(Message::Binary(bytes))) => {
                    if printer.message(false, &bytes).is_err() {
                        return Exit::Failure;
                    }
                    received = true;
                    if options.once && matches!(phase, Phase::Listening { .. }) {
                        phase = close(&mut sink).await;
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return if matches!(phase, Phase::Closing { .. }) {
                        outcome
                    } else {
                        closed_by_server(frame.as_ref())
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(_)) | None if matches!(phase, Phase::Closing { .. }) => return outcome,
                Some(Err(err)) => {
                    eprintln!("wspair client: connection lost: {err}");
                    return Exit::ConnectionFailed;
                }
                None => {
                    eprintln!("wspair client: connection lost without a close frame");
                    return Exit::ConnectionFailed;
                }
            },
            () = sleep_until(deadline) => {
                if matches!(phase, Phase::Closing { .. }) {
                    // The server did not answer our close: everything was sent all the same.
                    return outcome;
                }
                eprintln!(
                    "wspair client: no message within {:?} after the end of stdin",
                    options.timeout
                );
                let _ = close(&mut sink).await;
                return Exit::Timeout;
            }
        }
    }
}

/// Sends a close frame with 1000 and moves to waiting for the reply.
async fn close<S>(sink: &mut S) -> Phase
where
    S: futures::Sink<Message> + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    // A failed write leaves nothing to wait for: the deadline ends the session.
    let _ = sink.send(Message::Close(Some(frame))).await;
    Phase::Closing {
        deadline: Instant::now() + CLOSE_REPLY_WAIT,
    }
}

/// Prints the server's close and says what it means for the exit code.
fn closed_by_server(frame: Option<&CloseFrame>) -> Exit {
    match frame {
        Some(frame) if frame.code == CloseCode::Normal => {
            eprintln!("wspair client: closed by the server: 1000 {}", frame.reason);
            Exit::Normal
        }
        Some(frame) => {
            eprintln!(
                "wspair client: closed by the server: {} {}",
                u16::from(frame.code),
                frame.reason
            );
            Exit::Closed
        }
        None => {
            eprintln!("wspair client: closed by the server: 1005 (no code)");
            Exit::Closed
        }
    }
}
