//! `wspair client --v1`: a session through the `wspair-client` library, which numbers what
//! it sends, resends after a reconnect and reports acknowledgements and presence; they are
//! printed as `# ` notes on stderr, so stdout is the same as in raw mode.
//!
//! The library reconnects after any close but a displacement (4001), so that is the only
//! "closed" this mode reports; the end of stdin waits for the peer's acknowledgements.

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use wspair_client::{Client, Config, Error, Event, Handle, Presence, Role};

use super::exit::Exit;
use super::lines::Outgoing;
use super::target::{RoleArg, Target};
use super::{Options, sleep_until};

/// What the sending task tells the session.
enum Sent {
    /// A message went into the library with this seq (0: unnumbered, to a raw peer).
    Message(u64),
    /// stdin ended; everything before was handed to the library.
    End,
    /// A line did not decode, or the library refused a message.
    Failed(String),
}

/// Connects to `target` with wspair.v1 and relays until the session is over.
pub async fn run(
    target: &Target,
    options: Options,
    input: mpsc::Receiver<Result<Outgoing, String>>,
) -> Exit {
    let role = match target.role {
        RoleArg::App => Role::App,
        RoleArg::Web => Role::Web,
    };
    let config = Config::new([target.base.clone()], target.channel_id.clone(), role);
    let mut client =
        match tokio::time::timeout(options.connect_timeout, Client::connect(config)).await {
            Ok(Ok(client)) => client,
            Ok(Err(Error::Refused { status, reason })) => {
                eprintln!("wspair client: refused: HTTP {status}: {reason}");
                return Exit::Refused;
            }
            Ok(Err(Error::Connect(err))) => {
                eprintln!("wspair client: cannot connect to {}: {err}", target.base);
                return Exit::ConnectionFailed;
            }
            Ok(Err(err)) => {
                eprintln!("wspair client: {err}");
                return Exit::Failure;
            }
            Err(_) => {
                eprintln!(
                    "wspair client: no connection to {} within {:?}",
                    target.base, options.connect_timeout
                );
                return Exit::ConnectionFailed;
            }
        };
    let printer = options.printer;
    let (sent_tx, mut sent_rx) = mpsc::channel(64);
    tokio::spawn(send_lines(client.handle(), input, sent_tx));
    let mut sending = true;
    let mut stdin_ended = false;
    let mut last_seq = 0;
    let mut acked = 0;
    let mut raw_peer = false;
    let mut received = false;
    let mut last_close: Option<(Option<u16>, String)> = None;
    let mut deadline: Option<Instant> = None;
    loop {
        if stdin_ended && !options.no_close {
            // A raw peer never acknowledges: --once then waits for a message, as in raw mode.
            let done = if last_seq > 0 && !raw_peer {
                acked >= last_seq
            } else {
                !options.once || received
            };
            if done {
                return close(client).await;
            }
        }
        tokio::select! {
            report = sent_rx.recv(), if sending => match report {
                Some(Sent::Message(seq)) => last_seq = last_seq.max(seq),
                Some(Sent::End) => {
                    sending = false;
                    stdin_ended = true;
                    deadline = Some(Instant::now() + options.timeout);
                }
                // The library stopped: its events say why.
                None => sending = false,
                Some(Sent::Failed(err)) => {
                    eprintln!("wspair client: {err}");
                    let _ = client.close().await;
                    return Exit::Failure;
                }
            },
            event = client.next_event() => match event {
                Some(Event::Message { text, payload, .. }) => {
                    if printer.message(text, &payload).is_err() {
                        return Exit::Failure;
                    }
                    received = true;
                }
                Some(Event::Acked { hw }) => {
                    acked = acked.max(hw);
                    printer.note(format_args!("acked {hw}"));
                }
                Some(Event::Presence(presence)) => {
                    printer.note(format_args!("presence {}", describe(presence)));
                }
                Some(Event::Connected { r#gen, node }) => {
                    printer.note(format_args!("connected gen={gen} node={node}"));
                }
                Some(Event::Disconnected { code, reason }) => {
                    let code_text = code.map_or("-".to_owned(), |code| code.to_string());
                    printer.note(format_args!("disconnected {code_text} {reason}"));
                    last_close = Some((code, reason));
                }
                Some(Event::Refused { status, reason }) => {
                    printer.note(format_args!("refused {status} {reason}"));
                }
                Some(Event::RawPeer) => {
                    raw_peer = true;
                    printer.note("raw peer: messages go unnumbered and no ack will come");
                }
                Some(Event::StreamReset { old_sid, delivered_hw }) => {
                    printer.note(format_args!(
                        "stream reset: the peer's stream {old_sid:016x} ended after {delivered_hw}"
                    ));
                }
                Some(_) => {}
                None => return stopped(last_close),
            },
            () = sleep_until(deadline), if !options.no_close => {
                if last_seq > 0 && !raw_peer {
                    eprintln!(
                        "wspair client: {} of {last_seq} messages not acknowledged within {:?}",
                        last_seq - acked,
                        options.timeout
                    );
                } else {
                    eprintln!(
                        "wspair client: no message within {:?} after the end of stdin",
                        options.timeout
                    );
                }
                return Exit::Timeout;
            }
        }
    }
}

/// Hands stdin's messages to the library in order; a send waits while the window is full.
async fn send_lines(
    handle: Handle,
    mut input: mpsc::Receiver<Result<Outgoing, String>>,
    sent: mpsc::Sender<Sent>,
) {
    while let Some(line) = input.recv().await {
        let report = match line {
            Ok(Outgoing {
                text: true,
                payload,
            }) => send_text(&handle, payload).await,
            Ok(Outgoing {
                text: false,
                payload,
            }) => handle.send_binary(payload).await,
            Err(err) => {
                let _ = sent.send(Sent::Failed(err)).await;
                return;
            }
        };
        let report = match report {
            Ok(seq) => Sent::Message(seq),
            // The library stopped: the session learns why from its events.
            Err(Error::Closed) => return,
            Err(err) => Sent::Failed(err.to_string()),
        };
        if sent.send(report).await.is_err() {
            return;
        }
    }
    let _ = sent.send(Sent::End).await;
}

async fn send_text(handle: &Handle, payload: Bytes) -> Result<u64, Error> {
    // Text lines were checked to be UTF-8 when read.
    let text = String::from_utf8_lossy(&payload).into_owned();
    handle.send_text(text).await
}

/// Leaves with `bye`; everything was acknowledged, so the library's wait is short.
async fn close(client: Client) -> Exit {
    match client.close().await {
        Ok(()) => Exit::Normal,
        // The library stopped (displaced) after everything was done: nothing is lost.
        Err(Error::Closed) => Exit::Normal,
        Err(err) => {
            eprintln!("wspair client: {err}");
            Exit::Timeout
        }
    }
}

/// The library stopped on its own: the exit code from the last close it reported.
fn stopped(last_close: Option<(Option<u16>, String)>) -> Exit {
    match last_close {
        Some((Some(1000), reason)) => {
            eprintln!("wspair client: closed by the server: 1000 {reason}");
            Exit::Normal
        }
        Some((Some(code), reason)) => {
            eprintln!("wspair client: closed by the server: {code} {reason}");
            Exit::Closed
        }
        Some((None, reason)) => {
            eprintln!("wspair client: connection lost: {reason}");
            Exit::ConnectionFailed
        }
        None => {
            eprintln!("wspair client: the client library stopped");
            Exit::Failure
        }
    }
}

fn describe(presence: Presence) -> &'static str {
    match presence {
        Presence::Online => "online",
        Presence::Reconnecting => "reconnecting",
        Presence::Offline { left: true } => "offline (left)",
        Presence::Offline { left: false } => "offline",
    }
}
