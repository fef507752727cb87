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

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::codec::{CodecError, InnerCodec};
use super::frame::{InnerFrame, MAC_BYTES, NONCE_BYTES, PROTOCOL_VERSION};
use crate::node::NodeId;

/// A link whose handshake is under way or done.
pub type LinkStream = Framed<TcpStream, InnerCodec>;

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
        /// What arrived instead.
        got: String,
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
) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(challenge);
    mac.update(other);
    mac.update(&dialer.0.to_be_bytes());
    mac.update(&acceptor.0.to_be_bytes());
    mac
}

async fn next(stream: &mut LinkStream) -> Result<InnerFrame, AuthError> {
    stream
        .next()
        .await
        .ok_or(AuthError::Closed)?
        .map_err(AuthError::from)
}

async fn expect_hello(stream: &mut LinkStream) -> Result<(NodeId, [u8; NONCE_BYTES]), AuthError> {
    match next(stream).await? {
        InnerFrame::Hello { version, .. } if version != PROTOCOL_VERSION => {
            Err(AuthError::Version(version))
        }
        InnerFrame::Hello { node, nonce, .. } => Ok((node, nonce)),
        other => Err(AuthError::Unexpected {
            expected: "hello",
            got: format!("{other:?}"),
        }),
    }
}

async fn expect_auth(stream: &mut LinkStream) -> Result<[u8; MAC_BYTES], AuthError> {
    match next(stream).await? {
        InnerFrame::Auth { mac } => Ok(mac),
        other => Err(AuthError::Unexpected {
            expected: "auth",
            got: format!("{other:?}"),
        }),
    }
}

/// Runs the dialer's side; returns the acceptor's node id.
pub async fn dial(stream: &mut LinkStream, me: NodeId, secret: &[u8]) -> Result<NodeId, AuthError> {
    let my_nonce = nonce();
    stream
        .send(InnerFrame::Hello {
            version: PROTOCOL_VERSION,
            node: me,
            nonce: my_nonce,
        })
        .await?;
    let (acceptor, their_nonce) = expect_hello(stream).await?;
    let their_mac = expect_auth(stream).await?;
    tag(
        secret,
        b"wspair-acceptor",
        &my_nonce,
        &their_nonce,
        me,
        acceptor,
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
    )
    .finalize();
    stream
        .send(InnerFrame::Auth {
            mac: mac.into_bytes().into(),
        })
        .await?;
    Ok(acceptor)
}

/// Runs the acceptor's side; returns the dialer's node id.
pub async fn accept(
    stream: &mut LinkStream,
    me: NodeId,
    secret: &[u8],
) -> Result<NodeId, AuthError> {
    let (dialer, their_nonce) = expect_hello(stream).await?;
    let my_nonce = nonce();
    let mac = tag(
        secret,
        b"wspair-acceptor",
        &their_nonce,
        &my_nonce,
        dialer,
        me,
    )
    .finalize();
    stream
        .feed(InnerFrame::Hello {
            version: PROTOCOL_VERSION,
            node: me,
            nonce: my_nonce,
        })
        .await?;
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
        me,
    )
    .verify_slice(&their_mac)
    .map_err(|_| AuthError::BadMac)?;
    Ok(dialer)
}
