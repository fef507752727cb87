//! Why a session ends, and the close code and reason each cause sends: the one table of
//! close codes, mirrored in the README.
//!
//! | code | cause |
//! |------|-------|
//! | 1000 | the client closed (the server echoes the client's code) |
//! | 1001 | the server is shutting down |
//! | 1002 | the client broke the WebSocket protocol |
//! | 1007 | a text message was not valid UTF-8 |
//! | 1008 | a message took longer than `outer.message-timeout`, or more than `outer.max-fragments` frames; or the client sent faster than `outer.max-messages-per-second` or `outer.max-bytes-per-second` with `outer.rate-limit-action = close` |
//! | 1009 | a message exceeded `outer.max-frame-size` |
//! | 1011 | an internal error |
//! | 1013 | the client accepted nothing for `outer.stall-timeout` while messages waited |
//! | 4001 | a newer client of the same role and channel id replaced this one |
//! | 4002 | the client sent nothing, not even a pong, for `outer.idle-timeout` |
//! | 4003 | the client's token expired (`auth.*`) |
//! | 4004 | an operator closed the channel (`POST /admin/channels/ID/close`); the reason is the operator's |
//! | 4007 | a wspair.v1 client sent a malformed frame (PROTOCOL.md §2) |
//! | 4008 | a wspair.v1 client exceeded its window, skipped a position, or sent numbered data before `sync` |

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use yawc::WebSocketError;

/// The cause that ended a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent a close frame with this code (none if it sent an empty close frame).
    ClientClosed(Option<u16>),
    /// The TCP connection ended or failed without a close frame.
    ConnectionLost,
    /// The server is shutting down.
    Shutdown,
    /// A newer client of the same role and channel id took over.
    Replaced,
    /// Nothing arrived from the client for `outer.idle-timeout`.
    Idle,
    /// The client accepted no message for `outer.stall-timeout` while messages waited.
    Stalled,
    /// A message exceeded `outer.max-frame-size`.
    TooBig,
    /// A text message held invalid UTF-8.
    InvalidUtf8,
    /// A message was not complete within `outer.message-timeout`.
    MessageTimeout,
    /// A message came in more frames than `outer.max-fragments`.
    TooManyFragments,
    /// The client sent messages faster than `outer.max-messages-per-second` allows
    /// (`outer.rate-limit-action = close`).
    MessageRate,
    /// The client sent bytes faster than `outer.max-bytes-per-second` allows
    /// (`outer.rate-limit-action = close`).
    ByteRate,
    /// The client broke the WebSocket protocol.
    Protocol,
    /// Something failed inside the server.
    Internal,
    /// A wspair.v1 client sent a frame that is not v1.
    V1Malformed,
    /// A wspair.v1 client broke its window (PROTOCOL.md §7).
    V1Window,
    /// The client's token expired (`auth.*`).
    TokenExpired,
    /// An operator closed the channel through the admin API, with this reason.
    Operator(String),
}

/// The longest close reason a close frame holds (RFC 6455 §5.5: 125 bytes of payload, two of
/// them the code).
pub const MAX_REASON_BYTES: usize = 123;

impl CloseReason {
    /// Every reason the server closes a session for with a code of its own (all but the
    /// echo of a client's close and a lost connection): what the README's table lists.
    pub const SENT_BY_THE_SERVER: &[CloseReason] = &[
        CloseReason::Shutdown,
        CloseReason::Protocol,
        CloseReason::InvalidUtf8,
        CloseReason::MessageTimeout,
        CloseReason::TooManyFragments,
        CloseReason::MessageRate,
        CloseReason::ByteRate,
        CloseReason::TooBig,
        CloseReason::Internal,
        CloseReason::Stalled,
        CloseReason::Replaced,
        CloseReason::Idle,
        CloseReason::TokenExpired,
        CloseReason::Operator(String::new()),
        CloseReason::V1Malformed,
        CloseReason::V1Window,
    ];

    /// The close code sent to the client, if the server sends one.
    pub fn code(&self) -> Option<u16> {
        match self {
            CloseReason::ClientClosed(code) => *code,
            CloseReason::ConnectionLost => None,
            CloseReason::Shutdown => Some(1001),
            CloseReason::Protocol => Some(1002),
            CloseReason::InvalidUtf8 => Some(1007),
            CloseReason::MessageTimeout
            | CloseReason::TooManyFragments
            | CloseReason::MessageRate
            | CloseReason::ByteRate => Some(1008),
            CloseReason::TooBig => Some(1009),
            CloseReason::Internal => Some(1011),
            CloseReason::Stalled => Some(1013),
            CloseReason::Replaced => Some(4001),
            CloseReason::Idle => Some(4002),
            CloseReason::TokenExpired => Some(4003),
            CloseReason::Operator(_) => Some(4004),
            CloseReason::V1Malformed => Some(4007),
            CloseReason::V1Window => Some(4008),
        }
    }

    /// The reason text sent in the close frame.
    pub fn text(&self) -> &str {
        match self {
            CloseReason::ClientClosed(_) => "client closed",
            CloseReason::ConnectionLost => "connection lost",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Replaced => "replaced by a newer connection",
            CloseReason::Idle => "idle timeout",
            CloseReason::Stalled => "not reading; send queue stalled",
            CloseReason::TooBig => "message too big",
            CloseReason::InvalidUtf8 => "invalid utf-8 in text message",
            CloseReason::MessageTimeout => "message not complete within outer.message-timeout",
            CloseReason::TooManyFragments => "message in more frames than outer.max-fragments",
            CloseReason::MessageRate => "message rate over outer.max-messages-per-second",
            CloseReason::ByteRate => "byte rate over outer.max-bytes-per-second",
            CloseReason::Protocol => "protocol error",
            CloseReason::Internal => "internal error",
            CloseReason::V1Malformed => "malformed wspair.v1 frame",
            CloseReason::V1Window => "wspair.v1 window exceeded",
            CloseReason::TokenExpired => "token expired",
            CloseReason::Operator(reason) => reason,
        }
    }

    /// The reason for a read error. The WebSocket library has already queued a close frame
    /// with the same code; this names it for logs.
    pub fn from_read_error(err: &WebSocketError) -> CloseReason {
        match err {
            WebSocketError::ConnectionClosed | WebSocketError::IoError(_) => {
                CloseReason::ConnectionLost
            }
            WebSocketError::FrameTooLarge => CloseReason::TooBig,
            WebSocketError::InvalidUTF8 => CloseReason::InvalidUtf8,
            WebSocketError::FragmentTimeout => CloseReason::MessageTimeout,
            WebSocketError::TooManyFragments => CloseReason::TooManyFragments,
            WebSocketError::ReservedBitsNotZero
            | WebSocketError::ControlFrameFragmented
            | WebSocketError::PingFrameTooLarge
            | WebSocketError::ControlFrameTooLarge
            | WebSocketError::InvalidRsv1
            | WebSocketError::UnmaskedFrame
            | WebSocketError::InvalidDeflateData
            | WebSocketError::InvalidFragment
            | WebSocketError::InvalidCloseFrame
            | WebSocketError::InvalidCloseCode
            | WebSocketError::InvalidContinuationFrame
            | WebSocketError::CompressionNotSupported
            | WebSocketError::InvalidOpCode(_) => CloseReason::Protocol,
            _ => CloseReason::Internal,
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code() {
            Some(code) => write!(f, "{code} {}", self.text()),
            None => f.write_str(self.text()),
        }
    }
}

/// Reasons for sessions stopped from outside (an operator, through the admin API), by session
/// id, until each session takes its own when it stops. A session stopped without one was
/// replaced (or the node shuts down).
#[derive(Debug, Default)]
pub struct PendingCloses {
    reasons: Mutex<HashMap<u64, CloseReason>>,
    /// Whether `reasons` may hold anything: a session that ends looks at the map (to forget
    /// its entry) only then, so the common end takes no lock.
    any: AtomicBool,
}

impl PendingCloses {
    /// Records why session `session` is about to be stopped; the reason is cut to what a close
    /// frame holds, at a character boundary.
    pub fn put(&self, session: u64, reason: &str) {
        let mut end = reason.len().min(MAX_REASON_BYTES);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let reason = CloseReason::Operator(reason[..end].to_owned());
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        reasons.insert(session, reason);
        self.any.store(true, Ordering::Release);
    }

    /// The reason recorded for `session`, if one was (and forgets it). Every session calls it
    /// as it ends, whatever ended it, so no entry outlives its session.
    pub fn take(&self, session: u64) -> Option<CloseReason> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        let reason = reasons.remove(&session);
        if reasons.is_empty() {
            self.any.store(false, Ordering::Release);
        }
        reason
    }
}
