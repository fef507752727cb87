//! How a [`Client`](crate::Client) connects and what its timers are.
//!
//! Kept apart from the client so that the settings, their defaults (PROTOCOL.md §11) and the
//! query a connection carries are in one place.

use std::time::Duration;

/// Which side of a pair this client is (the `type` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `type=app`.
    App,
    /// `type=web`.
    Web,
}

impl Role {
    /// The value of the `type` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Web => "web",
        }
    }
}

/// Settings of a [`Client`](crate::Client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base WebSocket URLs such as `ws://127.0.0.1:1024/channel`, tried in turn: every new
    /// connection goes to the next one.
    pub urls: Vec<String>,
    /// The pair's channel id.
    pub channel_id: String,
    /// This client's side of the pair.
    pub role: Role,
    /// Connect as a raw client when the server does not accept `wspair.v1` (default: fail).
    pub raw_fallback: bool,
    /// The first reconnect delay's upper bound (default 100 ms).
    pub backoff_min: Duration,
    /// The largest reconnect delay's upper bound (default 5 s).
    pub backoff_max: Duration,
    /// How long the peer must be away before it is reported reconnecting (default 1 s).
    pub presence_quiet: Duration,
    /// How long the peer must be away before it is reported offline (default 30 s).
    pub presence_grace: Duration,
    /// Retransmission: with messages unacknowledged and no ACK progress for this long, ask the
    /// peer for its positions (default 2 s).
    pub ack_timeout: Duration,
    /// How long [`Client::close`](crate::Client::close) waits for the outbox to empty
    /// (default 5 s).
    pub close_timeout: Duration,
    /// The client's secret key (PROTOCOL.md §1); `None` draws one at random. Its stream id is
    /// derived from it, and only a connection presenting it may take over its slot. A fixed
    /// key must not be shared with another client instance, since it names one stream.
    pub key: Option<u128>,
    /// The client token (README, "Client tokens") sent as the `token` query parameter of every
    /// connection; `None` sends none. [`Handle::set_token`](crate::Handle::set_token) replaces
    /// it, on the open connection too. Give the token here or in the URLs' query, not both
    /// (a repeated query parameter is refused with 400).
    pub token: Option<String>,
}

impl Config {
    /// The defaults for `urls`, `channel_id` and `role`.
    pub fn new<U: Into<String>>(
        urls: impl IntoIterator<Item = U>,
        channel_id: impl Into<String>,
        role: Role,
    ) -> Config {
        Config {
            urls: urls.into_iter().map(Into::into).collect(),
            channel_id: channel_id.into(),
            role,
            raw_fallback: false,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            presence_quiet: Duration::from_secs(1),
            presence_grace: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(2),
            close_timeout: Duration::from_secs(5),
            key: None,
            token: None,
        }
    }
}
