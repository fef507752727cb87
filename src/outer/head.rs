//! Reads a connection's request head before hyper sees it, so what a connection can make the
//! node hold before it upgrades is bounded by `outer.max-request-head`, not by hyper's buffer.
//!
//! hyper buffers a request head up to its `max_buf_size` (about 400 KiB by default) and answers
//! an oversized one with a bare 431 or 414; a thousand slow clients could hold 400 MiB until
//! the handshake deadline. [`read_head`] reads into a buffer that starts at 1 KiB and doubles
//! up to the limit, until the head is complete, and refuses a longer head, too many header
//! fields or a malformed head with a [`HandshakeError`] that [`write_refusal`] sends with its
//! reason, as every other refusal has. A complete head is handed to hyper in a [`Prefixed`]
//! stream, which yields the bytes already read before reading the socket again.
//!
//! No deadline is applied here: the caller runs all of this under the connection's one
//! deadline from accept to upgrade.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::handshake::HandshakeError;

/// The first read buffer; most request heads fit in it.
const INITIAL_BUFFER_BYTES: usize = 1024;

/// Header fields a request head may have: hyper's own limit (its default `max_headers`), so a
/// head that passes here is never refused by hyper without a reason.
pub const MAX_HEADER_FIELDS: usize = 100;

/// Bytes of a refused client's request read and discarded after the refusal, so its unread
/// bytes do not make the kernel reset the connection before the client reads the answer.
const DRAIN_BYTES: usize = 64 * 1024;

/// Why no request head was read.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// The head breaks a limit or does not parse; answered with this refusal.
    #[error(transparent)]
    Refused(#[from] HandshakeError),
    /// The client closed the connection before its head was complete.
    #[error("connection closed before the request head was complete")]
    Closed,
    /// Reading the socket failed.
    #[error("cannot read the request head: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `stream` until a complete request head, at most `limit` bytes. Returns every
/// byte read, which may go past the head (a pipelined request, or a first WebSocket frame).
pub async fn read_head(
    stream: &mut (impl AsyncRead + Unpin),
    limit: usize,
) -> Result<Bytes, HeadError> {
    let mut buffer = vec![0; INITIAL_BUFFER_BYTES.min(limit)];
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            if filled == limit {
                return Err(too_large(&buffer, limit).into());
            }
            buffer.resize((filled * 2).min(limit), 0);
        }
        let n = stream.read(&mut buffer[filled..]).await?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // A head ends with an empty line; LF alone ends a line too (RFC 9112 §2.2), as httparse
        // accepts. Only the new bytes and the three before them can complete one.
        let scan_from = filled.saturating_sub(3);
        filled += n;
        // Empty lines before the request line end nothing: scanning from the first other byte
        // keeps a client that sends only line ends from making every read parse it all again.
        let Some(start) = buffer[..filled]
            .iter()
            .position(|&byte| byte != b'\r' && byte != b'\n')
        else {
            continue;
        };
        if !has_empty_line(&buffer[scan_from.max(start)..filled]) {
            continue;
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADER_FIELDS];
        match httparse::Request::new(&mut fields).parse(&buffer[..filled]) {
            Ok(httparse::Status::Complete(_)) => {
                buffer.truncate(filled);
                return Ok(Bytes::from(buffer));
            }
            // Empty lines before the request line are skipped (RFC 9112 §2.2); read on.
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(HandshakeError::TooManyHeaderFields(MAX_HEADER_FIELDS).into());
            }
            Err(err) => return Err(HandshakeError::MalformedHead(err).into()),
        }
    }
}

fn has_empty_line(bytes: &[u8]) -> bool {
    bytes
        .windows(2)
        .enumerate()
        .any(|(at, pair)| pair == b"\n\n" || (pair == b"\n\r" && bytes.get(at + 2) == Some(&b'\n')))
}

/// 414 when not even the request line was complete, 431 otherwise (RFC 9110 §15.5.15, RFC
/// 6585 §5).
fn too_large(head: &[u8], limit: usize) -> HandshakeError {
    let request_line_complete = head
        .iter()
        .skip_while(|&&byte| byte == b'\r' || byte == b'\n')
        .any(|&byte| byte == b'\n');
    if request_line_complete {
        HandshakeError::HeadTooLarge(limit)
    } else {
        HandshakeError::RequestLineTooLong(limit)
    }
}

/// Answers `err` on a connection hyper never saw, then closes it: the same status, reason and
/// `text/plain` body as refusals hyper sends, with `Connection: close`.
pub async fn write_refusal(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    err: &HandshakeError,
) -> io::Result<()> {
    let status = err.status();
    let reason = format!("{err}\n");
    let mut response = format!(
        "HTTP/1.1 {} {}\r\ndate: {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(SystemTime::now()),
        reason.len(),
    );
    for (name, value) in err.headers() {
        response.push_str(name.as_str());
        response.push_str(": ");
        response.push_str(value.to_str().unwrap_or_default());
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    response.push_str(&reason);
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await?;
    // The client may still be sending the rest of its head; closing with unread bytes would
    // send a reset, which can destroy the answer before the client reads it.
    let mut discard = [0; 1024];
    let mut drained = 0;
    while drained < DRAIN_BYTES {
        match stream.read(&mut discard).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

/// A stream that yields `prefix` before reading `inner`; writes go straight to `inner`.
///
/// hyper-util's equivalent (`Rewind`) is private and tokio's `chain` reads only. The prefix is
/// released once consumed, so an upgraded session does not keep its request head.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` to be read first.
    pub fn new(prefix: Bytes, inner: S) -> Prefixed<S> {
        Prefixed { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        if self.prefix.is_empty() {
            self.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_an_empty_line() {
        assert!(has_empty_line(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(has_empty_line(b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(!has_empty_line(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(!has_empty_line(b"\r\n\r"));
    }

    #[test]
    fn an_incomplete_request_line_is_414_else_431() {
        assert_eq!(
            too_large(b"GET /aaaaaaaa", 8192).status(),
            hyper::StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            too_large(b"\r\nGET /aaaaaaaa", 8192).status(),
            hyper::StatusCode::URI_TOO_LONG
        );
        assert_eq!(
            too_large(b"GET / HTTP/1.1\r\nX: aaaa", 8192).status(),
            hyper::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        );
    }

    #[tokio::test]
    async fn prefixed_yields_the_prefix_then_the_stream() {
        let mut stream = Prefixed::new(Bytes::from_static(b"head"), &b" body"[..]);
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "head body");
    }
}
