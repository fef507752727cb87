//! Opening one connection: the URL and header of PROTOCOL.md §1, the subprotocol check, and
//! waiting for `welcome`.
//!
//! A connection is only handed to the client once it is welcomed, so that a new connection can
//! be prepared while the old one still works (drain, §9) and a refusal is told apart from a
//! network failure.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::Role;
use crate::error::Error;
use crate::frame::{Frame, ServerMsg, Welcome};

/// The subprotocol this library speaks.
pub const SUBPROTOCOL: &str = "wspair.v1";

/// How long a node has to send `welcome` after the upgrade.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);

/// Bytes read from the socket at most per read. tungstenite zero-fills its whole read buffer
/// (128 KiB by default) before every read, which costs more than the read itself when frames
/// are small (4 % of a load generator's CPU at 16 KiB); 8 KiB still takes a burst of a hundred
/// small frames in one read.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// The WebSocket of one connection.
pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A welcomed connection.
pub(crate) struct Conn {
    pub ws: Ws,
    /// `None` for a raw connection (the server did not accept `wspair.v1`).
    pub welcome: Option<Welcome>,
}

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OpenError {
    /// An HTTP status instead of the upgrade.
    Refused { status: u16, reason: String },
    /// The server answered without the subprotocol.
    NoSubprotocol,
    /// TCP, TLS or WebSocket failure, or the connection closed before `welcome`.
    Network(String),
    /// The node broke the protocol before or in `welcome`.
    Protocol(String),
}

impl OpenError {
    /// Whether the first connection retries after this (network trouble or a busy node).
    pub(crate) fn retryable(&self) -> bool {
        matches!(
            self,
            OpenError::Network(_) | OpenError::Refused { status: 503, .. }
        )
    }
}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Error {
        match e {
            OpenError::Refused { status, reason } => Error::Refused { status, reason },
            OpenError::NoSubprotocol => Error::NoSubprotocol,
            OpenError::Network(s) => Error::Connect(s),
            OpenError::Protocol(s) => Error::Protocol(s),
        }
    }
}

/// What identifies a connection attempt.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub base_url: String,
    pub channel_id: String,
    pub role: Role,
    pub key: u128,
    pub r#gen: u32,
    pub raw_fallback: bool,
    pub token: Option<String>,
}

/// `url` without its query, for logs and errors: the query holds the client's secret key and
/// its token.
pub(crate) fn loggable(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL of a connection: the base with the query of PROTOCOL.md §1 (without `key` and `gen`
/// for a raw connection).
pub(crate) fn connection_url(t: &Target, v1: bool) -> String {
    let sep = if t.base_url.contains('?') { '&' } else { '?' };
    let mut url = format!(
        "{}{sep}type={}&channelId={}",
        t.base_url,
        t.role.as_str(),
        encode_query_value(&t.channel_id)
    );
    if v1 {
        url.push_str(&format!("&key={:032x}&gen={}", t.key, t.r#gen));
    }
    if let Some(token) = &t.token {
        url.push_str("&token=");
        url.push_str(&encode_query_value(token));
    }
    url
}

/// Opens and welcomes one connection, falling back to raw when allowed.
pub(crate) async fn open(t: &Target) -> Result<Conn, OpenError> {
    match open_v1(t).await {
        Err(OpenError::NoSubprotocol) if t.raw_fallback => {
            tracing::info!(url = %loggable(&t.base_url), "wspair.v1 not accepted: connecting raw");
            let ws = handshake(&connection_url(t, false), false).await?;
            Ok(Conn { ws, welcome: None })
        }
        other => other,
    }
}

async fn open_v1(t: &Target) -> Result<Conn, OpenError> {
    let mut ws = handshake(&connection_url(t, true), true).await?;
    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, first_frame(&mut ws)).await {
        Ok(result) => result?,
        Err(_) => return Err(OpenError::Network("no welcome in time".into())),
    };
    Ok(Conn {
        ws,
        welcome: Some(welcome),
    })
}

async fn handshake(url: &str, v1: bool) -> Result<Ws, OpenError> {
    let mut request = url
        .into_client_request()
        .map_err(|e| OpenError::Protocol(format!("bad URL {}: {e}", loggable(url))))?;
    if v1 {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    // Nagle off: the client writes a burst of frames and flushes once, and a small frame held
    // back for the peer's delayed ACK would cost tens of milliseconds.
    match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
        // tungstenite checks that the echoed subprotocol is the one offered.
        Ok((ws, _response)) => Ok(ws),
        Err(tungstenite::Error::Http(response)) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            let reason = if body.is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                body
            };
            Err(OpenError::Refused {
                status: status.as_u16(),
                reason,
            })
        }
        Err(tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(_),
        )) => Err(OpenError::NoSubprotocol),
        Err(e) => Err(OpenError::Network(e.to_string())),
    }
}

/// Reads up to the first v1 frame, which must be `welcome`.
async fn first_frame(ws: &mut Ws) -> Result<Welcome, OpenError> {
    loop {
        let msg = match ws.next().await {
            None => return Err(OpenError::Network("closed before welcome".into())),
            Some(Err(e)) => return Err(OpenError::Network(e.to_string())),
            Some(Ok(msg)) => msg,
        };
        match msg {
            Message::Binary(bytes) => {
                return match Frame::decode(bytes) {
                    Ok(Frame::Server(ServerMsg::Welcome(w))) => Ok(w),
                    Ok(other) => Err(OpenError::Protocol(format!(
                        "expected welcome first, got {other:?}"
                    ))),
                    Err(e) => Err(OpenError::Protocol(e.to_string())),
                };
            }
            Message::Close(frame) => {
                let what = describe_close(frame.as_ref());
                return Err(OpenError::Network(format!("closed before welcome: {what}")));
            }
            Message::Text(_) => {
                return Err(OpenError::Protocol(
                    "a text message on a v1 connection".into(),
                ));
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
}

/// A close frame as `code reason`, for logs and errors.
pub(crate) fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        Some(f) => format!("{} {}", u16::from(f.code), f.reason),
        None => "no close frame".into(),
    }
}

/// The WebSocket message of an application payload on a raw connection.
pub(crate) fn raw_message(text: bool, payload: Bytes) -> Message {
    if text {
        // Text payloads come from a `String`; anything else goes as binary.
        match tungstenite::Utf8Bytes::try_from(payload.clone()) {
            Ok(s) => Message::Text(s),
            Err(_) => Message::Binary(payload),
        }
    } else {
        Message::Binary(payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(base: &str, channel: &str) -> Target {
        Target {
            base_url: base.into(),
            channel_id: channel.into(),
            role: Role::Web,
            key: 0x5f0c_3a9e_71d2_b846_0011_2233_4455_6677,
            r#gen: 1,
            raw_fallback: false,
            token: None,
        }
    }

    #[test]
    fn the_token_is_percent_encoded_last() {
        let mut t = target("ws://h/channel", "ID");
        t.token = Some("e30.e30+/=.sig".into());
        assert_eq!(
            connection_url(&t, false),
            "ws://h/channel?type=web&channelId=ID&token=e30.e30%2B%2F%3D.sig"
        );
    }

    #[test]
    fn the_url_carries_the_v1_query() {
        let t = target("ws://127.0.0.1:1024/channel", "ID");
        assert_eq!(
            connection_url(&t, true),
            "ws://127.0.0.1:1024/channel?type=web&channelId=ID&key=5f0c3a9e71d2b8460011223344556677&gen=1"
        );
        assert_eq!(
            connection_url(&t, false),
            "ws://127.0.0.1:1024/channel?type=web&channelId=ID"
        );
    }

    #[test]
    fn the_channel_id_is_percent_encoded_and_an_existing_query_kept() {
        let mut t = target("ws://h/channel?token=x", "a b&c/é");
        t.role = Role::App;
        t.key = 1;
        t.r#gen = 4_294_967_295;
        assert_eq!(
            connection_url(&t, true),
            "ws://h/channel?token=x&type=app&channelId=a%20b%26c%2F%C3%A9&key=00000000000000000000000000000001&gen=4294967295"
        );
    }

    #[test]
    fn only_network_errors_and_503_are_retried_at_first() {
        assert!(OpenError::Network("x".into()).retryable());
        assert!(
            OpenError::Refused {
                status: 503,
                reason: "draining".into()
            }
            .retryable()
        );
        assert!(
            !OpenError::Refused {
                status: 409,
                reason: "held".into()
            }
            .retryable()
        );
        assert!(!OpenError::NoSubprotocol.retryable());
        assert!(!OpenError::Protocol("x".into()).retryable());
    }
}
