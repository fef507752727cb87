// Modified for wspair: at most one waiting pong, no reads while control frames cannot be
// written, one close frame per connection, nothing sent after it, `has_pending_writes`.
//! Low-level streaming WebSocket layer for manual fragment control.
//!
//! This module provides the [`Streaming`] type, which gives users direct control over
//! WebSocket frame fragmentation without automatic reassembly or fragmentation.
//!
//! # When to Use Streaming
//!
//! Use `Streaming` when you need:
//! - **Manual fragment control**: Send and receive individual fragments without automatic reassembly
//! - **Memory-efficient streaming**: Process large messages incrementally without buffering
//! - **Custom fragmentation logic**: Implement application-specific fragmentation strategies
//! - **Real-time processing**: Handle fragments as they arrive for low-latency applications
//!
//! # Comparison with WebSocket
//!
//! | Feature | `WebSocket` | `Streaming` |
//! |---------|------------|------------|
//! | Fragment reassembly | Automatic | Manual |
//! | Auto-fragmentation | Optional | Manual |
//! | Compression | Yes | Yes |
//! | Memory usage | Higher | Lower |
//! | Control | Limited | Full |
//!
//! # Example
//!
//! ```rust,no_run
//! use yawc::{WebSocket, Frame, OpCode};
//! use futures::SinkExt;
//!
//! # async fn example() -> yawc::Result<()> {
//! // Convert WebSocket to Streaming for manual fragment control
//! let ws = WebSocket::connect("ws://example.com".parse()?).await?;
//! let mut streaming = ws.into_streaming();
//!
//! // Send a message as multiple fragments manually
//! streaming.send(Frame::text("Hello").with_fin(false)).await?;
//! streaming.send(Frame::continuation(" ").with_fin(false)).await?;
//! streaming.send(Frame::continuation("World!")).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Safety
//!
//! When using `Streaming`, you are responsible for:
//! - **Fragment ordering**: Continuation frames must follow a non-FIN data frame
//! - **OpCode rules**: Only the first fragment carries the message opcode
//! - **Control frames**: Cannot be fragmented and can be sent between data fragments
//! - **Compression**: RSV1 bit is managed automatically based on compression state

use std::{
    collections::VecDeque,
    future::poll_fn,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};

use crate::{close::CloseCode, codec, Negotiation, OpCode, Result, Role};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, FramedParts};

/// The buffer size tokio-util starts `Framed` with, used when none is configured.
const DEFAULT_BUFFER_CAPACITY: usize = 8 * 1024;

use crate::{
    codec::Codec,
    compression::{Compressor, Decompressor},
    native::{ContextKind, WakeProxy},
    Frame, ReadHalf, WebSocketError, WriteHalf,
};

/// Low-level streaming WebSocket connection with manual fragment control.
///
/// `Streaming` provides direct access to WebSocket frames without automatic
/// fragmentation or reassembly. This allows for:
/// - Streaming large files directly from/to disk without loading them in memory
/// - Implementing custom fragmentation strategies
/// - Processing data incrementally as fragments arrive
/// - Fine-grained control over frame boundaries
///
/// # Conversion
///
/// You can convert a [`WebSocket`](super::WebSocket) into a [`Streaming`] connection:
///
/// ```rust,no_run
/// # use yawc::WebSocket;
/// # async fn example() -> yawc::Result<()> {
/// let ws = WebSocket::connect("ws://example.com".parse()?).await?;
/// let streaming = ws.into_streaming();
/// # Ok(())
/// # }
/// ```
///
/// # Fragmentation Protocol
///
/// When manually fragmenting messages:
/// 1. Send first fragment with desired OpCode (Text/Binary) and `FIN=false`
/// 2. Send continuation fragments with OpCode::Continuation and `FIN=false`
/// 3. Send final fragment with OpCode::Continuation and `FIN=true`
///
/// # Example: Streaming File Upload
///
/// ```rust,no_run
/// use yawc::{WebSocket, Frame, OpCode};
/// use futures::SinkExt;
/// use std::io::Read;
///
/// # async fn upload_file() -> yawc::Result<()> {
/// let ws = WebSocket::connect("ws://example.com/upload".parse()?).await?;
/// let mut streaming = ws.into_streaming();
///
/// let mut file = std::fs::File::open("large_file.bin")?;
/// let mut buffer = vec![0u8; 64 * 1024]; // 64 KiB chunks
/// let mut first = true;
///
/// loop {
///     let bytes_read = file.read(&mut buffer)?;
///     if bytes_read == 0 {
///         break;
///     }
///
///     let chunk = buffer[..bytes_read].to_vec();
///     let frame = if first {
///         first = false;
///         Frame::binary(chunk).with_fin(false)
///     } else {
///         Frame::continuation(chunk).with_fin(false)
///     };
///
///     streaming.send(frame).await?;
/// }
///
/// // Send final empty fragment to close the message
/// streaming.send(Frame::continuation(vec![])).await?;
/// # Ok(())
/// # }
/// ```
///
/// # Compression Behavior
///
/// Unlike [`WebSocket`](super::WebSocket) which compresses complete messages,
/// `Streaming` performs **streaming compression**:
/// - Compression state is maintained across fragments
/// - RSV1 bit is automatically managed (set only on first fragment)
/// - Decompression happens per-fragment with context preservation
///
/// This allows compressed data to be processed incrementally without waiting
/// for the complete message.
pub struct Streaming<S> {
    stream: Framed<S, Codec>,
    // Reading state
    read_half: ReadHalf,
    // Writing state
    write_half: WriteHalf,
    // waker proxy
    wake_proxy: Arc<WakeProxy>,
    // frames we must send (control..): at most one pong and one close
    obligated_sends: VecDeque<Frame>,
    // a close frame was queued or sent: nothing may be sent after it
    close_sent: bool,
    // flag to indicate the writer to flush sends
    flush_sends: bool,
    // compressor
    deflate: Option<Compressor>,
    // decompressor
    inflate: Option<Decompressor>,
    max_payload_read: usize,
    // messages sent as one frame below this size are not compressed
    compression_threshold: usize,
    // size the read buffer returns to after a larger frame
    read_buffer_capacity: usize,
    // size the write buffer returns to after it grew past the backpressure boundary
    write_buffer_capacity: usize,
    // the write buffer grew past its usual size and is replaced once flushed
    write_buffer_grown: bool,
}

impl<S> Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(role: Role, stream: S, read_buf: Bytes, negotiated: &Negotiation) -> Self {
        let decoder = codec::Decoder::new(role, negotiated.max_payload_read);
        let encoder = codec::Encoder::new(role);
        let codec = Codec::from((decoder, encoder));

        let mut parts = FramedParts::new(stream, codec);
        parts.read_buf = read_buf.into();

        // `from_parts` marks leftover handshake bytes as readable, which
        // `Framed::with_capacity` cannot, but it also raises both buffers to 8 KiB.
        // Swap in buffers of the configured size afterwards.
        let mut framed = Framed::from_parts(parts);
        if let Some(capacity) = negotiated.read_buffer_capacity {
            set_capacity(framed.read_buffer_mut(), capacity);
        }
        if let Some(capacity) = negotiated.write_buffer_capacity {
            set_capacity(framed.write_buffer_mut(), capacity);
        }
        if let Some(boundary) = negotiated.max_backpressure_write_boundary {
            framed.set_backpressure_boundary(boundary);
        }

        Self {
            stream: framed,
            read_half: ReadHalf::new(),
            write_half: WriteHalf::new(),
            wake_proxy: Arc::new(WakeProxy::default()),
            obligated_sends: VecDeque::new(),
            close_sent: false,
            flush_sends: false,
            deflate: negotiated.compressor(),
            inflate: negotiated.decompressor(),
            max_payload_read: negotiated.max_payload_read,
            compression_threshold: negotiated.compression_threshold,
            read_buffer_capacity: negotiated
                .read_buffer_capacity
                .unwrap_or(DEFAULT_BUFFER_CAPACITY),
            write_buffer_capacity: negotiated
                .write_buffer_capacity
                .unwrap_or(DEFAULT_BUFFER_CAPACITY),
            write_buffer_grown: false,
        }
    }

    /// Asynchronously retrieves the next frame from the WebSocket stream.
    pub async fn next_frame(&mut self) -> Result<Frame> {
        poll_fn(|cx| self.poll_next_frame(cx)).await
    }

    /// Splits the `Streaming` connection into its low-level components for advanced usage.
    ///
    /// This method provides access to the underlying framed stream and read/write halves,
    /// allowing for direct manipulation of the WebSocket protocol layer.
    ///
    /// # Safety
    ///
    /// This function is unsafe because it splits ownership of shared state. The caller
    /// must ensure that:
    /// - Only one component performs reads at a time
    /// - Only one component performs writes at a time
    /// - Protocol invariants are maintained (control frames, fragment ordering, etc.)
    ///
    /// # Example
    ///
    /// See [`examples/streaming.rs`](https://github.com/infinitefield/yawc/blob/master/examples/streaming.rs)
    /// for a complete example of using `split_stream()` for low-level frame processing.
    pub unsafe fn split_stream(self) -> (Framed<S, Codec>, ReadHalf, WriteHalf) {
        (self.stream, self.read_half, self.write_half)
    }

    /// Polls for the next frame in the WebSocket stream.
    ///
    /// This method returns individual frames without reassembling fragments. Applications
    /// using this method must handle fragmentation manually by checking the `FIN` flag
    /// and `OpCode` of each frame.
    ///
    /// # Returns
    ///
    /// - `Poll::Ready(Ok(frame))` - A complete frame is available
    /// - `Poll::Ready(Err(e))` - A protocol error occurred
    /// - `Poll::Pending` - No frame is available yet
    ///
    /// # Fragment Handling
    ///
    /// Frames may arrive as:
    /// - Complete messages: `OpCode::{Text,Binary}` with `FIN=true`
    /// - First fragment: `OpCode::{Text,Binary}` with `FIN=false`
    /// - Middle fragments: `OpCode::Continuation` with `FIN=false`
    /// - Final fragment: `OpCode::Continuation` with `FIN=true`
    pub fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame>> {
        self.poll_next_frame_with_limit(cx, self.max_payload_read)
    }

    /// Returns `true` while a control frame waits to be sent or bytes wait in the write buffer.
    ///
    /// A peer that does not read keeps this `true`: its pongs cannot be written, and no more
    /// of its frames are read until they are.
    pub fn has_pending_writes(&self) -> bool {
        !self.obligated_sends.is_empty() || !self.stream.write_buffer().is_empty()
    }

    /// Returns `true` while a frame has been partly read: its header decoded, or some of its
    /// bytes buffered.
    pub(crate) fn is_reading_frame(&self) -> bool {
        self.stream.codec().is_mid_frame() || !self.stream.read_buffer().is_empty()
    }

    pub(crate) fn poll_next_frame_with_limit(
        &mut self,
        cx: &mut Context<'_>,
        max_read_buffer: usize,
    ) -> Poll<Result<Frame>> {
        // Control frames owed to the peer go first. While they cannot be written, nothing
        // more is read, so a peer that sends pings without reading the pongs is pushed back
        // through TCP instead of growing the queue.
        if !self.obligated_sends.is_empty() {
            ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
        }

        let res = if self.stream.read_buffer().is_empty() {
            self.wake_proxy.set_waker(ContextKind::Read, cx.waker());
            self.wake_proxy
                .with_context(|cx| self.read_half.poll_frame(&mut self.stream, cx))
        } else {
            self.wake_proxy
                .poll_with_context(ContextKind::Read, cx, |cx| {
                    self.read_half.poll_frame(&mut self.stream, cx)
                })
        };
        let res = res.map(|res| {
            res.and_then(|frame| {
                self.release_read_buffer(frame.payload.len());
                self.on_frame(frame, max_read_buffer)
            })
        });
        match res {
            Poll::Ready(Ok(frame)) => Poll::Ready(Ok(frame)),
            Poll::Ready(Err(WebSocketError::ConnectionClosed)) => {
                ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
                Poll::Ready(Err(WebSocketError::ConnectionClosed))
            }
            Poll::Ready(Err(err)) => {
                self.close_for_read_error(&err);
                Poll::Ready(Err(err))
            }
            Poll::Pending => {
                ready!(self.poll_flush_obligated(ContextKind::Read, cx))?;
                Poll::Pending
            }
        }
    }

    /// Gives back the memory a frame larger than the read buffer made it grow to.
    ///
    /// The frame's payload shares the buffer's allocation, so the buffer keeps all of
    /// it until replaced. Bytes of the next frame already read are kept, unless there
    /// are more than fit, in which case the next frame shrinks it instead.
    fn release_read_buffer(&mut self, frame_len: usize) {
        let capacity = self.read_buffer_capacity;
        let buffer = self.stream.read_buffer_mut();
        if frame_len > capacity && buffer.len() <= capacity {
            set_capacity(buffer, capacity);
        }
    }

    /// Gives back the memory the write buffer grew to, once it has been written out.
    fn release_write_buffer(&mut self) {
        if self.write_buffer_grown && self.stream.write_buffer().is_empty() {
            set_capacity(self.stream.write_buffer_mut(), self.write_buffer_capacity);
            self.write_buffer_grown = false;
        }
    }

    fn on_frame(&mut self, mut frame: Frame, max_read_buffer: usize) -> Result<Frame> {
        #[cfg(test)]
        println!(
            "<<Compression<< OpCode={:?} Fin={} Payload={}",
            frame.opcode,
            frame.fin,
            frame.payload.len()
        );

        // Handle protocol control frames first
        match frame.opcode {
            OpCode::Ping => {
                self.on_ping(&frame);
                return Ok(frame);
            }
            OpCode::Close => {
                self.on_close(&frame)?;
                return Ok(frame);
            }
            OpCode::Pong => return Ok(frame),
            _ => {}
        }

        let max_output_size = if !frame.is_fin() || frame.opcode == OpCode::Continuation {
            self.max_payload_read.min(max_read_buffer)
        } else {
            self.max_payload_read
        };

        if frame.is_compressed {
            let inflate = self
                .inflate
                .as_mut()
                .ok_or(WebSocketError::CompressionNotSupported)?;
            frame.payload = inflate.decompress(&frame.payload, frame.is_fin(), max_output_size)?;
            frame.is_compressed = false;
        }

        if frame.payload.len() >= max_output_size {
            return Err(WebSocketError::FrameTooLarge);
        }

        Ok(frame)
    }

    /// Queues the pong for `frame`, or gives its payload to the pong still waiting.
    ///
    /// RFC 6455 section 5.5.3 allows answering only the most recent ping, so at most one
    /// pong waits. The payload is copied: a waiting pong must not pin the read buffer.
    fn on_ping(&mut self, frame: &Frame) {
        // After a close frame nothing is sent, not even a pong.
        if self.close_sent {
            return;
        }
        let payload = Bytes::copy_from_slice(&frame.payload);
        let waiting = self
            .obligated_sends
            .iter_mut()
            .find(|waiting| waiting.opcode == OpCode::Pong);
        match waiting {
            Some(pong) => pong.payload = payload,
            None => self.obligated_sends.push_back(Frame::pong(payload)),
        }
    }

    fn on_close(&mut self, frame: &Frame) -> Result<()> {
        match frame.payload.len() {
            0 => {}
            1 => return Err(WebSocketError::InvalidCloseFrame),
            _ => {
                let code = frame.close_code().expect("close code");
                let _ = frame.close_reason()?;

                if !code.is_allowed() {
                    return Err(WebSocketError::InvalidCloseCode);
                }
            }
        }

        let frame = Frame::close_raw(frame.payload.clone());
        self.emit_close(frame);

        Ok(())
    }

    /// Queues the close frame for a read error, unless it is the connection's own failure
    /// (closed or an I/O error), where there is no one to tell.
    pub(crate) fn close_for_read_error(&mut self, err: &WebSocketError) {
        let code = match err {
            WebSocketError::ConnectionClosed | WebSocketError::IoError(_) => return,
            WebSocketError::FrameTooLarge => CloseCode::Size,
            WebSocketError::InvalidUTF8 => CloseCode::Invalid,
            // Limits the application set, not rules of the protocol.
            WebSocketError::FragmentTimeout | WebSocketError::TooManyFragments => {
                CloseCode::Policy
            }
            err if err.is_protocol_error() => CloseCode::Protocol,
            _ => CloseCode::Error,
        };
        self.emit_close(Frame::close(code, close_reason(err)));
    }

    /// Queues `frame`, a close, unless one was already queued or sent: an endpoint sends
    /// one close frame (RFC 6455 section 5.5.1). Nothing more is read either way.
    fn emit_close(&mut self, frame: Frame) {
        if !self.close_sent {
            self.close_sent = true;
            self.obligated_sends.push_back(frame);
        }
        self.read_half.is_closed = true;
    }

    /// Returns `true` once a close frame has been queued or sent.
    pub(crate) fn is_closing(&self) -> bool {
        self.close_sent
    }

    fn poll_flush_obligated(
        &mut self,
        kind: ContextKind,
        cx: &mut Context<'_>,
    ) -> Poll<Result<()>> {
        if self.obligated_sends.is_empty() && !self.flush_sends {
            return Poll::Ready(Ok(()));
        }
        self.wake_proxy.poll_with_context(kind, cx, |cx| {
            while !self.obligated_sends.is_empty() {
                ready!(self.write_half.poll_ready(&mut self.stream, cx))?;

                let next = self.obligated_sends.pop_front().expect("obligated send");
                self.write_half.start_send(&mut self.stream, next)?;
                self.flush_sends = true;
            }

            if self.flush_sends {
                ready!(self.write_half.poll_flush(&mut self.stream, cx))?;
                self.flush_sends = false;
            }

            Poll::Ready(Ok(()))
        })
    }
}

impl<S> futures::Stream for Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Item = Frame;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match ready!(this.poll_next_frame(cx)) {
            Ok(ok) => Poll::Ready(Some(ok)),
            Err(_) => Poll::Ready(None),
        }
    }
}

impl<S> futures::Sink<Frame> for Streaming<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Error = WebSocketError;

    fn poll_ready(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.obligated_sends.is_empty()
            && !this.flush_sends
            && this.stream.write_buffer().len() < this.stream.backpressure_boundary()
        {
            // Framed can accept another frame without polling the transport.
            return this.write_half.poll_ready(&mut this.stream, cx);
        }
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this.poll_flush_obligated(ContextKind::Write, cx))?;
        this.wake_proxy
            .with_context(|cx| this.write_half.poll_ready(&mut this.stream, cx))
    }

    fn start_send(self: Pin<&mut Self>, mut item: Frame) -> std::result::Result<(), Self::Error> {
        let this = self.get_mut();

        // RFC 6455 section 5.5.1: nothing is sent after a close frame.
        if this.close_sent {
            return Err(WebSocketError::ConnectionClosed);
        }
        if item.opcode == OpCode::Close {
            this.close_sent = true;
        }

        #[cfg(test)]
        println!(
            ">>Compression>> OpCode={:?} Fin={} Payload={}",
            item.opcode,
            item.fin,
            item.payload.len()
        );

        // A whole message in one frame may skip compression. A fragmented message
        // cannot, since RSV1 on its first frame covers every fragment.
        let small_message = item.opcode != OpCode::Continuation
            && item.is_fin()
            && item.payload.len() < this.compression_threshold;
        let should_compress = !item.opcode.is_control() && !small_message;
        if should_compress {
            if let Some(deflate) = this.deflate.as_mut() {
                let output = deflate.compress(&item.payload, item.is_fin())?;
                // Set the RSV1 bit only when we are not streaming
                item.is_compressed = !this.write_half.streaming;
                item.payload = output;
            }
        }

        this.write_half.start_send(&mut this.stream, item)?;

        // Frames up to the backpressure boundary collect in the buffer between
        // flushes, so only growth past both limits is given back.
        let usual = this
            .write_buffer_capacity
            .max(this.stream.backpressure_boundary());
        if this.stream.write_buffer().len() > usual {
            this.write_buffer_grown = true;
        }
        Ok(())
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        ready!(this
            .wake_proxy
            .with_context(|cx| this.write_half.poll_flush(&mut this.stream, cx)))?;
        this.release_write_buffer();
        Poll::Ready(Ok(()))
    }

    fn poll_close(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<(), Self::Error>> {
        let this = self.get_mut();
        this.wake_proxy.set_waker(ContextKind::Write, cx.waker());
        // A close frame already queued goes out first, so the writer does not add its own.
        ready!(this.poll_flush_obligated(ContextKind::Write, cx))?;
        this.close_sent = true;
        this.wake_proxy
            .with_context(|cx| this.write_half.poll_close(&mut this.stream, cx))
    }
}

/// The reason text of the close frame for `err`, cut to fit a control frame: two bytes of
/// code and at most 123 of reason (RFC 6455 section 5.5).
fn close_reason(err: &WebSocketError) -> String {
    const MAX_REASON: usize = 123;
    let mut reason = err.to_string();
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// Replaces `buffer` with one of `capacity` bytes, keeping its contents.
///
/// The new buffer is never smaller than the bytes already in it.
fn set_capacity(buffer: &mut BytesMut, capacity: usize) {
    let mut resized = BytesMut::with_capacity(capacity.max(buffer.len()));
    resized.extend_from_slice(buffer);
    *buffer = resized;
}

#[cfg(test)]
mod wake_tests {
    use super::*;
    use crate::Options;
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::{Wake, Waker},
    };
    use tokio::io::{duplex, AsyncWriteExt};

    #[derive(Default)]
    struct WakeCount(AtomicUsize);

    impl Wake for WakeCount {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn two_buffered_header_bytes_register_a_waker_when_payload_is_missing() {
        let negotiated = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (io, mut peer) = duplex(16);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03"),
            &negotiated,
        );
        let count = Arc::new(WakeCount::default());
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);

        assert_eq!(stream.stream.read_buffer().len(), 2);
        assert!(stream.poll_next_frame(&mut cx).is_pending());
        assert_eq!(count.0.load(Ordering::Relaxed), 0);

        peer.write_all(b"abc").await.unwrap();
        assert!(count.0.load(Ordering::Relaxed) > 0);
        let Poll::Ready(Ok(frame)) = stream.poll_next_frame(&mut cx) else {
            panic!("the completed frame must be ready after its payload arrives");
        };
        assert_eq!(frame.opcode(), OpCode::Binary);
        assert_eq!(frame.payload().as_ref(), b"abc");
    }
}

#[cfg(test)]
mod control_tests {
    use super::*;
    use crate::Options;
    use futures::{task::noop_waker, SinkExt};
    use tokio::io::duplex;
    use tokio_util::codec::Encoder as _;

    /// A server whose peer sent `n` pings (already read) and reads nothing, with room for
    /// only a few bytes of replies.
    fn server_with_pings(n: u8) -> Streaming<tokio::io::DuplexStream> {
        let mut pings = BytesMut::new();
        for i in 0..n {
            codec::Encoder::new(Role::Client)
                .encode(Frame::ping(vec![i; 100]), &mut pings)
                .unwrap();
        }
        let options = Options::default().with_backpressure_boundary(1);
        let negotiated = Negotiation::new(None, &options, Role::Server).unwrap();
        let (io, peer) = duplex(16);
        std::mem::forget(peer);
        Streaming::new(Role::Server, io, pings.freeze(), &negotiated)
    }

    #[test]
    fn reading_stops_while_a_pong_cannot_be_written() {
        let mut server = server_with_pings(20);
        let waker = noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut n_read = 0;
        for _ in 0..40 {
            if let Poll::Ready(frame) = server.poll_next_frame(&mut cx) {
                assert_eq!(frame.unwrap().opcode(), OpCode::Ping);
                n_read += 1;
            }
        }
        // One pong fills the write buffer, the next waits, and then reading stops.
        assert_eq!(n_read, 2);
        assert_eq!(server.obligated_sends.len(), 1);
        assert!(server.has_pending_writes());
        assert!(server.is_reading_frame());
    }

    #[test]
    fn a_ping_replaces_the_payload_of_the_waiting_pong() {
        let mut server = server_with_pings(0);
        server.on_ping(&Frame::ping(&b"first"[..]));
        server.on_ping(&Frame::ping(&b"second"[..]));
        assert_eq!(server.obligated_sends.len(), 1);
        assert_eq!(server.obligated_sends[0].payload().as_ref(), b"second");
    }

    #[tokio::test]
    async fn nothing_is_sent_after_a_queued_close() {
        let mut server = server_with_pings(0);
        server.close_for_read_error(&WebSocketError::InvalidOpCode(3));
        server.close_for_read_error(&WebSocketError::FrameTooLarge);
        assert_eq!(server.obligated_sends.len(), 1);
        assert!(matches!(
            server.start_send_unpin(Frame::text("late")),
            Err(WebSocketError::ConnectionClosed)
        ));
        server.on_ping(&Frame::ping(&b"late"[..]));
        assert_eq!(server.obligated_sends.len(), 1);
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let err = WebSocketError::IoError(std::io::Error::other("é".repeat(100)));
        assert!(close_reason(&err).len() <= 123);
    }
}

#[cfg(test)]
mod capacity_tests {
    use super::*;
    use crate::Options;
    use tokio::io::duplex;

    #[tokio::test]
    async fn reservation_preserves_bytes_received_with_the_upgrade() {
        let options = Options::default().with_read_buffer_capacity(64 * 1024);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert!(stream.stream.read_buffer().capacity() >= 64 * 1024);
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn small_capacities_are_exact_and_keep_upgrade_bytes() {
        let options = Options::default()
            .with_read_buffer_capacity(512)
            .with_write_buffer_capacity(256);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert_eq!(stream.stream.read_buffer().capacity(), 512);
        assert_eq!(stream.stream.write_buffer().capacity(), 256);
        // The flush threshold stays at tokio-util's default, not the buffer size.
        let default = Negotiation::new(None, &Options::default(), Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let default = Streaming::new(Role::Client, io, Bytes::new(), &default);
        assert_eq!(
            stream.stream.backpressure_boundary(),
            default.stream.backpressure_boundary()
        );
        assert_eq!(
            stream.next_frame().await.unwrap().payload().as_ref(),
            b"abc"
        );
    }

    #[tokio::test]
    async fn capacity_does_not_relax_the_payload_limit() {
        let options = Options::default()
            .with_read_buffer_capacity(64 * 1024)
            .with_max_payload_read(2);
        let negotiated = Negotiation::new(None, &options, Role::Client).unwrap();
        let (io, _peer) = duplex(1);
        let mut stream = Streaming::new(
            Role::Client,
            io,
            Bytes::from_static(b"\x82\x03abc"),
            &negotiated,
        );
        assert!(matches!(
            stream.next_frame().await,
            Err(WebSocketError::FrameTooLarge)
        ));
    }
}
