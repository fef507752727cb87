//! Configuration: every key, its default, its limits, and the only code that reads the file.
//!
//! Values come in layers: built-in defaults, then the TOML file (`--config FILE`), then the
//! environment (`WSPAIR_OUTER_PORT=…`), then command-line flags (`--outer-port …`); a later
//! layer wins. [`KEYS`] is the single list of keys: the CLI flags, the environment variable
//! names, the defaults and the README's table are all derived from it, and a test checks that
//! the README lists every key. A key that is not in [`KEYS`] is an error naming it, and so is a
//! value of the wrong type or out of range, before anything is bound.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration problem. Each variant names the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong type or is out of range.
    #[error("{key}: {problem}")]
    Invalid {
        /// The dotted key, as spelt in the file (`outer.max-frame-size`).
        key: String,
        /// What is wrong with the value, including the value.
        problem: String,
    },
    /// The file holds a key wspair does not know (often a misspelling).
    #[error("unknown key `{key}`")]
    UnknownKey {
        /// The dotted key, as spelt in the file.
        key: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path given to `--config`.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The path given to `--config`.
        path: PathBuf,
        /// The parser's description, with line and column.
        message: String,
    },
}

/// What kind of value a key takes; decides how text from the environment or a flag is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Any string.
    Text,
    /// An IP address (v4 or v6).
    Ip,
    /// An integer within `min..=max`.
    Integer {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// `true` or `false`.
    Bool,
    /// A duration written with a unit: `500ms`, `10s`, `2m`.
    Duration,
    /// One of a fixed set of words.
    Choice(&'static [&'static str]),
}

/// One configuration key: its spelling, its kind, its default and its meaning.
#[derive(Debug)]
pub struct KeySpec {
    /// The dotted key as written in the file (`outer.port`).
    pub key: &'static str,
    /// The type of its value.
    pub kind: Kind,
    /// The default, written as it would be on the command line.
    pub default: &'static str,
    /// One sentence: what the key does.
    pub help: &'static str,
}

impl KeySpec {
    /// The command-line flag: `outer.max-frame-size` becomes `outer-max-frame-size`.
    pub fn flag(&self) -> String {
        self.key.replace('.', "-")
    }

    /// The environment variable: `outer.max-frame-size` becomes `WSPAIR_OUTER_MAX_FRAME_SIZE`.
    pub fn env_var(&self) -> String {
        format!(
            "WSPAIR_{}",
            self.key.replace(['.', '-'], "_").to_uppercase()
        )
    }
}

const MAX_U32: i64 = u32::MAX as i64;

/// Largest `outer.max-frame-size` accepted (16 MiB): a relay of small messages has no use for
/// more, and every session may hold a message of this size in memory.
const MAX_FRAME_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// Longest duration any key accepts (one day): longer values are mistakes, and some overflow
/// the timers that use them.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Every configuration key wspair reads. The README's configuration table mirrors this list.
pub const KEYS: &[KeySpec] = &[
    KeySpec {
        key: "outer.ip",
        kind: Kind::Ip,
        default: "0.0.0.0",
        help: "address the WebSocket listener binds",
    },
    KeySpec {
        key: "outer.port",
        kind: Kind::Integer { min: 0, max: 65535 },
        default: "1024",
        help: "port of the WebSocket listener (0 picks a free port)",
    },
    KeySpec {
        key: "outer.path",
        kind: Kind::Text,
        default: "/channel",
        help: "URL path that accepts WebSocket upgrades; must start with `/` and not be `/healthz`",
    },
    KeySpec {
        key: "outer.max-frame-size",
        kind: Kind::Integer {
            min: 1,
            max: MAX_FRAME_SIZE_LIMIT,
        },
        default: "10240",
        help: "largest message accepted, in bytes, after reassembling fragments and decompressing; larger ones close the session with 1009",
    },
    KeySpec {
        key: "outer.on-duplicate",
        kind: Kind::Choice(&["replace", "reject"]),
        default: "replace",
        help: "a second client of the same role and channel id: `replace` closes the old one with 4001, `reject` answers the new one 409",
    },
    KeySpec {
        key: "outer.handshake-timeout",
        kind: Kind::Duration,
        default: "10s",
        help: "time a new TCP connection has from accept to a completed upgrade; a connection that has not upgraded by then is dropped, whatever it is doing",
    },
    KeySpec {
        key: "outer.max-request-head",
        kind: Kind::Integer {
            min: 1024,
            max: 64 * 1024,
        },
        default: "8192",
        help: "largest request head (request line and header fields) read before the upgrade, in bytes; a longer one is answered 431, or 414 when the request line alone does not fit",
    },
    KeySpec {
        key: "outer.ping-interval",
        kind: Kind::Duration,
        default: "20s",
        help: "how often the server pings each client",
    },
    KeySpec {
        key: "outer.idle-timeout",
        kind: Kind::Duration,
        default: "60s",
        help: "a session that receives nothing (not even a pong) for this long is closed with 4002",
    },
    KeySpec {
        key: "outer.send-queue",
        kind: Kind::Integer {
            min: 1,
            max: MAX_U32,
        },
        default: "1024",
        help: "messages waiting for one client; when full, the relay stops reading from its peer",
    },
    KeySpec {
        key: "outer.send-queue-bytes",
        kind: Kind::Integer {
            min: 1,
            max: MAX_U32,
        },
        default: "1048576",
        help: "payload bytes waiting for one client; when full, the relay stops reading from its peer; at least outer.max-frame-size",
    },
    KeySpec {
        key: "outer.message-timeout",
        kind: Kind::Duration,
        default: "10s",
        help: "a message whose first bytes arrived must be complete (all its fragments) within this, or the session is closed with 1008",
    },
    KeySpec {
        key: "outer.max-fragments",
        kind: Kind::Integer { min: 1, max: 65536 },
        default: "128",
        help: "frames one fragmented message may be split into; more close the session with 1008",
    },
    KeySpec {
        key: "outer.stall-timeout",
        kind: Kind::Duration,
        default: "30s",
        help: "a client that has messages waiting but accepts none for this long is closed with 1013",
    },
    KeySpec {
        key: "outer.compression",
        kind: Kind::Bool,
        default: "true",
        help: "negotiate permessage-deflate (RFC 7692) when the client offers it; idle sessions hold no deflate state",
    },
    KeySpec {
        key: "outer.max-connections",
        kind: Kind::Integer {
            min: 1,
            max: MAX_U32,
        },
        default: "100000",
        help: "open client connections at most; further connections get 503 at once (on a TLS listener they are closed)",
    },
    KeySpec {
        key: "outer.max-connections-per-ip",
        kind: Kind::Integer {
            min: 0,
            max: MAX_U32,
        },
        default: "0",
        help: "open connections from one client address at most (0: no limit); more get 429",
    },
    KeySpec {
        key: "outer.connections-per-second-per-ip",
        kind: Kind::Integer {
            min: 0,
            max: MAX_U32,
        },
        default: "0",
        help: "new connections per second from one client address (bursts of one second's worth; 0: no limit); more get 429",
    },
    KeySpec {
        key: "outer.trusted-proxies",
        kind: Kind::Text,
        default: "",
        help: "CIDR blocks of the proxies in front of this node (10.0.0.0/8, ::1/128; a bare address is one host), comma-separated or a TOML array; a connection from one of them is counted and logged under the client its outer.forwarded-header names, and with outer.proxy-protocol only they may connect",
    },
    KeySpec {
        key: "outer.forwarded-header",
        kind: Kind::Choice(&["x-forwarded-for", "forwarded"]),
        default: "x-forwarded-for",
        help: "the header outer.trusted-proxies name their clients in: `x-forwarded-for`, or `forwarded` (RFC 7239, its `for=`); the other one is never read",
    },
    KeySpec {
        key: "outer.proxy-protocol",
        kind: Kind::Bool,
        default: "false",
        help: "every connection opens with a PROXY protocol header (v1 or v2, as HAProxy and AWS NLB send it) naming the client; one without is closed. Only for a port that nothing but the proxy can reach",
    },
    KeySpec {
        key: "outer.max-messages-per-second",
        kind: Kind::Integer {
            min: 0,
            max: MAX_U32,
        },
        default: "0",
        help: "data messages one session may send per second, on average (0: no limit); see outer.rate-burst and outer.rate-limit-action",
    },
    KeySpec {
        key: "outer.max-bytes-per-second",
        kind: Kind::Integer {
            min: 0,
            max: MAX_U32,
        },
        default: "0",
        help: "payload bytes of data messages one session may send per second, on average, counted after decompression (0: no limit); a message larger than the burst still passes, and the session then waits out its excess",
    },
    KeySpec {
        key: "outer.rate-burst",
        kind: Kind::Duration,
        default: "1s",
        help: "how far ahead of its rate a session may run: after a quiet spell it may send this long's worth of outer.max-messages-per-second and outer.max-bytes-per-second at once",
    },
    KeySpec {
        key: "outer.rate-limit-action",
        kind: Kind::Choice(&["throttle", "close"]),
        default: "throttle",
        help: "a session over its rate: `throttle` stops reading it until the rate allows the message (nothing is lost), `close` closes it with 1008",
    },
    KeySpec {
        key: "outer.allowed-origins",
        kind: Kind::Text,
        default: "",
        help: "comma-separated web origins whose pages may connect (https://app.example.com, https://*.example.com); others get 403; upgrades without Origin (not from a browser) pass; empty allows all",
    },
    KeySpec {
        key: "outer.tls-cert",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the certificate chain (server certificate first); with outer.tls-key, clients connect with wss://. Reloaded on SIGHUP",
    },
    KeySpec {
        key: "outer.tls-key",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the private key of outer.tls-cert (PKCS#8, PKCS#1 or SEC1)",
    },
    KeySpec {
        key: "outer.demo",
        kind: Kind::Bool,
        default: "false",
        help: "serve the demo page at `/` (and its files under `/demo/`); off by default: it lets any visitor relay messages through this node",
    },
    KeySpec {
        key: "outer.backlog",
        kind: Kind::Integer { min: 1, max: 65535 },
        default: "1024",
        help: "listen backlog of the client port: connections the kernel holds before they are accepted (capped by net.core.somaxconn)",
    },
    KeySpec {
        key: "inner.ip",
        kind: Kind::Ip,
        default: "0.0.0.0",
        help: "address the node-to-node listener binds (cluster mode)",
    },
    KeySpec {
        key: "inner.port",
        kind: Kind::Integer { min: 0, max: 65535 },
        default: "1025",
        help: "port of the node-to-node listener (cluster mode)",
    },
    KeySpec {
        key: "inner.advertise",
        kind: Kind::Text,
        default: "",
        help: "host:port other nodes dial to reach this node; empty means inner.ip:inner.port, which must then not be 0.0.0.0",
    },
    KeySpec {
        key: "inner.secret",
        kind: Kind::Text,
        default: "",
        help: "shared secret that authenticates node-to-node links (HMAC-SHA256); required in cluster mode, 16 bytes or more",
    },
    KeySpec {
        key: "inner.tls-cert",
        kind: Kind::Text,
        default: "",
        help: "PEM file with this node's certificate chain for TLS on node-to-node links (both directions, mutual); with inner.tls-key and inner.tls-ca. Reloaded on SIGHUP",
    },
    KeySpec {
        key: "inner.tls-key",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the private key of inner.tls-cert (PKCS#8, PKCS#1 or SEC1)",
    },
    KeySpec {
        key: "inner.tls-ca",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the cluster's CA certificates: a link's other end must show a certificate chained to one of them (the only roots trusted there)",
    },
    KeySpec {
        key: "inner.queue",
        kind: Kind::Integer {
            min: 1,
            max: MAX_U32,
        },
        default: "65536",
        help: "frames waiting for one link; when full, senders wait",
    },
    KeySpec {
        key: "inner.queue-bytes",
        kind: Kind::Integer {
            min: 1,
            max: MAX_U32,
        },
        default: "16777216",
        help: "payload bytes of data frames waiting for one link; when full, senders wait; at least outer.max-frame-size",
    },
    KeySpec {
        key: "inner.max-handshakes",
        kind: Kind::Integer { min: 1, max: 65536 },
        default: "64",
        help: "inner connections that may be authenticating at once; more are cut on accept and counted",
    },
    KeySpec {
        key: "inner.heartbeat-interval",
        kind: Kind::Duration,
        default: "1s",
        help: "how often a link is pinged",
    },
    KeySpec {
        key: "inner.link-timeout",
        kind: Kind::Duration,
        default: "3s",
        help: "a link silent for this long is closed and redialled",
    },
    KeySpec {
        key: "inner.connect-timeout",
        kind: Kind::Duration,
        default: "5s",
        help: "frames waiting for a link that is not connected within this are dropped and counted; a new session whose peer's node does not acknowledge it within this is refused with 503",
    },
    KeySpec {
        key: "registry.redis",
        kind: Kind::Text,
        default: "",
        help: "Redis URL (redis://[user:password@]host:port/db; rediss:// for TLS), or comma-separated Redis Cluster seed URLs; empty runs a single node",
    },
    KeySpec {
        key: "registry.cluster",
        kind: Kind::Bool,
        default: "false",
        help: "treat registry.redis as Redis Cluster seeds (implied by more than one URL)",
    },
    KeySpec {
        key: "registry.tls-ca",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the CA certificates that sign Redis's certificate (rediss:// URLs); empty trusts the system's roots",
    },
    KeySpec {
        key: "registry.tls-cert",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the client certificate chain this node shows a Redis that requires one (tls-auth-clients); with registry.tls-key",
    },
    KeySpec {
        key: "registry.tls-key",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the private key of registry.tls-cert (PKCS#8, PKCS#1 or SEC1)",
    },
    KeySpec {
        key: "registry.node-ttl",
        kind: Kind::Duration,
        default: "5s",
        help: "a node that stops heartbeating is treated as dead, and its routes as absent, within this",
    },
    KeySpec {
        key: "registry.timeout",
        kind: Kind::Duration,
        default: "1s",
        help: "deadline of each Redis call; a claim that misses it answers 503",
    },
    KeySpec {
        key: "v1.enabled",
        kind: Kind::Bool,
        default: "true",
        help: "accept the wspair.v1 subprotocol (PROTOCOL.md); when false, v1 offers are answered as raw clients",
    },
    KeySpec {
        key: "v1.window",
        kind: Kind::Integer { min: 1, max: 65536 },
        default: "1024",
        help: "numbered messages a v1 client may have sent and not had acknowledged; beyond it the client is closed with 4008",
    },
    KeySpec {
        key: "v1.window-bytes",
        kind: Kind::Integer {
            min: 1,
            max: 1 << 30,
        },
        default: "1048576",
        help: "payload bytes of those messages; at least outer.max-frame-size",
    },
    KeySpec {
        key: "auth.secret",
        kind: Kind::Text,
        default: "",
        help: "HS256 secret (32 bytes or more) that client tokens are signed with; with it (or auth.public-key) every upgrade needs a token naming its channelId and role, and the session closes with 4003 when it expires",
    },
    KeySpec {
        key: "auth.public-key",
        kind: Kind::Text,
        default: "",
        help: "PEM file with the EC (P-256, ES256) or RSA (RS256) public key client tokens are signed for",
    },
    KeySpec {
        key: "drain.spread",
        kind: Kind::Duration,
        default: "10s",
        help: "on SIGINT or SIGTERM, v1 clients are sent `goaway` at random moments within this, so they do not all reconnect at once",
    },
    KeySpec {
        key: "drain.timeout",
        kind: Kind::Duration,
        default: "30s",
        help: "v1 clients that have not moved this long after SIGINT or SIGTERM are closed with 1001; at least drain.spread",
    },
    KeySpec {
        key: "drain.raw",
        kind: Kind::Choice(&["close", "wait"]),
        default: "close",
        help: "what a drain does with raw clients (they cannot resume elsewhere): `close` them with 1001 at once, or `wait` for them to leave on their own until drain.timeout, then close them with 1001",
    },
    KeySpec {
        key: "admin.enabled",
        kind: Kind::Bool,
        default: "true",
        help: "serve the admin listener: /metrics (Prometheus), /healthz, /readyz and the admin API under /admin/",
    },
    KeySpec {
        key: "admin.ip",
        kind: Kind::Ip,
        default: "127.0.0.1",
        help: "address the admin listener binds; any but a loopback address needs admin.token",
    },
    KeySpec {
        key: "admin.port",
        kind: Kind::Integer { min: 0, max: 65535 },
        default: "1026",
        help: "port of the admin listener (0 picks a free port)",
    },
    KeySpec {
        key: "admin.token",
        kind: Kind::Text,
        default: "",
        help: "bearer token /metrics and /admin/ require (`Authorization: Bearer TOKEN`); 16 bytes or more; empty: none (loopback only)",
    },
    KeySpec {
        key: "log.format",
        kind: Kind::Choice(&["text", "json"]),
        default: "text",
        help: "log lines on stderr as text, or as one JSON object per line (for log collectors); the level comes from RUST_LOG",
    },
    KeySpec {
        key: "shutdown-timeout",
        kind: Kind::Duration,
        default: "10s",
        help: "on SIGINT or SIGTERM, time allowed to close every session with 1001 before exiting",
    },
];

/// What to do when a second client of the same role joins a channel id that has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DuplicatePolicy {
    /// The newest connection wins; the old one is closed with 4001.
    Replace,
    /// The new connection is refused with HTTP 409 before the upgrade.
    Reject,
}

/// What a session does with a message over its rate (`outer.rate-limit-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateAction {
    /// Hold the message, and stop reading the client, until the rate allows it.
    Throttle,
    /// Close the session with 1008; the message is not delivered.
    Close,
}

/// A session's rate limits (`outer.max-messages-per-second`, `outer.max-bytes-per-second`,
/// `outer.rate-burst`, `outer.rate-limit-action`); see `outer::rate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Data messages per second; 0: no limit.
    pub messages_per_second: u32,
    /// Payload bytes per second; 0: no limit.
    pub bytes_per_second: u32,
    /// How far ahead of its rate a session may run.
    pub burst: Duration,
    /// What happens to a message over the rate.
    pub action: RateAction,
}

impl RateLimits {
    /// True when neither rate is limited: sessions then keep no limiter at all.
    pub fn is_off(&self) -> bool {
        self.messages_per_second == 0 && self.bytes_per_second == 0
    }

    /// The most DATA frames one wspair.v1 BATCH may hold under the message rate: one burst's
    /// worth (at least one), so that a BATCH passes as its messages would one by one, never
    /// as a lump beyond the burst. `None` without a message rate.
    pub fn max_batch(&self) -> Option<u32> {
        (self.messages_per_second > 0).then(|| {
            let burst = f64::from(self.messages_per_second) * self.burst.as_secs_f64();
            // Saturating: a burst beyond u32 messages is no limit a BATCH can reach.
            (burst.floor() as u32).max(1)
        })
    }
}

/// Settings of the WebSocket side (`outer.*`).
#[derive(Debug, Clone)]
pub struct OuterConfig {
    /// `outer.ip`.
    pub ip: IpAddr,
    /// `outer.port`.
    pub port: u16,
    /// `outer.path`.
    pub path: String,
    /// `outer.max-frame-size`, in bytes.
    pub max_frame_size: usize,
    /// `outer.on-duplicate`.
    pub on_duplicate: DuplicatePolicy,
    /// `outer.handshake-timeout`: the one deadline from accept to upgrade.
    pub handshake_timeout: Duration,
    /// `outer.max-request-head`, in bytes: also the most a connection buffers before hyper
    /// sees its request.
    pub max_request_head: usize,
    /// `outer.ping-interval`.
    pub ping_interval: Duration,
    /// `outer.idle-timeout`.
    pub idle_timeout: Duration,
    /// `outer.send-queue`, in messages.
    pub send_queue: usize,
    /// `outer.send-queue-bytes`, in payload bytes.
    pub send_queue_bytes: usize,
    /// `outer.message-timeout`.
    pub message_timeout: Duration,
    /// `outer.max-fragments`.
    pub max_fragments: usize,
    /// `outer.stall-timeout`.
    pub stall_timeout: Duration,
    /// `outer.compression`.
    pub compression: bool,
    /// `outer.max-connections`.
    pub max_connections: usize,
    /// `outer.demo`: serve the demo page at `/`.
    pub demo: bool,
    /// `outer.backlog`: the client listener's backlog.
    pub backlog: u32,
    /// `outer.max-connections-per-ip` (0: no limit).
    pub max_connections_per_ip: usize,
    /// `outer.connections-per-second-per-ip` (0: no limit).
    pub connections_per_second_per_ip: u32,
    /// `outer.allowed-origins`.
    pub allowed_origins: crate::origins::AllowedOrigins,
    /// `outer.tls-cert` and `outer.tls-key`: TLS on the client listener, when both are set.
    pub tls: Option<crate::tls::TlsFiles>,
    /// `outer.trusted-proxies`.
    pub trusted_proxies: crate::outer::forwarded::TrustedProxies,
    /// `outer.forwarded-header`.
    pub forwarded_header: crate::outer::forwarded::ForwardedHeader,
    /// `outer.proxy-protocol`.
    pub proxy_protocol: bool,
    /// Per-session message and byte rates (`outer.max-*-per-second`, `outer.rate-*`).
    pub rate: RateLimits,
}

/// Settings of the v1 client protocol (`v1.*`).
#[derive(Debug, Clone, Copy)]
pub struct V1Config {
    /// `v1.enabled`.
    pub enabled: bool,
    /// `v1.window`, in messages.
    pub window: u32,
    /// `v1.window-bytes`, in payload bytes.
    pub window_bytes: u64,
}

/// How a stopping node moves its v1 clients away (`drain.*`).
#[derive(Debug, Clone, Copy)]
pub struct DrainConfig {
    /// `drain.spread`.
    pub spread: Duration,
    /// `drain.timeout`.
    pub timeout: Duration,
    /// `drain.raw = "wait"`: raw sessions are left to end on their own until the timeout.
    pub wait_for_raw: bool,
}

/// The admin listener (`admin.*`).
#[derive(Clone)]
pub struct AdminConfig {
    /// `admin.enabled`.
    pub enabled: bool,
    /// `admin.ip`.
    pub ip: IpAddr,
    /// `admin.port`.
    pub port: u16,
    /// `admin.token`; empty when none is required.
    pub token: String,
}

/// Shortest `admin.token` accepted, in bytes.
pub const MIN_ADMIN_TOKEN_BYTES: usize = 16;

/// Settings of the node-to-node side (`inner.*`), used in cluster mode.
#[derive(Clone)]
pub struct InnerConfig {
    /// `inner.ip`.
    pub ip: IpAddr,
    /// `inner.port`.
    pub port: u16,
    /// `inner.advertise`; empty means `inner.ip:inner.port`.
    pub advertise: String,
    /// `inner.secret`.
    pub secret: String,
    /// `inner.queue`, in frames.
    pub queue: usize,
    /// `inner.queue-bytes`, in payload bytes of data frames.
    pub queue_bytes: usize,
    /// `inner.max-handshakes`.
    pub max_handshakes: usize,
    /// `inner.heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `inner.link-timeout`.
    pub link_timeout: Duration,
    /// `inner.connect-timeout`.
    pub connect_timeout: Duration,
    /// `inner.tls-cert`, `inner.tls-key`, `inner.tls-ca`: mutual TLS on links, when set.
    pub tls: Option<crate::tls::inner::InnerTlsFiles>,
}

/// Settings of the registry (`registry.*`); cluster mode when `redis` is set.
#[derive(Clone)]
pub struct RegistryConfig {
    /// `registry.redis`, split at commas; empty for a single node.
    pub redis: Vec<String>,
    /// `registry.cluster`, or more than one URL.
    pub cluster: bool,
    /// `registry.node-ttl`.
    pub node_ttl: Duration,
    /// `registry.timeout`.
    pub timeout: Duration,
    /// `registry.tls-ca`, `registry.tls-cert`, `registry.tls-key`: used with `rediss://`.
    pub tls: crate::tls::registry::RegistryTls,
}

/// What a secret setting is shown as in `Debug` output: nothing when unset, never its value (a
/// `?config` in a log line or a panic message must not print it).
fn redacted(secret: &str) -> &'static str {
    if secret.is_empty() { "" } else { REDACTED }
}

impl std::fmt::Debug for InnerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InnerConfig")
            .field("ip", &self.ip)
            .field("port", &self.port)
            .field("advertise", &self.advertise)
            .field("secret", &redacted(&self.secret))
            .field("queue", &self.queue)
            .field("queue_bytes", &self.queue_bytes)
            .field("max_handshakes", &self.max_handshakes)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("link_timeout", &self.link_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redis: Vec<String> = self
            .redis
            .iter()
            .map(|url| redact_url_passwords(url))
            .collect();
        f.debug_struct("RegistryConfig")
            .field("redis", &redis)
            .field("cluster", &self.cluster)
            .field("node_ttl", &self.node_ttl)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .finish()
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("enabled", &self.enabled)
            .field("ip", &self.ip)
            .field("port", &self.port)
            .field("token", &redacted(&self.token))
            .finish()
    }
}

/// How long a closing session may take to send its close frame and see the client's reply
/// before the connection is dropped.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Room in `shutdown-timeout` beyond the slowest session's close, for the tasks to end.
const SHUTDOWN_SLACK: Duration = Duration::from_millis(500);

impl OuterConfig {
    /// The credit window this node grants to senders on other nodes, per session: as many
    /// messages as fit in a session's queue even if every one is as large as allowed, so
    /// messages from other nodes can never overflow `outer.send-queue-bytes`.
    pub fn credit_window(&self) -> usize {
        self.send_queue
            .min(self.send_queue_bytes / self.max_frame_size)
            .max(1)
    }
}

/// Path of the health document.
pub const HEALTHZ_PATH: &str = "/healthz";

/// `outer.tls-cert` and `outer.tls-key`: both or neither, and both files usable (read now, so
/// that a bad file is a configuration error naming its key).
fn tls_files(cert: String, key: String) -> Result<Option<crate::tls::TlsFiles>, ConfigError> {
    match (cert.is_empty(), key.is_empty()) {
        (true, true) => Ok(None),
        (false, true) => Err(invalid(
            "outer.tls-key",
            "must be set with outer.tls-cert".to_owned(),
        )),
        (true, false) => Err(invalid(
            "outer.tls-cert",
            "must be set with outer.tls-key".to_owned(),
        )),
        (false, false) => {
            let files = crate::tls::TlsFiles {
                cert: cert.into(),
                key: key.into(),
            };
            files.load().map_err(|e| invalid(e.key, e.problem))?;
            Ok(Some(files))
        }
    }
}

/// `inner.tls-*`: all three or none (naming one that is missing), and the files usable.
fn inner_tls(
    cert: String,
    key: String,
    ca: String,
) -> Result<Option<crate::tls::inner::InnerTlsFiles>, ConfigError> {
    let keys = [
        ("inner.tls-cert", &cert),
        ("inner.tls-key", &key),
        ("inner.tls-ca", &ca),
    ];
    let set: Vec<_> = keys.iter().filter(|(_, v)| !v.is_empty()).collect();
    if set.is_empty() {
        return Ok(None);
    }
    if let Some((missing, _)) = keys.iter().find(|(_, v)| v.is_empty()) {
        return Err(invalid(
            missing,
            format!(
                "must be set with {}: inner TLS needs inner.tls-cert, inner.tls-key and inner.tls-ca",
                set.iter()
                    .map(|(k, _)| *k)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        ));
    }
    let files = crate::tls::inner::InnerTlsFiles {
        cert: cert.into(),
        key: key.into(),
        ca: ca.into(),
    };
    files.check().map_err(|e| invalid(e.key, e.problem))?;
    Ok(Some(files))
}

/// `registry.tls-*`: the client certificate and key both or neither, only with `rediss://` URLs
/// (TLS files for a plaintext Redis are a mistake, not something to ignore), and every file
/// usable.
fn registry_tls(
    redis: &[String],
    ca: String,
    cert: String,
    key: String,
) -> Result<crate::tls::registry::RegistryTls, ConfigError> {
    let client = match (cert.is_empty(), key.is_empty()) {
        (true, true) => None,
        (false, true) => {
            return Err(invalid(
                "registry.tls-key",
                "must be set with registry.tls-cert".to_owned(),
            ));
        }
        (true, false) => {
            return Err(invalid(
                "registry.tls-cert",
                "must be set with registry.tls-key".to_owned(),
            ));
        }
        (false, false) => Some(crate::tls::TlsFiles {
            cert: cert.into(),
            key: key.into(),
        }),
    };
    let tls = crate::tls::registry::RegistryTls {
        ca: (!ca.is_empty()).then(|| ca.into()),
        client,
    };
    let secure = redis
        .iter()
        .filter(|url| url.starts_with("rediss://"))
        .count();
    if secure != 0 && secure != redis.len() {
        return Err(invalid(
            "registry.redis",
            "mixes rediss:// and redis:// URLs; use one scheme for every seed".to_owned(),
        ));
    }
    if tls.is_set() && secure == 0 {
        let key = if tls.ca.is_some() {
            "registry.tls-ca"
        } else {
            "registry.tls-cert"
        };
        return Err(invalid(
            key,
            "is set, but registry.redis has no rediss:// URL: the registry would not use TLS"
                .to_owned(),
        ));
    }
    tls.check().map_err(|e| invalid(e.key, e.problem))?;
    Ok(tls)
}

/// Where the demo page's files are served from when `outer.demo` is on (the page itself is `/`).
pub const DEMO_PREFIX: &str = "/demo/";

/// Smallest `inner.secret` accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The whole, validated configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The WebSocket side.
    pub outer: OuterConfig,
    /// The node-to-node side.
    pub inner: InnerConfig,
    /// The registry.
    pub registry: RegistryConfig,
    /// The v1 client protocol.
    pub v1: V1Config,
    /// Draining v1 clients on shutdown.
    pub drain: DrainConfig,
    /// Client tokens (`auth.*`).
    pub auth: crate::auth::AuthConfig,
    /// The admin listener.
    pub admin: AdminConfig,
    /// `log.format = "json"`: one JSON object per log line.
    pub log_json: bool,
    /// `shutdown-timeout`.
    pub shutdown_timeout: Duration,
    /// Every key's value after all layers, for showing (`wspair check-config`).
    pub effective: Effective,
}

impl Default for Config {
    fn default() -> Self {
        Config::load(None, &[]).expect("the built-in defaults are valid")
    }
}

/// One layer of values, by dotted key.
type Layer = BTreeMap<&'static str, toml::Value>;

impl Config {
    /// Builds the configuration from the defaults, the file at `file` (if any) and
    /// `overrides` (key and text, from the environment or flags, later entries winning).
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
        match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Config::load_text(path, &text, overrides)
            }
            None => Config::from_layers(Layer::new(), overrides),
        }
    }

    /// As [`Config::load`], with the file's text given; `path` only names it in errors. The
    /// config loader's fuzz target starts here.
    pub fn load_text(
        path: &Path,
        text: &str,
        overrides: &[(&str, String)],
    ) -> Result<Config, ConfigError> {
        Config::from_layers(parse_file(path, text)?, overrides)
    }

    /// The defaults, then `file`'s values, then `overrides`.
    fn from_layers(file: Layer, overrides: &[(&str, String)]) -> Result<Config, ConfigError> {
        let mut values = Layer::new();
        for spec in KEYS {
            let default = parse_text(spec, spec.default).expect("every default parses");
            values.insert(spec.key, default);
        }
        values.extend(file);
        for (key, text) in overrides {
            let spec = spec_of(key).ok_or_else(|| ConfigError::UnknownKey {
                key: (*key).to_owned(),
            })?;
            values.insert(spec.key, parse_text(spec, text)?);
        }
        Config::from_values(&values)
    }

    fn from_values(values: &Layer) -> Result<Config, ConfigError> {
        let get = |key: &str| {
            let spec = spec_of(key).expect("from_values asks only for keys in KEYS");
            (spec, &values[spec.key])
        };
        let ip = |key| checked_ip(get(key));
        let int = |key| checked_integer(get(key));
        let duration = |key| checked_duration(get(key));

        let path = checked_text(get("outer.path"))?;
        if !path.starts_with('/') {
            return Err(invalid(
                "outer.path",
                format!("must start with `/`, got {path:?}"),
            ));
        }
        if path == HEALTHZ_PATH {
            return Err(invalid(
                "outer.path",
                format!("{path:?} is taken by the health document"),
            ));
        }
        let on_duplicate = match checked_choice(get("outer.on-duplicate"))?.as_str() {
            "reject" => DuplicatePolicy::Reject,
            _ => DuplicatePolicy::Replace,
        };
        let outer = OuterConfig {
            ip: ip("outer.ip")?,
            port: int("outer.port")? as u16,
            path,
            max_frame_size: int("outer.max-frame-size")? as usize,
            on_duplicate,
            handshake_timeout: duration("outer.handshake-timeout")?,
            max_request_head: int("outer.max-request-head")? as usize,
            ping_interval: duration("outer.ping-interval")?,
            idle_timeout: duration("outer.idle-timeout")?,
            send_queue: int("outer.send-queue")? as usize,
            send_queue_bytes: int("outer.send-queue-bytes")? as usize,
            message_timeout: duration("outer.message-timeout")?,
            max_fragments: int("outer.max-fragments")? as usize,
            stall_timeout: duration("outer.stall-timeout")?,
            compression: checked_bool(get("outer.compression"))?,
            max_connections: int("outer.max-connections")? as usize,
            demo: checked_bool(get("outer.demo"))?,
            backlog: int("outer.backlog")? as u32,
            max_connections_per_ip: int("outer.max-connections-per-ip")? as usize,
            connections_per_second_per_ip: int("outer.connections-per-second-per-ip")? as u32,
            allowed_origins: crate::origins::AllowedOrigins::parse(&checked_text(get(
                "outer.allowed-origins",
            ))?)
            .map_err(|problem| invalid("outer.allowed-origins", problem))?,
            tls: tls_files(
                checked_text(get("outer.tls-cert"))?,
                checked_text(get("outer.tls-key"))?,
            )?,
            trusted_proxies: crate::outer::forwarded::TrustedProxies::parse(
                checked_list(get("outer.trusted-proxies"))?
                    .iter()
                    .map(String::as_str),
            )
            .map_err(|problem| invalid("outer.trusted-proxies", problem))?,
            forwarded_header: match checked_choice(get("outer.forwarded-header"))?.as_str() {
                "forwarded" => crate::outer::forwarded::ForwardedHeader::Forwarded,
                _ => crate::outer::forwarded::ForwardedHeader::XForwardedFor,
            },
            proxy_protocol: checked_bool(get("outer.proxy-protocol"))?,
            rate: RateLimits {
                messages_per_second: int("outer.max-messages-per-second")? as u32,
                bytes_per_second: int("outer.max-bytes-per-second")? as u32,
                burst: duration("outer.rate-burst")?,
                action: match checked_choice(get("outer.rate-limit-action"))?.as_str() {
                    "close" => RateAction::Close,
                    _ => RateAction::Throttle,
                },
            },
        };
        if outer.demo && (outer.path == "/" || outer.path.starts_with(DEMO_PREFIX)) {
            return Err(invalid(
                "outer.demo",
                format!(
                    "the demo page needs `/` and `{DEMO_PREFIX}*`, but outer.path is {:?}",
                    outer.path
                ),
            ));
        }
        // Timeouts are checked on a tick a quarter of the idle timeout long at most, so a ping
        // goes out up to a tick after it is due: at half the idle timeout, it still leaves the
        // client a quarter of it to answer.
        if outer.ping_interval > outer.idle_timeout / 2 {
            return Err(invalid(
                "outer.ping-interval",
                format!(
                    "{:?} must be at most half of outer.idle-timeout {:?}, or a live client could time out before its first ping",
                    outer.ping_interval, outer.idle_timeout
                ),
            ));
        }
        for (key, bytes) in [
            ("outer.send-queue-bytes", outer.send_queue_bytes),
            ("inner.queue-bytes", int("inner.queue-bytes")? as usize),
        ] {
            if bytes < outer.max_frame_size {
                return Err(invalid(
                    key,
                    format!(
                        "{bytes} must be at least outer.max-frame-size {}, or the largest message could never be queued",
                        outer.max_frame_size
                    ),
                ));
            }
        }
        let inner = InnerConfig {
            ip: ip("inner.ip")?,
            port: int("inner.port")? as u16,
            advertise: checked_text(get("inner.advertise"))?,
            secret: checked_text(get("inner.secret"))?,
            queue: int("inner.queue")? as usize,
            queue_bytes: int("inner.queue-bytes")? as usize,
            max_handshakes: int("inner.max-handshakes")? as usize,
            heartbeat_interval: duration("inner.heartbeat-interval")?,
            link_timeout: duration("inner.link-timeout")?,
            connect_timeout: duration("inner.connect-timeout")?,
            tls: inner_tls(
                checked_text(get("inner.tls-cert"))?,
                checked_text(get("inner.tls-key"))?,
                checked_text(get("inner.tls-ca"))?,
            )?,
        };
        let redis: Vec<String> = checked_text(get("registry.redis"))?
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect();
        let tls = registry_tls(
            &redis,
            checked_text(get("registry.tls-ca"))?,
            checked_text(get("registry.tls-cert"))?,
            checked_text(get("registry.tls-key"))?,
        )?;
        let registry = RegistryConfig {
            cluster: checked_bool(get("registry.cluster"))? || redis.len() > 1,
            tls,
            redis,
            node_ttl: duration("registry.node-ttl")?,
            timeout: duration("registry.timeout")?,
        };
        if !registry.redis.is_empty() {
            check_cluster_settings(&inner)?;
        }
        if inner.heartbeat_interval >= inner.link_timeout {
            return Err(invalid(
                "inner.heartbeat-interval",
                format!(
                    "{:?} must be shorter than inner.link-timeout {:?}",
                    inner.heartbeat_interval, inner.link_timeout
                ),
            ));
        }
        let admin = AdminConfig {
            enabled: checked_bool(get("admin.enabled"))?,
            ip: ip("admin.ip")?,
            port: int("admin.port")? as u16,
            token: checked_text(get("admin.token"))?,
        };
        if !admin.token.is_empty() && admin.token.len() < MIN_ADMIN_TOKEN_BYTES {
            return Err(invalid(
                "admin.token",
                format!(
                    "must be {MIN_ADMIN_TOKEN_BYTES} bytes or more (a guessable token guards nothing)"
                ),
            ));
        }
        if admin.enabled && admin.token.is_empty() && !admin.ip.is_loopback() {
            return Err(invalid(
                "admin.token",
                format!(
                    "is needed to serve the admin API on {}, which is not a loopback address",
                    admin.ip
                ),
            ));
        }
        let shutdown_timeout = duration("shutdown-timeout")?;
        // A closing session may take CLOSE_TIMEOUT for its close handshake, then releases its
        // route in the registry; a shorter shutdown would fail whenever one client is silent.
        let release_time = if registry.redis.is_empty() {
            Duration::ZERO
        } else {
            registry.timeout
        };
        let min_shutdown = CLOSE_TIMEOUT + release_time + SHUTDOWN_SLACK;
        if shutdown_timeout < min_shutdown {
            return Err(invalid(
                "shutdown-timeout",
                format!(
                    "{shutdown_timeout:?} is too short: closing a session takes up to {CLOSE_TIMEOUT:?}{}, so at least {min_shutdown:?} is needed",
                    if release_time.is_zero() {
                        String::new()
                    } else {
                        format!(" plus registry.timeout {release_time:?}")
                    }
                ),
            ));
        }
        let v1 = V1Config {
            enabled: checked_bool(get("v1.enabled"))?,
            window: int("v1.window")? as u32,
            window_bytes: int("v1.window-bytes")? as u64,
        };
        if v1.window_bytes < outer.max_frame_size as u64 {
            return Err(invalid(
                "v1.window-bytes",
                format!(
                    "{} must be at least outer.max-frame-size {}, or the largest message could never be sent",
                    v1.window_bytes, outer.max_frame_size
                ),
            ));
        }
        let drain = DrainConfig {
            spread: duration("drain.spread")?,
            timeout: duration("drain.timeout")?,
            wait_for_raw: checked_choice(get("drain.raw"))? == "wait",
        };
        if drain.timeout < drain.spread {
            return Err(invalid(
                "drain.timeout",
                format!(
                    "{:?} must be at least drain.spread {:?}",
                    drain.timeout, drain.spread
                ),
            ));
        }
        let public_key = checked_text(get("auth.public-key"))?;
        let auth = crate::auth::AuthConfig {
            secret: checked_text(get("auth.secret"))?,
            public_key: (!public_key.is_empty()).then(|| public_key.into()),
        };
        // Read now, so that a bad secret or key file is a configuration error naming its key.
        crate::auth::Auth::new(&auth).map_err(|e| invalid(e.key, e.problem))?;
        Ok(Config {
            outer,
            inner,
            registry,
            v1,
            drain,
            auth,
            admin,
            log_json: checked_choice(get("log.format"))? == "json",
            shutdown_timeout,
            effective: Effective(values.clone()),
        })
    }
}

/// Cluster mode needs a secret and an address other nodes can dial.
fn check_cluster_settings(inner: &InnerConfig) -> Result<(), ConfigError> {
    if inner.secret.len() < MIN_SECRET_BYTES {
        return Err(invalid(
            "inner.secret",
            format!(
                "cluster mode (registry.redis is set) needs a shared secret of {MIN_SECRET_BYTES} bytes or more, got {}",
                inner.secret.len()
            ),
        ));
    }
    let advertise = inner.advertise_addr();
    let host = advertise
        .rsplit_once(':')
        .map(|(host, _)| host.trim_matches(['[', ']']))
        .ok_or_else(|| {
            invalid(
                "inner.advertise",
                format!("expected host:port, got {advertise:?}"),
            )
        })?;
    if host.parse::<IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(invalid(
            "inner.advertise",
            format!(
                "{advertise:?} cannot be dialled by other nodes; set inner.advertise (or inner.ip) to this node's address"
            ),
        ));
    }
    Ok(())
}

impl InnerConfig {
    /// The address other nodes dial: `inner.advertise`, or `inner.ip:inner.port`.
    pub fn advertise_addr(&self) -> String {
        if self.advertise.is_empty() {
            std::net::SocketAddr::new(self.ip, self.port).to_string()
        } else {
            self.advertise.clone()
        }
    }
}

fn spec_of(key: &str) -> Option<&'static KeySpec> {
    KEYS.iter().find(|spec| spec.key == key)
}

fn invalid(key: &str, problem: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        problem,
    }
}

/// Reads a TOML document into dotted keys, refusing keys that are not in [`KEYS`].
fn parse_file(path: &Path, text: &str) -> Result<Layer, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|err: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: syntax_message(text, &err),
        })?;
    let mut layer = Layer::new();
    flatten("", &table, &mut layer)?;
    Ok(layer)
}

/// The parser's description of a syntax error with its line and column, without the quote of
/// the line it would otherwise show: that line may hold a secret.
fn syntax_message(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim_end();
    match err.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message.to_owned(),
    }
}

fn flatten(prefix: &str, table: &toml::Table, layer: &mut Layer) -> Result<(), ConfigError> {
    for (name, value) in table {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (value, spec_of(&key)) {
            (_, Some(spec)) => {
                layer.insert(spec.key, value.clone());
            }
            (toml::Value::Table(inner), None) => flatten(&key, inner, layer)?,
            (_, None) => return Err(ConfigError::UnknownKey { key }),
        }
    }
    Ok(())
}

/// Turns text from the environment, a flag or a default into a value of the key's kind.
fn parse_text(spec: &KeySpec, text: &str) -> Result<toml::Value, ConfigError> {
    match spec.kind {
        Kind::Integer { .. } => text
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| invalid(spec.key, format!("expected an integer, got {text:?}"))),
        Kind::Bool => match text.trim() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err(invalid(
                spec.key,
                format!("expected true or false, got {text:?}"),
            )),
        },
        Kind::Text | Kind::Ip | Kind::Duration | Kind::Choice(_) => {
            Ok(toml::Value::String(text.to_owned()))
        }
    }
}

fn type_error(spec: &KeySpec, expected: &str, value: &toml::Value) -> ConfigError {
    // An error message is logged and shown: a secret's value is not quoted in it.
    let shown = if SECRET_KEYS.contains(&spec.key) || spec.key == "registry.redis" {
        REDACTED.to_owned()
    } else {
        value.to_string()
    };
    invalid(
        spec.key,
        format!("expected {expected}, got {} {shown}", value.type_str()),
    )
}

fn checked_text((spec, value): (&KeySpec, &toml::Value)) -> Result<String, ConfigError> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| type_error(spec, "a string", value))
}

/// A list: comma-separated text (from the environment or a flag), or in the file a TOML array
/// of strings.
fn checked_list((spec, value): (&KeySpec, &toml::Value)) -> Result<Vec<String>, ConfigError> {
    match value {
        toml::Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| type_error(spec, "an array of strings", item))
            })
            .collect(),
        text => Ok(checked_text((spec, text))?
            .split(',')
            .map(str::to_owned)
            .collect()),
    }
}

fn checked_ip(entry: (&KeySpec, &toml::Value)) -> Result<IpAddr, ConfigError> {
    let text = checked_text(entry)?;
    text.parse()
        .map_err(|_| invalid(entry.0.key, format!("expected an IP address, got {text:?}")))
}

fn checked_integer((spec, value): (&KeySpec, &toml::Value)) -> Result<i64, ConfigError> {
    let number = value
        .as_integer()
        .ok_or_else(|| type_error(spec, "an integer", value))?;
    match spec.kind {
        Kind::Integer { min, max } if number < min || number > max => Err(invalid(
            spec.key,
            format!("{number} is out of range {min}..={max}"),
        )),
        _ => Ok(number),
    }
}

fn checked_bool((spec, value): (&KeySpec, &toml::Value)) -> Result<bool, ConfigError> {
    value
        .as_bool()
        .ok_or_else(|| type_error(spec, "true or false", value))
}

fn checked_choice(entry: (&KeySpec, &toml::Value)) -> Result<String, ConfigError> {
    let text = checked_text(entry)?;
    match entry.0.kind {
        Kind::Choice(words) if !words.contains(&text.as_str()) => Err(invalid(
            entry.0.key,
            format!("expected one of {}, got {text:?}", words.join(", ")),
        )),
        _ => Ok(text),
    }
}

fn checked_duration(entry: (&KeySpec, &toml::Value)) -> Result<Duration, ConfigError> {
    let text = checked_text(entry)?;
    let duration = parse_duration(&text).ok_or_else(|| {
        invalid(
            entry.0.key,
            format!("expected a duration such as \"500ms\", \"10s\" or \"2m\", got {text:?}"),
        )
    })?;
    if duration.is_zero() {
        return Err(invalid(entry.0.key, "must be longer than zero".to_owned()));
    }
    if duration > MAX_DURATION {
        return Err(invalid(
            entry.0.key,
            format!("{text} is longer than the longest duration accepted, one day (1440m)"),
        ));
    }
    Ok(duration)
}

/// Keys whose values are secrets: shown as [`REDACTED`] when set.
const SECRET_KEYS: &[&str] = &["inner.secret", "auth.secret", "admin.token"];

/// What a secret is shown as.
pub const REDACTED: &str = "<redacted>";

/// Every key's value after all layers (defaults, file, environment, flags), as a node runs
/// with them; shown with secrets redacted, so the output can be pasted into a ticket.
#[derive(Clone)]
pub struct Effective(Layer);

impl std::fmt::Debug for Effective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Effective {
    /// The values as a TOML document, one table per section (`[outer]`, `[inner]`, ...), with
    /// secrets redacted: a file that `--config` would read back, but for the secrets.
    pub fn to_toml(&self) -> String {
        let mut root = toml::Table::new();
        for (key, value) in self.redacted() {
            match key.split_once('.') {
                Some((section, name)) => {
                    let table = root
                        .entry(section)
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    if let toml::Value::Table(table) = table {
                        table.insert(name.to_owned(), value);
                    }
                }
                None => {
                    root.insert(key.to_owned(), value);
                }
            }
        }
        toml::to_string(&root).expect("a table of plain values serialises")
    }

    /// The values by dotted key, with secrets redacted.
    pub fn redacted(&self) -> impl Iterator<Item = (&'static str, toml::Value)> + '_ {
        self.0.iter().map(|(key, value)| {
            let shown = match value.as_str() {
                Some(text) if !text.is_empty() && SECRET_KEYS.contains(key) => {
                    toml::Value::String(REDACTED.to_owned())
                }
                Some(text) if *key == "registry.redis" => {
                    toml::Value::String(redact_url_passwords(text))
                }
                _ => value.clone(),
            };
            (*key, shown)
        })
    }
}

/// `urls` (one URL or a comma-separated list) with every password redacted: the one in user
/// information (`redis://user:PASSWORD@host`) and `pass=`/`password=` query parameters
/// (`redis+unix:///run/redis.sock?pass=PASSWORD`). Not split at commas or slashes first, since
/// a password may hold either: each user information runs from a `://` to the last `@` before
/// the next `://`.
fn redact_url_passwords(urls: &str) -> String {
    let mut shown = String::with_capacity(urls.len());
    let mut rest = urls;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        shown.push_str(head);
        let region_end = tail.find("://").unwrap_or(tail.len());
        let (region, next) = tail.split_at(region_end);
        match region.rfind('@') {
            Some(end) => {
                let userinfo = &region[..end];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        shown.push_str(user);
                        shown.push(':');
                        shown.push_str(REDACTED);
                    }
                    None => shown.push_str(userinfo),
                }
                shown.push_str(&redact_query_passwords(&region[end..]));
            }
            None => shown.push_str(&redact_query_passwords(region)),
        }
        rest = next;
    }
    shown.push_str(rest);
    shown
}

/// `text` with the values of `pass=` and `password=` parameters redacted.
fn redact_query_passwords(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = ["pass=", "password="]
        .iter()
        .filter_map(|name| {
            let at = rest.find(name)?;
            let starts_parameter = at == 0 || matches!(rest.as_bytes()[at - 1], b'?' | b'&');
            starts_parameter.then_some(at + name.len())
        })
        .min()
    {
        shown.push_str(&rest[..at]);
        shown.push_str(REDACTED);
        let value_end = rest[at..]
            .find(['&', ','])
            .map_or(rest.len(), |end| at + end);
        rest = &rest[value_end..];
    }
    shown.push_str(rest);
    shown
}

/// Parses `<integer><unit>` with unit `ms`, `s` or `m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_file(text: &str) -> Result<Config, ConfigError> {
        let mut values = Layer::new();
        for spec in KEYS {
            values.insert(spec.key, parse_text(spec, spec.default).unwrap());
        }
        values.extend(parse_file(Path::new("test.toml"), text)?);
        Config::from_values(&values)
    }

    #[test]
    fn defaults_match_the_original_design() {
        let config = Config::default();
        assert_eq!(config.outer.port, 1024);
        assert_eq!(config.outer.path, "/channel");
        assert_eq!(config.outer.max_frame_size, 10240);
        assert_eq!(config.inner.port, 1025);
        assert_eq!(config.outer.on_duplicate, DuplicatePolicy::Replace);
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
    }

    #[test]
    fn file_values_override_defaults() {
        let config =
            from_file("[outer]\nport = 2000\nmax-frame-size = 65536\non-duplicate = \"reject\"\n")
                .unwrap();
        assert_eq!(config.outer.port, 2000);
        assert_eq!(config.outer.max_frame_size, 65536);
        assert_eq!(config.outer.on_duplicate, DuplicatePolicy::Reject);
    }

    #[test]
    fn the_effective_configuration_shows_every_key_and_hides_secrets() {
        let config = from_file(
            "[inner]\nsecret = \"0123456789abcdef0123\"\nadvertise = \"10.0.0.1:1025\"\n[registry]\nredis = \"redis://u:p4ss@r1:6379/0, redis://:only@r2\"\n",
        )
        .unwrap();
        let shown = config.effective.to_toml();
        assert!(!shown.contains("0123456789abcdef0123"), "{shown}");
        assert!(
            !shown.contains("p4ss") && !shown.contains("only@"),
            "{shown}"
        );
        assert!(shown.contains("secret = \"<redacted>\""), "{shown}");
        assert!(
            shown.contains("redis = \"redis://u:<redacted>@r1:6379/0, redis://:<redacted>@r2\""),
            "{shown}"
        );
        // Read back, it is the same configuration but for the secrets.
        let again: toml::Table = shown.parse().unwrap();
        assert_eq!(again["outer"]["port"].as_integer(), Some(1024));
        assert_eq!(
            again["shutdown-timeout"].as_str(),
            Some(
                KEYS.iter()
                    .find(|k| k.key == "shutdown-timeout")
                    .unwrap()
                    .default
            )
        );
        let shown_keys: usize = again
            .values()
            .map(|v| v.as_table().map_or(1, toml::Table::len))
            .sum();
        assert_eq!(shown_keys, KEYS.len());
        // An empty secret is shown as it is: nothing to hide, and worth seeing.
        assert!(
            Config::default()
                .effective
                .to_toml()
                .contains("secret = \"\"")
        );
    }

    #[test]
    fn passwords_are_redacted_in_every_url_form_and_never_quoted_in_errors() {
        for (urls, shown) in [
            (
                "redis://:COMMA,PASS@10.0.0.9:6379",
                "redis://:<redacted>@10.0.0.9:6379",
            ),
            ("redis://:SLASH/PASS@h:1/0", "redis://:<redacted>@h:1/0"),
            (
                "redis+unix:///run/redis.sock?db=1&pass=UNIXPASS",
                "redis+unix:///run/redis.sock?db=1&pass=<redacted>",
            ),
            (
                "rediss://u:a@b@h1:1, rediss://v:c@h2:2?password=d",
                "rediss://u:<redacted>@h1:1, rediss://v:<redacted>@h2:2?password=<redacted>",
            ),
            ("redis://user@h:1", "redis://user@h:1"),
            ("redis://h:1?bypass=no", "redis://h:1?bypass=no"),
        ] {
            assert_eq!(redact_url_passwords(urls), shown, "{urls}");
        }
        let err = from_file("[admin]\ntoken = 98765432109876543\n").unwrap_err();
        assert!(!err.to_string().contains("98765"), "{err}");
        let err = from_file("[inner]\nsecret = \"INNER-SECRET-abcdef0123\n").unwrap_err();
        assert!(!err.to_string().contains("INNER-SECRET"), "{err}");
        assert!(err.to_string().contains("line 2, column "), "{err}");
    }

    #[test]
    fn debug_output_never_shows_a_secret() {
        let config = from_file(
            "[inner]\nsecret = \"INNER-SECRET-0123\"\nadvertise = \"10.0.0.1:1025\"\n[admin]\ntoken = \"ADMIN-TOKEN-0123456\"\n[auth]\nsecret = \"AUTH-SECRET-0123456789abcdef0123456\"\n[registry]\nredis = \"redis://u:REDISPASS@h:1\"\n",
        )
        .unwrap();
        let shown = format!("{config:?}");
        for secret in ["INNER-SECRET", "ADMIN-TOKEN", "AUTH-SECRET", "REDISPASS"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn unknown_key_is_named() {
        let err = from_file("[outer]\nprot = 2000\n").unwrap_err();
        assert_eq!(err.to_string(), "unknown key `outer.prot`");
        let err = from_file("[outr]\nport = 2000\n").unwrap_err();
        assert_eq!(err.to_string(), "unknown key `outr.port`");
    }

    #[test]
    fn wrong_type_names_key_and_value() {
        let err = from_file("[outer]\nport = \"abc\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.port: expected an integer, got string \"abc\""
        );
    }

    #[test]
    fn out_of_range_names_key_and_limit() {
        let err = from_file("[outer]\nport = 70000\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.port: 70000 is out of range 0..=65535"
        );
    }

    #[test]
    fn overrides_are_typed_by_key() {
        let config = Config::load(None, &[("outer.compression", "true".into())]).unwrap();
        assert!(config.outer.compression);
        let err = Config::load(None, &[("outer.send-queue", "many".into())]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.send-queue: expected an integer, got \"many\""
        );
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("10"), None);
        let err = from_file("shutdown-timeout = \"10\"\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("shutdown-timeout: expected a duration")
        );
    }

    #[test]
    fn ping_must_be_shorter_than_idle_timeout() {
        let err = from_file("[outer]\nping-interval = \"60s\"\n").unwrap_err();
        assert!(err.to_string().starts_with("outer.ping-interval:"), "{err}");
    }

    /// Regression: `idle-timeout = 25s` with the default 20 s ping was accepted, and closed
    /// healthy clients with 4002 at 25 s, before the tick that would have pinged them.
    #[test]
    fn ping_must_leave_the_client_time_to_answer_before_the_idle_timeout() {
        let err = from_file("[outer]\nidle-timeout = \"25s\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.ping-interval: 20s must be at most half of outer.idle-timeout 25s, or a live client could time out before its first ping"
        );
        assert!(from_file("[outer]\nidle-timeout = \"40s\"\n").is_ok());
    }

    /// Regression: `shutdown-timeout = 500ms` was accepted although a closing session gets
    /// 1 s, so one silent client made every shutdown fail.
    #[test]
    fn shutdown_timeout_must_cover_a_session_close() {
        let err = from_file("shutdown-timeout = \"500ms\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "shutdown-timeout: 500ms is too short: closing a session takes up to 1s, so at least 1.5s is needed"
        );
        assert!(from_file("shutdown-timeout = \"1500ms\"\n").is_ok());
    }

    /// Regression: `handshake-timeout = 18446744073709551615s` was accepted, and then every
    /// connection panicked inside hyper's timer.
    #[test]
    fn durations_are_bounded() {
        let err =
            from_file("[outer]\nhandshake-timeout = \"18446744073709551615s\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.handshake-timeout: 18446744073709551615s is longer than the longest duration accepted, one day (1440m)"
        );
        assert!(from_file("[outer]\nhandshake-timeout = \"1440m\"\n").is_ok());
    }

    #[test]
    fn byte_budgets_hold_at_least_the_largest_message() {
        let err =
            from_file("[outer]\nmax-frame-size = 65536\nsend-queue-bytes = 65535\n").unwrap_err();
        assert!(
            err.to_string().starts_with(
                "outer.send-queue-bytes: 65535 must be at least outer.max-frame-size 65536"
            ),
            "{err}"
        );
        let err = from_file("[outer]\nmax-frame-size = 65536\n[inner]\nqueue-bytes = 1000\n")
            .unwrap_err();
        assert!(err.to_string().starts_with("inner.queue-bytes:"), "{err}");
        let err = from_file("[outer]\nmax-frame-size = 16777217\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.max-frame-size: 16777217 is out of range 1..=16777216"
        );
    }

    #[test]
    fn the_credit_window_fits_the_queue_in_bytes() {
        let config = Config::default();
        assert_eq!(config.outer.credit_window(), 102);
        let config = from_file("[outer]\nsend-queue = 8\n").unwrap();
        assert_eq!(config.outer.credit_window(), 8);
        let config =
            from_file("[outer]\nmax-frame-size = 1048576\nsend-queue-bytes = 1048576\n").unwrap();
        assert_eq!(config.outer.credit_window(), 1);
    }

    #[test]
    fn cluster_mode_needs_a_secret_and_a_dialable_address() {
        let err = from_file("[registry]\nredis = \"redis://127.0.0.1:6379\"\n").unwrap_err();
        assert!(
            err.to_string().starts_with("inner.secret: cluster mode"),
            "{err}"
        );
        let err = from_file(
            "[registry]\nredis = \"redis://127.0.0.1:6379\"\n[inner]\nsecret = \"0123456789abcdef\"\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("inner.advertise: \"0.0.0.0:1025\""),
            "{err}"
        );
        let config = from_file(
            "[registry]\nredis = \"redis://a:1, redis://b:2\"\n[inner]\nsecret = \"0123456789abcdef\"\nadvertise = \"10.0.0.1:1025\"\n",
        )
        .unwrap();
        assert!(config.registry.cluster);
        assert_eq!(config.registry.redis, ["redis://a:1", "redis://b:2"]);
    }

    #[test]
    fn trusted_proxies_take_an_array_or_a_list_and_name_a_bad_block() {
        let config =
            from_file("[outer]\ntrusted-proxies = [\"10.0.0.0/8\", \"::1/128\"]\n").unwrap();
        let trusted = &config.outer.trusted_proxies;
        assert!(trusted.contains("10.1.2.3".parse().unwrap()));
        assert!(trusted.contains("::1".parse().unwrap()));
        assert!(!trusted.contains("192.0.2.1".parse().unwrap()));
        let config = Config::load(
            None,
            &[("outer.trusted-proxies", "192.0.2.1, 2001:db8::/32".into())],
        )
        .unwrap();
        assert!(
            config
                .outer
                .trusted_proxies
                .contains("192.0.2.1".parse().unwrap())
        );
        assert!(Config::default().outer.trusted_proxies.is_empty());
        let err = from_file("[outer]\ntrusted-proxies = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("outer.trusted-proxies: \"10.0.0.0/33\" is not a CIDR block"),
            "{err}"
        );
        let err = from_file("[outer]\ntrusted-proxies = [10]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.trusted-proxies: expected an array of strings, got integer 10"
        );
        let err =
            Config::load(None, &[("outer.forwarded-header", "x-real-ip".into())]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("outer.forwarded-header: expected one of"),
            "{err}"
        );
    }

    #[test]
    fn rate_limits_are_off_by_default_and_named_in_errors() {
        let config = Config::default();
        assert!(config.outer.rate.is_off());
        assert_eq!(config.outer.rate.burst, Duration::from_secs(1));
        assert_eq!(config.outer.rate.action, RateAction::Throttle);
        let config = from_file(
            "[outer]\nmax-messages-per-second = 200\nmax-bytes-per-second = 65536\nrate-burst = \"250ms\"\nrate-limit-action = \"close\"\n",
        )
        .unwrap();
        assert_eq!(
            config.outer.rate,
            RateLimits {
                messages_per_second: 200,
                bytes_per_second: 65536,
                burst: Duration::from_millis(250),
                action: RateAction::Close,
            }
        );
        let err = from_file("[outer]\nrate-limit-action = \"drop\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.rate-limit-action: expected one of throttle, close, got \"drop\""
        );
        let err = from_file("[outer]\nmax-bytes-per-second = -1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.max-bytes-per-second: -1 is out of range 0..=4294967295"
        );
        let err = from_file("[outer]\nrate-burst = \"0s\"\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "outer.rate-burst: must be longer than zero"
        );
    }

    #[test]
    fn flags_and_env_names_follow_the_key() {
        let spec = spec_of("outer.max-frame-size").unwrap();
        assert_eq!(spec.flag(), "outer-max-frame-size");
        assert_eq!(spec.env_var(), "WSPAIR_OUTER_MAX_FRAME_SIZE");
    }
}
