//! The open-loop sender of `latency` mode: one OS thread that keeps the schedule and writes
//! every message itself, as a masked WebSocket frame, straight onto the client's socket.
//!
//! Why a thread of its own, and why not the WebSocket library's sink:
//! - tokio's timer has 1 ms resolution. At 20 000 msg/s it fires twenty senders at once every
//!   millisecond, and each message then waits behind the rest of its burst (half a millisecond
//!   at the median, on two vCPUs): the generator's delay, not the relay's. This thread sleeps
//!   with the OS timer (about 50 µs resolution).
//! - Handing each message to a sender task costs a thread wake-up per message, which on a
//!   two-vCPU machine shared with the servers is CPU the relay under test no longer has.
//!   Writing from this thread costs one `write` per message and wakes nothing.
//!
//! With `--v1` the thread hands each message to the `wspair-client` library instead
//! ([`V1Sender`]): `feed_binary` queues its frame (with room in the window it returns at once)
//! and `flush` writes it on the socket from this thread, as the raw sender writes its own, so
//! the thread keeps its schedule and the library's own cost shows in the latency.
//!
//! The reading half stays with tokio-tungstenite (see `latency.rs`). The two share the socket
//! through a duplicated descriptor; the reader writes only pongs (the server pings every
//! `outer.ping-interval`, 20 s by default) and each of our frames is one small `write`, so their
//! bytes do not interleave.

use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::flow::payload;

/// Bytes at the start of a latency payload: sequence number, scheduled time, sent time.
pub const LATENCY_HEADER_BYTES: usize = 24;

/// When each message is due: message `k` of the run at `k / rate` seconds, sent by sender
/// `k % senders`, so every sender runs at the same rate and the total is smooth.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Messages per second, over every sender.
    pub rate: u64,
    /// Messages in the whole run.
    pub messages: u64,
    /// Senders (two per pair).
    pub senders: u64,
}

impl Schedule {
    /// How many messages sender `sender` sends in the whole run.
    pub fn messages_for(self, sender: u64) -> u64 {
        self.messages.saturating_sub(sender).div_ceil(self.senders)
    }

    fn due_ns(self, k: u64) -> u64 {
        (u128::from(k) * 1_000_000_000 / u128::from(self.rate)) as u64
    }
}

/// One sender: its socket and the bytes the socket has not taken yet.
pub struct RawSender {
    socket: TcpStream,
    pending: Vec<u8>,
    seq: u64,
}

impl RawSender {
    /// A sender writing on a duplicate of `socket`'s descriptor (non-blocking, like the
    /// original: they share one open file).
    pub fn new(socket: &tokio::net::TcpStream) -> Result<RawSender, String> {
        use std::os::fd::AsFd;
        let fd = socket
            .as_fd()
            .try_clone_to_owned()
            .map_err(|err| format!("dup: {err}"))?;
        Ok(RawSender {
            socket: TcpStream::from(fd),
            pending: Vec::new(),
            seq: 0,
        })
    }

    /// Appends the next message and writes what the socket takes.
    fn send(&mut self, origin: Instant, scheduled_ns: u64, size: usize, mask: [u8; 4]) {
        let sent_ns = origin.elapsed().as_nanos() as u64;
        let mut body = payload(self.seq, scheduled_ns, size.max(LATENCY_HEADER_BYTES));
        body[16..24].copy_from_slice(&sent_ns.to_be_bytes());
        encode_masked_binary(&body, mask, &mut self.pending);
        self.seq += 1;
    }

    /// Writes pending bytes until done or the socket is full; an error ends the run.
    fn flush(&mut self) -> Result<(), String> {
        while !self.pending.is_empty() {
            match self.socket.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => return Err(format!("send: {err}")),
            }
        }
        Ok(())
    }
}

/// A v1 sender: a handle of a `wspair-client` client.
pub struct V1Sender {
    handle: wspair_client::Handle,
    seq: u64,
}

impl V1Sender {
    /// A sender through `handle`.
    pub fn new(handle: wspair_client::Handle) -> V1Sender {
        V1Sender { handle, seq: 0 }
    }

    fn send(&mut self, origin: Instant, scheduled_ns: u64, size: usize) -> Result<(), String> {
        let sent_ns = origin.elapsed().as_nanos() as u64;
        let mut body = payload(self.seq, scheduled_ns, size.max(LATENCY_HEADER_BYTES));
        body[16..24].copy_from_slice(&sent_ns.to_be_bytes());
        // Returns at once with room in the window; waits (and delays the schedule, which the
        // latency from the schedule shows) only when it is full. The flush writes from this
        // thread: `send_binary` would wake the client's task on the runtime to write instead.
        futures::executor::block_on(async {
            self.handle.feed_binary(body).await?;
            self.handle.flush().await
        })
        .map_err(|err| format!("send: {err}"))?;
        self.seq += 1;
        Ok(())
    }
}

/// Whoever writes a sender's messages: the thread itself on the socket, or the v1 library.
pub enum Sender {
    /// Raw frames written on the socket.
    Raw(RawSender),
    /// Messages handed to a `wspair-client` client.
    V1(V1Sender),
}

impl Sender {
    fn send(
        &mut self,
        origin: Instant,
        scheduled_ns: u64,
        size: usize,
        mask: [u8; 4],
    ) -> Result<(), String> {
        match self {
            Sender::Raw(raw) => {
                raw.send(origin, scheduled_ns, size, mask);
                raw.flush()
            }
            Sender::V1(v1) => v1.send(origin, scheduled_ns, size),
        }
    }

    fn flush(&mut self) -> Result<bool, String> {
        match self {
            Sender::Raw(raw) => raw.flush().map(|()| raw.pending.is_empty()),
            Sender::V1(_) => Ok(true),
        }
    }
}

/// Sends every message of `schedule` at its due time, then waits (up to `drain`) until the
/// sockets have taken everything. A socket that is full when a message is due keeps it queued
/// in order; the delay shows in the latency measured from the schedule.
pub fn pace(
    schedule: Schedule,
    origin: Instant,
    size: usize,
    mut senders: Vec<Sender>,
    drain: Duration,
) -> Result<(), String> {
    let mut mask_state: u32 = 0x9e37_79b9;
    for k in 0..schedule.messages {
        let due_ns = schedule.due_ns(k);
        let now_ns = origin.elapsed().as_nanos() as u64;
        if due_ns > now_ns {
            std::thread::sleep(Duration::from_nanos(due_ns - now_ns));
        }
        // xorshift: masks vary per frame, as RFC 6455 asks of clients.
        mask_state ^= mask_state << 13;
        mask_state ^= mask_state >> 17;
        mask_state ^= mask_state << 5;
        let sender = &mut senders[(k % schedule.senders) as usize];
        sender.send(origin, due_ns, size, mask_state.to_be_bytes())?;
    }
    let deadline = Instant::now() + drain;
    loop {
        let mut waiting = 0;
        for sender in &mut senders {
            waiting += usize::from(!sender.flush()?);
        }
        if waiting == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{waiting} senders still blocked {drain:?} after the run"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Appends a final, masked binary frame carrying `body` (RFC 6455 §5.2).
fn encode_masked_binary(body: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    const FIN_BINARY: u8 = 0x82;
    const MASKED: u8 = 0x80;
    out.push(FIN_BINARY);
    match body.len() {
        len @ 0..=125 => out.push(MASKED | len as u8),
        len @ 126..=0xffff => {
            out.push(MASKED | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(MASKED | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

    #[test]
    fn frames_parse_back_with_the_websocket_library() {
        for len in [24, 125, 126, 70_000] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode_masked_binary(&body, [1, 2, 3, 4], &mut out);
            let mut cursor = std::io::Cursor::new(out.as_slice());
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(length, len as u64);
            assert_eq!(header.mask, Some([1, 2, 3, 4]));
            let data: Vec<u8> = out[cursor.position() as usize..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ [1, 2, 3, 4][i % 4])
                .collect();
            assert_eq!(data, body);
        }
    }

    #[test]
    fn the_schedule_shares_messages_evenly() {
        let schedule = Schedule {
            rate: 1000,
            messages: 10,
            senders: 4,
        };
        let counts: Vec<_> = (0..4).map(|s| schedule.messages_for(s)).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
        assert_eq!(schedule.due_ns(3), 3_000_000);
    }
}
