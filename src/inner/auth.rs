//! The link handshake: a versioned `Hello` from each side, then a mutual challenge-response
//! over `inner.secret`.
//!
//! The dialer sends `Hello(nonce_d)`. The acceptor answers `Hello(nonce_a)` and
//! `Auth(HMAC(secret, "wspair-acceptor" | nonce_d | nonce_a | dialer | acceptor))`, proving it
//! knows the secret before the dialer sends anything else. The dialer checks it and answers
//! `Auth(HMAC(secret, "wspair-dialer" | nonce_a | nonce_d | dialer | acceptor))`. Each side's tag
//! covers a nonce the other just drew, so a recorded handshake cannot be replayed, and the
//! labels differ, so one side's tag cannot be reflected back as the other's. Tags are compared
//! in constant time. A failure here closes the connection; callers log and count it.
//!
//! With `inner.tls-*` the handshake runs inside TLS, and both tags also cover a value both ends
//! of that TLS session derive from it (an exporter, RFC 5705/8446 §7.5, `binding`): TLS proves
//! each end holds a certificate of the cluster's CA, this proves the end of *this* TLS session
//! holds the secret and names its node id. Without the binding, a party holding a certificate
//! but not the secret, and able to redirect a dial, could relay two TLS sessions and pass the
//! handshake through, reading everything after it. On plain TCP `binding` is empty: the
//! handshake proves who is at each end, not that nobody relays between them (SECURITY.md).

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

use super::codec::{CodecError, InnerCodec};
use super::frame::{InnerFrame, MAC_BYTES, NONCE_BYTES, PROTOCOL_VERSION};
use super::stream::InnerStream;
use crate::node::{NodeId, NodeInfo};

/// A link whose handshake is under way or done.
pub type LinkStream = Framed<InnerStream, InnerCodec>;

/// What the handshake runs over: a link's stream, or any other (tests speak it over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> Io for T {}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The connection failed or sent bytes that are not a frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The connection closed during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
    /// The other side sent something other than the expected handshake frame.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// The frame the protocol calls for.
        expected: &'static str,
        /// The kind of frame that arrived instead (never its contents).
        got: &'static str,
    },
    /// The other side speaks another protocol version.
    #[error("protocol version {0} is not {PROTOCOL_VERSION}")]
    Version(u16),
    /// The other side's tag is wrong: it does not know `inner.secret`.
    #[error("authentication failed: wrong inner.secret")]
    BadMac,
}

fn nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).expect("the operating system provides random bytes");
    nonce
}

fn tag(
    secret: &[u8],
    label: &[u8],
    challenge: &[u8; NONCE_BYTES],
    other: &[u8; NONCE_BYTES],
    dialer: NodeId,
    acceptor: NodeId,
    binding: &[u8],
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(binding);
    mac.update(challenge);
    mac.update(other);
    mac.update(&dialer.get().to_be_bytes());
    mac.update(&acceptor.get().to_be_bytes());
    mac
}

async fn next(stream: &mut Framed<impl Io, InnerCodec>) -> Result<InnerFrame, AuthError> {
    stream
        .next()
        .await
        .ok_or(AuthError::Closed)?
        .map_err(AuthError::from)
}

/// What a `Hello` says about its sender.
fn hello(me: &NodeInfo, nonce: [u8; NONCE_BYTES]) -> InnerFrame {
    InnerFrame::Hello {
        version: PROTOCOL_VERSION,
        node: me.id,
        nonce,
        window: me.window,
        advertise: me.advertise.clone(),
    }
}

async fn expect_hello(
    stream: &mut Framed<impl Io, InnerCodec>,
) -> Result<(NodeInfo, [u8; NONCE_BYTES]), AuthError> {
    match next(stream).await? {
        InnerFrame::Hello { version, .. } if version != PROTOCOL_VERSION => {
            Err(AuthError::Version(version))
        }
        InnerFrame::Hello {
            node,
            nonce,
            window,
            advertise,
            ..
        } => Ok((
            NodeInfo {
                id: node,
                advertise,
                window,
                version: String::new(),
            },
            nonce,
        )),
        other => Err(AuthError::Unexpected {
            expected: "hello",
            got: other.kind(),
        }),
    }
}

async fn expect_auth(
    stream: &mut Framed<impl Io, InnerCodec>,
) -> Result<[u8; MAC_BYTES], AuthError> {
    match next(stream).await? {
        InnerFrame::Auth { mac } => Ok(mac),
        other => Err(AuthError::Unexpected {
            expected: "auth",
            got: other.kind(),
        }),
    }
}

/// Runs the dialer's side; returns what the acceptor said about itself.
pub async fn dial(
    stream: &mut Framed<impl Io, InnerCodec>,
    me: &NodeInfo,
    secret: &[u8],
    binding: &[u8],
) -> Result<NodeInfo, AuthError> {
    let my_nonce = nonce();
    stream.send(hello(me, my_nonce)).await?;
    let (acceptor_info, their_nonce) = expect_hello(stream).await?;
    let (me, acceptor) = (me.id, acceptor_info.id);
    let their_mac = expect_auth(stream).await?;
    tag(
        secret,
        b"wspair-acceptor",
        &my_nonce,
        &their_nonce,
        me,
        acceptor,
        binding,
    )
    .verify_slice(&their_mac)
    .map_err(|_| AuthError::BadMac)?;
    let mac = tag(
        secret,
        b"wspair-dialer",
        &their_nonce,
        &my_nonce,
        me,
        acceptor,
        binding,
    )
    .finalize();
    stream
        .send(InnerFrame::Auth {
            mac: mac.into_bytes().into(),
        })
        .await?;
    Ok(acceptor_info)
}

/// Runs the acceptor's side; returns what the dialer said about itself.
pub async fn accept(
    stream: &mut Framed<impl Io, InnerCodec>,
    me: &NodeInfo,
    secret: &[u8],
    binding: &[u8],
) -> Result<NodeInfo, AuthError> {
    let (dialer_info, their_nonce) = expect_hello(stream).await?;
    let my_nonce = nonce();
    let (acceptor, dialer) = (me.id, dialer_info.id);
    let mac = tag(
        secret,
        b"wspair-acceptor",
        &their_nonce,
        &my_nonce,
        dialer,
        acceptor,
        binding,
    )
    .finalize();
    stream.feed(hello(me, my_nonce)).await?;
    stream
        .send(InnerFrame::Auth {
            mac: mac.into_bytes().into(),
        })
        .await?;
    let their_mac = expect_auth(stream).await?;
    tag(
        secret,
        b"wspair-dialer",
        &my_nonce,
        &their_nonce,
        dialer,
        acceptor,
        binding,
    )
    .verify_slice(&their_mac)
    .map_err(|_| AuthError::BadMac)?;
    Ok(dialer_info)
}
