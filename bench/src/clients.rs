//! Connecting clients: URL templates, channel ids, and spreading sockets over source addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes a client reads at most per read call; enough for a window of small messages.
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// A connected client.
pub type Ws = WebSocketStream<BenchStream>;

/// A client's connection: plain TCP for `ws://`, TLS for `wss://` (trusting `--ca`).
pub enum BenchStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl BenchStream {
    /// The TCP socket under a plain connection; `None` under TLS.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            BenchStream::Plain(tcp) => Some(tcp),
            BenchStream::Tls(_) => None,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            BenchStream::Plain($s) => {
                let $s = std::pin::Pin::new($s);
                $e
            }
            BenchStream::Tls($s) => {
                let $s = std::pin::Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl tokio::io::AsyncRead for BenchStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for BenchStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// A TLS client configuration that trusts the PEM certificates in `path` only.
fn tls_connector(path: &std::path::Path) -> Result<tokio_rustls::TlsConnector, String> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| format!("{}: {e}", path.display()))?)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        config,
    )))
}

/// Shared connection settings: URL templates and the source addresses to spread sockets over.
#[derive(Debug, clap::Args, Clone)]
pub struct Target {
    /// URL of the app side; `{id}` is replaced by a fresh channel id.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:1024/channel?type=app&channelId={id}"
    )]
    pub app_url: String,
    /// URL of the web side; `{id}` is replaced by the same channel id.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:1024/channel?type=web&channelId={id}"
    )]
    pub web_url: String,
    /// Source addresses for client sockets, as `A` or `A-B` (IPv4, last octet varies), used
    /// round robin; each gives about 28 000 ephemeral ports.
    #[arg(long, default_value = "127.0.0.1", value_parser = parse_ip_range)]
    pub source_ips: SourceIps,
    /// Offer permessage-deflate (no context takeover) in the upgrade request, to measure what
    /// a negotiated compression costs the server. Messages are short enough to stay uncompressed.
    #[arg(long)]
    pub offer_deflate: bool,
    /// PEM file of the CA to trust for `wss://` URLs (the node's `outer.tls-cert` chain root).
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
}

/// Source addresses given by `--source-ips`.
#[derive(Debug, Clone)]
pub struct SourceIps(pub Vec<IpAddr>);

pub fn parse_ip_range(text: &str) -> Result<SourceIps, String> {
    let Some((first, last)) = text.split_once('-') else {
        return text
            .parse()
            .map(|ip| SourceIps(vec![ip]))
            .map_err(|err| format!("{text}: {err}"));
    };
    let first: Ipv4Addr = first.parse().map_err(|err| format!("{first}: {err}"))?;
    let last: Ipv4Addr = last.parse().map_err(|err| format!("{last}: {err}"))?;
    let [a, b, c, start] = first.octets();
    let [_, _, _, end] = last.octets();
    if end < start {
        return Err(format!("{text}: empty range"));
    }
    Ok(SourceIps(
        (start..=end)
            .map(|d| IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
            .collect(),
    ))
}

/// A channel id for pair number `n` of run `run`; 32 characters of `[A-Za-z0-9_]`.
pub fn channel_id(run: u32, n: usize) -> String {
    format!("bench{run:0>9}_{n:0>17}")
}

/// Opens client sockets over the configured source addresses in turn.
pub struct Connector {
    offer_deflate: bool,
    tls: Option<tokio_rustls::TlsConnector>,
    source_ips: Vec<IpAddr>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .field("source_ips", &self.source_ips)
            .finish_non_exhaustive()
    }
}

impl Connector {
    pub fn new(target: &Target) -> Connector {
        let mut connector = Connector::with_source_ips(&target.source_ips, target.offer_deflate);
        connector.tls = target
            .ca
            .as_deref()
            .map(|ca| tls_connector(ca).unwrap_or_else(|e| panic!("--ca: {e}")));
        connector
    }

    /// A connector for modes that connect to several URLs of their own rather than a [`Target`].
    pub fn with_source_ips(source_ips: &SourceIps, offer_deflate: bool) -> Connector {
        let mut source_ips = source_ips.0.clone();
        if source_ips.is_empty() {
            source_ips.push(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Connector {
            offer_deflate,
            tls: None,
            source_ips,
            next: AtomicUsize::new(0),
        }
    }

    /// Connects to `template` with `{id}` replaced by `id` and completes the upgrade.
    pub async fn connect(&self, template: &str, id: &str) -> Result<Ws, String> {
        self.try_connect(template, id)
            .await
            .map_err(|failure| failure.detail)
    }

    /// As [`Connector::connect`], with the failure sorted by kind.
    pub async fn try_connect(&self, template: &str, id: &str) -> Result<Ws, ConnectFailure> {
        let url = template.replace("{id}", id);
        let secure = url.starts_with("wss://");
        let authority = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("wss://"))
            .and_then(|rest| rest.split('/').next())
            .ok_or_else(|| {
                ConnectFailure::other(format!(
                    "{url}: only ws:// or wss://HOST:PORT/... URLs are supported"
                ))
            })?;
        let server: SocketAddr = tokio::net::lookup_host(authority)
            .await
            .map_err(|err| ConnectFailure::other(format!("{authority}: {err}")))?
            .next()
            .ok_or_else(|| ConnectFailure::other(format!("{authority}: no address")))?;
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.source_ips.len();
        let socket = TcpSocket::new_v4().map_err(|err| ConnectFailure::other(err.to_string()))?;
        socket
            .bind(SocketAddr::new(self.source_ips[index], 0))
            .map_err(|err| {
                ConnectFailure::other(format!("bind {}: {err}", self.source_ips[index]))
            })?;
        let stream = socket.connect(server).await.map_err(|err| ConnectFailure {
            kind: format!("connect: {:?}", err.kind()),
            detail: format!("connect {server}: {err}"),
        })?;
        stream
            .set_nodelay(true)
            .map_err(|err| ConnectFailure::other(err.to_string()))?;
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|err| ConnectFailure::other(format!("{url}: {err}")))?;
        if self.offer_deflate {
            request.headers_mut().insert(
                "Sec-WebSocket-Extensions",
                "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
                    .parse()
                    .expect("a valid header value"),
            );
        }
        // tungstenite zero-fills its whole read buffer (128 KiB by default) before every read;
        // with one read per small message that memset was a fifth of the generator's CPU.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
        let stream = if secure {
            let tls = self
                .tls
                .as_ref()
                .ok_or_else(|| ConnectFailure::other(format!("{url}: wss:// needs --ca")))?;
            let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(server.ip().into());
            let tls = tls
                .connect(name, stream)
                .await
                .map_err(|err| ConnectFailure {
                    kind: "tls".into(),
                    detail: format!("TLS to {server}: {err}"),
                })?;
            BenchStream::Tls(Box::new(tls))
        } else {
            BenchStream::Plain(stream)
        };
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|err| ConnectFailure::upgrade(&url, err))?;
        if self.offer_deflate && !response.headers().contains_key("Sec-WebSocket-Extensions") {
            return Err(ConnectFailure::other(format!(
                "upgrade {url}: the server did not agree to permessage-deflate"
            )));
        }
        Ok(ws)
    }
}

/// Why a connection did not become a WebSocket: `kind` is short and fit for counting
/// (`http 503`, `connect: ConnectionRefused`, `upgrade: ...`), `detail` says the rest.
#[derive(Debug, Clone)]
pub struct ConnectFailure {
    pub kind: String,
    pub detail: String,
}

impl ConnectFailure {
    fn other(detail: String) -> ConnectFailure {
        ConnectFailure {
            kind: "other".into(),
            detail,
        }
    }

    fn upgrade(url: &str, err: tungstenite::Error) -> ConnectFailure {
        let kind = match &err {
            tungstenite::Error::Http(response) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                return ConnectFailure {
                    kind: format!("http {}", response.status().as_u16()),
                    detail: format!("upgrade {url}: {} {}", response.status(), body.trim()),
                };
            }
            tungstenite::Error::Io(io) => format!("upgrade: io {:?}", io.kind()),
            tungstenite::Error::Protocol(_) => "upgrade: protocol".into(),
            _ => "upgrade: other".into(),
        };
        ConnectFailure {
            kind,
            detail: format!("upgrade {url}: {err}"),
        }
    }
}
