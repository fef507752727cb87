//! The byte stream under a link: plain TCP, or TLS over it when `inner.tls-*` is set. The
//! handshake, the codec and both ends of a link work on it without knowing which.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A link's connection.
#[derive(Debug)]
pub enum InnerStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS on the dialing side.
    Dialed(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS on the accepting side.
    Accepted(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// The reading half of a split [`InnerStream`].
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a split [`InnerStream`].
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// The label of the value both ends of a link's TLS session derive for the handshake.
const BINDING_LABEL: &[u8] = b"EXPORTER-wspair-inner-link";

impl InnerStream {
    /// What ties the link handshake to this connection: 32 bytes both ends of its TLS session
    /// derive from it (an exporter), or nothing on plain TCP. See `auth`.
    pub fn channel_binding(&self) -> Vec<u8> {
        let exported = match self {
            InnerStream::Plain(_) => return Vec::new(),
            InnerStream::Dialed(tls) => {
                tls.get_ref()
                    .1
                    .export_keying_material([0u8; 32], BINDING_LABEL, None)
            }
            InnerStream::Accepted(tls) => {
                tls.get_ref()
                    .1
                    .export_keying_material([0u8; 32], BINDING_LABEL, None)
            }
        };
        // Only a handshake that has not finished cannot export; a link's has.
        exported
            .expect("a completed TLS handshake exports keying material")
            .to_vec()
    }

    /// Splits it into halves for one reader and one writer: TCP's own halves, or TLS's
    /// through a lock (a TLS session has one state for both directions).
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            InnerStream::Plain(tcp) => {
                let (read, write) = tcp.into_split();
                (Box::new(read), Box::new(write))
            }
            InnerStream::Dialed(tls) => {
                let (read, write) = tokio::io::split(tls);
                (Box::new(read), Box::new(write))
            }
            InnerStream::Accepted(tls) => {
                let (read, write) = tokio::io::split(tls);
                (Box::new(read), Box::new(write))
            }
        }
    }
}

impl AsyncRead for InnerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InnerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            InnerStream::Dialed(s) => Pin::new(s).poll_read(cx, buf),
            InnerStream::Accepted(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for InnerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InnerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            InnerStream::Dialed(s) => Pin::new(s).poll_write(cx, buf),
            InnerStream::Accepted(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InnerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            InnerStream::Dialed(s) => Pin::new(s).poll_flush(cx),
            InnerStream::Accepted(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            InnerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            InnerStream::Dialed(s) => Pin::new(s).poll_shutdown(cx),
            InnerStream::Accepted(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            InnerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            InnerStream::Dialed(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            InnerStream::Accepted(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            InnerStream::Plain(s) => s.is_write_vectored(),
            InnerStream::Dialed(s) => s.is_write_vectored(),
            InnerStream::Accepted(s) => s.is_write_vectored(),
        }
    }
}
