//! The wspair.v1 state machine, without I/O (PROTOCOL.md §3–§8).
//!
//! [`Protocol`] holds everything one client knows about its own stream (the outbox) and its
//! peer's (the high-water mark), and decides what to write and what to tell the application.
//! It owns no socket and reads no clock: the caller feeds it connections, frames and instants,
//! and drains the frames to write ([`Protocol::poll_frame`]) and the events
//! ([`Protocol::poll_event`]). That keeps every rule testable with explicit time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::event::{Event, Presence};
use crate::frame::{
    Frame, KIND_ACK, KIND_BATCH, MAX_VARINT_LEN, PeerInfo, PeerMsg, PeerState, RxPos, ServerMsg,
    Sync, TokenAnswer, TxPos, Window, batchable, data_header_len, insert, put_data, put_varint,
    varint_len,
};

/// Timing and batching settings of the state machine (PROTOCOL.md §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// With entries in the outbox and no ACK progress for this long, send `sync` with
    /// `reply: true`.
    pub ack_timeout: Duration,
    /// How long the peer must be away before it is reported `Reconnecting`.
    pub presence_quiet: Duration,
    /// How long the peer must be away before it is reported `Offline`.
    pub presence_grace: Duration,
    /// The shortest interval between two gap `sync`s while the high-water mark does not move.
    pub gap_sync_interval: Duration,
    /// How long after the first unacknowledged message an ACK is sent.
    pub ack_delay: Duration,
    /// How many unacknowledged messages make an ACK go at once.
    pub ack_every: u64,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            ack_timeout: Duration::from_secs(2),
            presence_quiet: Duration::from_secs(1),
            presence_grace: Duration::from_secs(30),
            gap_sync_interval: Duration::from_millis(100),
            ack_delay: Duration::from_millis(20),
            ack_every: 32,
        }
    }
}

/// The window used until a node's `welcome` states one.
pub const DEFAULT_WINDOW: Window = Window {
    msgs: 1024,
    bytes: 1_048_576,
};

/// What this client knows of the peer's session on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerView {
    /// No `peer` frame yet on this connection (or no connection).
    Unknown,
    /// A v1 session of the peer is online.
    OnlineV1 {
        /// The peer's stream id.
        sid: u64,
        /// The peer session's generation.
        r#gen: u32,
    },
    /// A raw session of the peer is online.
    OnlineRaw,
    /// The node knows of no session of the peer.
    Away,
}

/// Why [`Protocol::send`] did not take a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The window is full: retry once the peer acknowledged more.
    #[error("the send window is full")]
    WindowFull,
    /// The frame would exceed the node's `max_frame`.
    #[error("a frame of {len} bytes exceeds the node's max_frame of {max}")]
    TooLarge {
        /// The frame's length, header included.
        len: u64,
        /// The node's limit.
        max: u64,
    },
}

/// One numbered message kept until the peer acknowledges it, as its encoded DATA frame in
/// [`Protocol::store`].
///
/// The frame is encoded when the message is sent, and the application's payload is dropped
/// there. Why: the payload was otherwise freed only on the peer's ACK, often by another thread
/// than the one that allocated it, which made the allocator's slow paths a tenth of a load
/// generator's CPU; and encoding at send time copies the payload while it is still in the
/// sender's cache. The store is one buffer rather than a `Bytes` per frame: frames sliced off a
/// shared buffer had their reference count touched by the sending thread, the writing task and
/// the ACK, each often on another CPU.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    text: bool,
    /// Where the frame starts in the store, counted from the store's first byte ever.
    start: u64,
    /// The frame's length: kind byte, `seq` varint, payload.
    len: usize,
}

/// A store this large is given back when the outbox empties, so a burst of big messages does
/// not keep its memory.
const STORE_KEEP: usize = 64 * 1024;

/// A frame waiting to be written.
#[derive(Debug)]
enum Queued {
    Frame(Frame),
    /// Numbered DATA of the outbox entry of this seq, taken from the entry when it is written,
    /// so a message acknowledged before it was written is skipped (the peer has it).
    Outbox(u64),
}

/// The sans-IO wspair.v1 state machine of one client (one `sid`).
#[derive(Debug)]
pub struct Protocol {
    cfg: ProtocolConfig,
    sid: u64,
    conn_gen: u32,
    connected: bool,
    connections: u64,
    window: Window,
    max_frame: Option<u64>,
    /// The most frames a BATCH may hold (`welcome.max_batch`), when the node limits it.
    max_batch: Option<u64>,

    // Sender (§3, §7).
    outbox: VecDeque<Entry>,
    /// The outbox's frames, back to back in seq order (see [`Entry`]).
    store: Vec<u8>,
    /// The position of `store[0]`, counted from the store's first byte ever.
    store_base: u64,
    next_seq: u64,
    /// The highest seq written to the current peer session since its `sync`.
    sent_upto: u64,
    /// The highest `hw` an ACK for this sid carried.
    acked: u64,
    /// Window floor as the node counts it: the highest of `acked` and the `tx.base - 1` of this
    /// client's own `sync`s.
    floor: u64,
    /// Numbered messages above `floor`, with their payload lengths.
    inflight: VecDeque<(u64, u64)>,
    inflight_bytes: u64,
    /// When the retransmission timer was last restarted (outbox non-empty only).
    progress_at: Option<Instant>,

    // Receiver (§4).
    rx_sid: Option<u64>,
    rx_hw: u64,
    /// Messages of the current stream handed to the library.
    delivered_in_stream: u64,
    /// The highest seq the application took; what ACKs report.
    consumed_hw: u64,
    ack_sent_hw: u64,
    /// Delivered to the library but not yet taken by the application: (seq, length).
    untaken: VecDeque<(u64, u64)>,
    unacked_bytes: u64,
    ack_at: Option<Instant>,
    ack_forced: bool,
    gap_sync: Option<(Instant, u64)>,
    duplicates_dropped: u64,
    gaps_seen: u64,

    // The peer's session on this connection (§5).
    peer: PeerView,
    sync_sent: bool,
    /// Since when this client has waited for the sync of the peer session it synced with; it
    /// asks again (`reply: true`) every quarter of `ack_timeout` (a sync dropped on the way,
    /// say by a node that did not yet record the new session, would otherwise hold both
    /// sides until the retransmission timer).
    peer_sync_wait: Option<Instant>,
    peer_synced: bool,

    // Presence (§8).
    presence: Option<Presence>,
    away_since: Option<Instant>,
    ever_online: bool,
    peer_left: bool,

    frames: VecDeque<Queued>,
    events: VecDeque<Event>,
}

impl Protocol {
    /// A state machine for stream `sid` (not zero), with no connection yet.
    pub fn new(sid: u64, cfg: ProtocolConfig) -> Protocol {
        assert_ne!(sid, 0, "a sid is never zero");
        Protocol {
            cfg,
            sid,
            conn_gen: 0,
            connected: false,
            connections: 0,
            window: DEFAULT_WINDOW,
            max_frame: None,
            max_batch: None,
            outbox: VecDeque::new(),
            store: Vec::new(),
            store_base: 0,
            next_seq: 1,
            sent_upto: 0,
            acked: 0,
            floor: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            progress_at: None,
            rx_sid: None,
            rx_hw: 0,
            delivered_in_stream: 0,
            consumed_hw: 0,
            ack_sent_hw: 0,
            untaken: VecDeque::new(),
            unacked_bytes: 0,
            ack_at: None,
            ack_forced: false,
            gap_sync: None,
            duplicates_dropped: 0,
            gaps_seen: 0,
            peer: PeerView::Unknown,
            sync_sent: false,
            peer_sync_wait: None,
            peer_synced: false,
            presence: None,
            away_since: None,
            ever_online: false,
            peer_left: false,
            frames: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// This client's stream id.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// The generation of the current (or last) connection; 0 before any.
    pub fn r#gen(&self) -> u32 {
        self.conn_gen
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// How many connections were opened, the first included.
    pub fn connections(&self) -> u64 {
        self.connections
    }

    /// Messages kept until the peer acknowledges them.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// The seq the next numbered message gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest position the peer acknowledged with an ACK.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// The stream received, `None` before any.
    pub fn rx_sid(&self) -> Option<u64> {
        self.rx_sid
    }

    /// The last position of the received stream handed to the library.
    pub fn rx_hw(&self) -> u64 {
        self.rx_hw
    }

    /// Numbered messages dropped because they were already delivered.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates_dropped
    }

    /// Numbered messages dropped because earlier ones were missing.
    pub fn gaps_seen(&self) -> u64 {
        self.gaps_seen
    }

    /// What is known of the peer's session on this connection.
    pub fn peer(&self) -> PeerView {
        self.peer
    }

    /// The presence last reported, `None` before any.
    pub fn presence(&self) -> Option<Presence> {
        self.presence
    }

    /// The window in force (the node's, once welcomed).
    pub fn window(&self) -> Window {
        self.window
    }

    /// Whether a new numbered message would fit the window now.
    pub fn window_open(&self, len: usize) -> bool {
        self.next_seq - self.floor <= self.window.msgs
            && (self.inflight.is_empty() || self.inflight_bytes + len as u64 <= self.window.bytes)
    }

    /// Whether frames wait to be written ([`Protocol::poll_frame`] would return one).
    pub fn has_frames(&self) -> bool {
        !self.frames.is_empty()
    }

    /// How many frames wait to be written (some may be skipped when their turn comes): a
    /// caller that handed frames in can tell whether they queued answers.
    pub fn queued_frames(&self) -> usize {
        self.frames.len()
    }

    /// Called before a batch of frames is written: when frames wait and messages taken by the
    /// application are not acknowledged yet, their ACK joins the batch. It then costs no write
    /// and no wake-up of its own, where a delayed ACK would (in a pair sending both ways, most
    /// ACKs travel this way instead of on their timer). Returns whether an ACK joined, so the
    /// caller's timer can move past its deadline.
    pub fn piggyback_ack(&mut self) -> bool {
        if !self.frames.is_empty() && self.consumed_hw > self.ack_sent_hw {
            self.send_ack();
            return true;
        }
        false
    }

    /// The next frame to write on the current connection.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        loop {
            match self.frames.pop_front()? {
                Queued::Frame(frame) => return Some(frame),
                Queued::Outbox(seq) => {
                    if let Some(entry) = self.entry(seq) {
                        return Some(data_frame(self, &entry));
                    }
                }
            }
        }
    }

    /// As [`Protocol::poll_frame`], encoded ([`Frame::encode`]); numbered DATA is the frame
    /// its outbox entry holds.
    pub fn poll_frame_bytes(&mut self) -> Option<Bytes> {
        loop {
            match self.frames.pop_front()? {
                Queued::Frame(frame) => return Some(frame.encode()),
                Queued::Outbox(seq) => {
                    if let Some(entry) = self.entry(seq) {
                        return Some(Bytes::copy_from_slice(self.frame_of(&entry)));
                    }
                }
            }
        }
    }

    /// As [`Protocol::poll_frame_bytes`], appended to `buf`: a writer that takes a batch of
    /// frames copies them into one buffer instead of allocating each. Returns whether a frame
    /// was appended.
    pub fn poll_frame_into(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            let Some(queued) = self.frames.pop_front() else {
                return false;
            };
            match queued {
                Queued::Frame(Frame::Data { seq, text, payload }) => {
                    buf.reserve(data_header_len(seq) + payload.len());
                    put_data(buf, seq, text, &payload);
                }
                Queued::Frame(Frame::Ack { sid, hw }) => {
                    buf.reserve(1 + 8 + varint_len(hw));
                    buf.put_u8(KIND_ACK);
                    buf.put_u64(sid);
                    put_varint(buf, hw);
                }
                Queued::Frame(frame) => buf.extend_from_slice(&frame.encode()),
                Queued::Outbox(seq) => {
                    let Some(entry) = self.entry(seq) else {
                        continue;
                    };
                    buf.extend_from_slice(self.frame_of(&entry));
                }
            }
            return true;
        }
    }

    /// Appends the next WebSocket message to write to `buf`: the next frame, or, when DATA and
    /// ACK frames follow each other in the queue, as many of them as fit in the node's
    /// `max_frame` in one BATCH, of at most its `max_batch` frames (PROTOCOL.md §2.6). A node
    /// then reads, queues and writes one message where it would have handled each frame.
    /// Returns whether a message was appended.
    pub fn poll_message_into(&mut self, buf: &mut BytesMut) -> bool {
        let start = buf.len();
        if !self.poll_frame_into(buf) {
            return false;
        }
        let Some(max) = self.max_frame.and_then(|max| usize::try_from(max).ok()) else {
            return true;
        };
        if !batchable(buf[start]) {
            return true;
        }
        let first = buf.len() - start;
        let mut frames = 1;
        while let Some(next) = self.next_batchable_len() {
            let len = if frames == 1 {
                1 + varint_len(first as u64) + first
            } else {
                buf.len() - start
            };
            if len + varint_len(next as u64) + next > max
                || self.max_batch.is_some_and(|most| frames >= most)
            {
                break;
            }
            if frames == 1 {
                let mut head = [0u8; 1 + MAX_VARINT_LEN];
                head[0] = KIND_BATCH;
                let mut varint = &mut head[1..];
                put_varint(&mut varint, first as u64);
                insert(buf, start, &head[..1 + varint_len(first as u64)]);
            }
            put_varint(buf, next as u64);
            let appended = self.poll_frame_into(buf);
            debug_assert!(appended, "the frame measured is the next");
            frames += 1;
        }
        true
    }

    /// The length of the next frame to write if it may join a BATCH (DATA or ACK); outbox
    /// entries acknowledged before their turn are dropped on the way, as writing skips them.
    fn next_batchable_len(&mut self) -> Option<usize> {
        loop {
            return match self.frames.front()? {
                Queued::Outbox(seq) => match self.entry(*seq) {
                    Some(entry) => Some(entry.len),
                    None => {
                        self.frames.pop_front();
                        continue;
                    }
                },
                Queued::Frame(Frame::Data { seq, payload, .. }) => {
                    Some(data_header_len(*seq) + payload.len())
                }
                Queued::Frame(Frame::Ack { hw, .. }) => Some(1 + 8 + varint_len(*hw)),
                Queued::Frame(_) => None,
            };
        }
    }

    /// The encoded frame of an outbox entry.
    fn frame_of(&self, entry: &Entry) -> &[u8] {
        let at = (entry.start - self.store_base) as usize;
        &self.store[at..at + entry.len]
    }

    /// The payload of an outbox entry.
    fn payload_of(&self, entry: &Entry) -> Bytes {
        Bytes::copy_from_slice(&self.frame_of(entry)[data_header_len(entry.seq)..])
    }

    /// The outbox entry of `seq`, if it is still there (the outbox holds consecutive seqs).
    fn entry(&self, seq: u64) -> Option<Entry> {
        let first = self.outbox.front()?.seq;
        let index = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.outbox
            .get(index)
            .filter(|entry| entry.seq == seq)
            .copied()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A connection of generation `gen` is open (its `welcome` follows through
    /// [`Protocol::on_frame`]). An earlier connection, if any, is given up.
    pub fn on_connected(&mut self, r#gen: u32, now: Instant) {
        if self.connected {
            self.drop_connection(now);
        }
        self.connected = true;
        self.conn_gen = r#gen;
        self.connections += 1;
    }

    /// The current connection is gone.
    pub fn on_disconnected(&mut self, now: Instant) {
        if self.connected {
            self.drop_connection(now);
        }
    }

    /// This client leaves for good: queues `bye` (PROTOCOL.md §2.3).
    pub fn bye(&mut self) {
        if self.connected {
            self.frames
                .push_back(Queued::Frame(Frame::Peer(PeerMsg::Bye)));
        }
    }

    /// Offers a message. Returns its seq (0 when sent unnumbered to a raw peer), or why it was
    /// not taken; a full window is for the caller to wait out.
    pub fn send(&mut self, text: bool, payload: Bytes, now: Instant) -> Result<u64, SendError> {
        self.offer(text, payload, || now).map_err(|(e, _)| e)
    }

    /// As [`Protocol::send`], for a caller on the hot path: the clock is read only when the
    /// message starts the retransmission timer (the outbox was empty), and a message not taken
    /// comes back with the error, so the caller need not keep a clone of it (cloning a `Bytes`
    /// made from a `Vec` allocates its shared header).
    pub fn offer(
        &mut self,
        text: bool,
        payload: Bytes,
        now: impl FnOnce() -> Instant,
    ) -> Result<u64, (SendError, Bytes)> {
        let raw = self.connected && self.peer == PeerView::OnlineRaw;
        let seq = if raw { 0 } else { self.next_seq };
        let len = (data_header_len(seq) + payload.len()) as u64;
        if let Some(max) = self.max_frame
            && len > max
        {
            return Err((SendError::TooLarge { len, max }, payload));
        }
        if raw {
            self.frames.push_back(Queued::Frame(Frame::Data {
                seq: 0,
                text,
                payload,
            }));
            return Ok(0);
        }
        if !self.window_open(payload.len()) {
            return Err((SendError::WindowFull, payload));
        }
        self.next_seq += 1;
        if self.outbox.is_empty() {
            self.progress_at = Some(now());
        }
        self.inflight.push_back((seq, payload.len() as u64));
        self.inflight_bytes += payload.len() as u64;
        let start = self.store_base + self.store.len() as u64;
        put_data(&mut self.store, seq, text, &payload);
        drop(payload);
        let len = (self.store_base + self.store.len() as u64 - start) as usize;
        self.outbox.push_back(Entry {
            seq,
            text,
            start,
            len,
        });
        if self.flowing() && self.sent_upto == seq - 1 {
            self.frames.push_back(Queued::Outbox(seq));
            self.sent_upto = seq;
        }
        Ok(seq)
    }

    /// The application took message `seq` of stream `sid`: it may now be acknowledged.
    pub fn on_taken(&mut self, sid: u64, seq: u64, now: Instant) {
        self.take(sid, seq, || now);
    }

    /// As [`Protocol::on_taken`], reading the clock only when the delayed ACK's timer starts.
    /// Returns whether the caller's timers or writes must look again: an ACK was queued, or the
    /// delayed ACK's deadline was set (for every other message nothing changed for them).
    pub fn take(&mut self, sid: u64, seq: u64, now: impl FnOnce() -> Instant) -> bool {
        if self.rx_sid != Some(sid) || seq <= self.consumed_hw || seq > self.rx_hw {
            return false;
        }
        self.consumed_hw = seq;
        while let Some(&(s, len)) = self.untaken.front() {
            if s > seq {
                break;
            }
            self.unacked_bytes += len;
            self.untaken.pop_front();
        }
        let mut changed = false;
        if self.ack_at.is_none() {
            self.ack_at = Some(now() + self.cfg.ack_delay);
            changed = true;
        }
        let unacked = self.consumed_hw - self.ack_sent_hw;
        if unacked >= self.cfg.ack_every
            || unacked >= (self.window.msgs / 2).max(1)
            || self.unacked_bytes >= self.window.bytes / 2
        {
            self.send_ack();
            changed = true;
        }
        changed
    }

    /// A frame arrived on the current connection.
    pub fn on_frame(&mut self, frame: Frame, now: Instant) {
        if !self.connected {
            return;
        }
        match frame {
            Frame::Data {
                seq: 0,
                text,
                payload,
            } => self.events.push_back(Event::Message {
                text,
                payload,
                seq: 0,
            }),
            Frame::Data { seq, text, payload } => self.on_data(seq, text, payload, now),
            Frame::Ack { sid, hw } => self.on_ack(sid, hw, now),
            Frame::Peer(PeerMsg::Sync(sync)) => self.on_sync(sync, now),
            Frame::Peer(PeerMsg::Bye) => self.on_bye(),
            Frame::Peer(PeerMsg::Unknown(t)) => tracing::debug!(t, "ignoring unknown PEER type"),
            Frame::Server(ServerMsg::Welcome(w)) => {
                self.window = w.window;
                self.max_frame = Some(w.max_frame);
                self.max_batch = w.max_batch;
                self.events.push_back(Event::Connected {
                    r#gen: w.r#gen,
                    node: w.node,
                });
            }
            Frame::Server(ServerMsg::Peer(info)) => self.on_peer_info(info, now),
            Frame::Server(ServerMsg::Token(answer)) => self.events.push_back(match answer {
                TokenAnswer { ok: true, exp, .. } => Event::TokenRefreshed { expires: exp },
                TokenAnswer { reason, .. } => Event::TokenRefused {
                    reason: reason.unwrap_or_default(),
                },
            }),
            // A node never sends a client's requests back.
            Frame::Server(ServerMsg::Goaway { .. } | ServerMsg::Unknown(_)) | Frame::Node(_) => {}
        }
    }

    /// When [`Protocol::on_tick`] next has something to do, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.ack_deadline(),
            self.retransmit_deadline(),
            self.peer_sync_deadline(),
            self.presence_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs the timers due at `now`: delayed ACKs, retransmission, presence.
    pub fn on_tick(&mut self, now: Instant) {
        if self.ack_deadline().is_some_and(|t| t <= now) {
            self.send_ack();
        }
        if self.retransmit_deadline().is_some_and(|t| t <= now) {
            self.send_sync(true);
            self.progress_at = Some(now);
        }
        if self.peer_sync_deadline().is_some_and(|t| t <= now) {
            self.send_sync(true);
            self.peer_sync_wait = Some(now);
        }
        if let Some(since) = self.away_since
            && !self.peer_left
        {
            if now >= since + self.cfg.presence_grace
                || (!self.ever_online && now >= since + self.cfg.presence_quiet)
            {
                self.set_presence(Presence::Offline { left: false });
            } else if now >= since + self.cfg.presence_quiet {
                self.set_presence(Presence::Reconnecting);
            }
        }
    }

    fn ack_deadline(&self) -> Option<Instant> {
        if !self.connected || self.rx_sid.is_none() || self.consumed_hw == 0 {
            return None;
        }
        if self.consumed_hw == self.ack_sent_hw && !self.ack_forced {
            return None;
        }
        self.ack_at
    }

    fn peer_sync_deadline(&self) -> Option<Instant> {
        if !self.connected || self.peer_synced || !matches!(self.peer, PeerView::OnlineV1 { .. }) {
            return None;
        }
        self.peer_sync_wait.map(|t| t + self.cfg.ack_timeout / 4)
    }

    fn retransmit_deadline(&self) -> Option<Instant> {
        if !self.connected
            || self.outbox.is_empty()
            || !matches!(self.peer, PeerView::OnlineV1 { .. })
        {
            return None;
        }
        self.progress_at.map(|t| t + self.cfg.ack_timeout)
    }

    fn presence_deadline(&self) -> Option<Instant> {
        let since = self.away_since?;
        if self.peer_left {
            return None;
        }
        match self.presence {
            Some(Presence::Offline { .. }) => None,
            Some(Presence::Reconnecting) => Some(since + self.cfg.presence_grace),
            _ => Some(since + self.cfg.presence_quiet),
        }
    }

    /// Whether numbered DATA may be written now (§3).
    fn flowing(&self) -> bool {
        self.connected
            && matches!(self.peer, PeerView::OnlineV1 { .. })
            && self.sync_sent
            && self.peer_synced
    }

    fn drop_connection(&mut self, now: Instant) {
        self.connected = false;
        self.frames.clear();
        self.peer_gone(PeerView::Unknown, now);
    }

    /// The peer's session is no longer known: its sync state goes, its away timer starts.
    fn peer_gone(&mut self, view: PeerView, now: Instant) {
        self.peer = view;
        self.sync_sent = false;
        self.peer_synced = false;
        self.sent_upto = 0;
        if self.away_since.is_none() && !self.peer_left {
            self.away_since = Some(now);
        }
    }

    /// A new session of the peer: nothing was synced with it yet.
    fn new_peer_session(&mut self, view: PeerView) {
        self.peer = view;
        self.sync_sent = false;
        self.peer_synced = false;
        self.sent_upto = 0;
        self.away_since = None;
        self.peer_left = false;
        self.ever_online = true;
        self.set_presence(Presence::Online);
    }

    fn set_presence(&mut self, p: Presence) {
        let same = match (self.presence, p) {
            (Some(Presence::Offline { .. }), Presence::Offline { .. }) => true,
            (Some(Presence::Offline { .. }), Presence::Reconnecting) => true,
            (current, p) => current == Some(p),
        };
        if !same {
            self.presence = Some(p);
            self.events.push_back(Event::Presence(p));
        }
    }

    fn on_peer_info(&mut self, info: PeerInfo, now: Instant) {
        match (info.state, info.raw, info.sid, info.r#gen) {
            (PeerState::Online, false, Some(sid), Some(r#gen)) => {
                if let PeerView::OnlineV1 { sid: s, r#gen: g } = self.peer
                    && s == sid
                    && g >= r#gen
                {
                    return;
                }
                self.new_peer_session(PeerView::OnlineV1 { sid, r#gen });
                self.send_sync(false);
                self.peer_sync_wait = Some(now);
            }
            (PeerState::Online, true, _, _) => {
                if self.peer == PeerView::OnlineRaw {
                    return;
                }
                self.new_peer_session(PeerView::OnlineRaw);
                self.events.push_back(Event::RawPeer);
                // A raw peer is never acknowledged: what waits is sent once, unnumbered.
                for entry in &self.outbox {
                    self.frames.push_back(Queued::Frame(Frame::Data {
                        seq: 0,
                        text: entry.text,
                        payload: self.payload_of(entry),
                    }));
                }
                self.outbox.clear();
                self.trim_store();
                self.inflight.clear();
                self.inflight_bytes = 0;
                self.floor = self.next_seq - 1;
                self.progress_at = None;
            }
            (PeerState::Online, false, _, _) => {
                tracing::warn!("ignoring a v1 peer online without sid and gen");
            }
            (PeerState::Away, _, _, _) => {
                if self.peer != PeerView::Away {
                    self.peer_gone(PeerView::Away, now);
                }
            }
        }
    }

    fn on_bye(&mut self) {
        self.peer_left = true;
        self.away_since = None;
        self.set_presence(Presence::Offline { left: true });
    }

    fn on_sync(&mut self, sync: Sync, now: Instant) {
        let view = PeerView::OnlineV1 {
            sid: sync.sid,
            r#gen: sync.r#gen,
        };
        if let PeerView::OnlineV1 { sid, r#gen } = self.peer
            && sid == sync.sid
            && r#gen > sync.r#gen
        {
            tracing::debug!("ignoring a sync of an older session of the peer");
            return;
        }
        if self.peer != view {
            self.new_peer_session(view);
        } else {
            self.away_since = None;
            self.peer_left = false;
            self.set_presence(Presence::Online);
        }

        // Receiver: adopt or check the stream (§4).
        let same_stream = self.rx_sid == Some(sync.sid);
        let consistent =
            sync.tx.base <= self.rx_hw + 1 && sync.tx.next.saturating_sub(1) >= self.rx_hw;
        if !same_stream || !consistent {
            if let Some(old_sid) = self.rx_sid
                && self.delivered_in_stream > 0
            {
                self.events.push_back(Event::StreamReset {
                    old_sid,
                    delivered_hw: self.rx_hw,
                });
            }
            self.rx_sid = Some(sync.sid);
            self.rx_hw = sync.tx.base.saturating_sub(1);
            self.delivered_in_stream = 0;
            self.consumed_hw = self.rx_hw;
            self.ack_sent_hw = self.rx_hw;
            self.untaken.clear();
            self.unacked_bytes = 0;
            self.ack_at = None;
            self.ack_forced = false;
        }
        self.peer_synced = true;
        self.gap_sync = None;

        // Own sync before any DATA to this session, and as the asked-for answer (§5).
        if !self.sync_sent || sync.reply {
            self.send_sync(false);
        }

        // Sender: resend, in order, what the peer's library has not received (§3). What it
        // has received stays in the outbox until its application took it and an ACK says so:
        // only an ACK releases a message.
        let received = if sync.rx.sid == Some(self.sid) {
            sync.rx.hw
        } else {
            0
        };
        for entry in self.outbox.iter().filter(|entry| entry.seq > received) {
            self.frames.push_back(Queued::Outbox(entry.seq));
        }
        self.sent_upto = self.next_seq - 1;
        self.progress_at = if self.outbox.is_empty() {
            None
        } else {
            Some(now)
        };

        // Tell this connection's path what was taken, so its window count is current.
        if self.consumed_hw > 0 {
            self.ack_forced = true;
            self.send_ack();
        }
    }

    fn on_data(&mut self, seq: u64, text: bool, payload: Bytes, now: Instant) {
        if !self.peer_synced {
            tracing::trace!(seq, "dropping numbered DATA before the peer's sync");
            return;
        }
        if seq <= self.rx_hw {
            self.duplicates_dropped += 1;
            self.ack_forced = true;
            if self.ack_at.is_none() {
                self.ack_at = Some(now + self.cfg.ack_delay);
            }
        } else if seq == self.rx_hw + 1 {
            self.rx_hw = seq;
            self.delivered_in_stream += 1;
            self.untaken.push_back((seq, payload.len() as u64));
            self.events.push_back(Event::Message { text, payload, seq });
        } else {
            self.gaps_seen += 1;
            let allowed = match self.gap_sync {
                None => true,
                Some((at, hw)) => hw != self.rx_hw || now >= at + self.cfg.gap_sync_interval,
            };
            if allowed {
                self.send_sync(false);
                self.gap_sync = Some((now, self.rx_hw));
            }
        }
    }

    fn on_ack(&mut self, sid: u64, hw: u64, now: Instant) {
        if sid != self.sid || hw <= self.acked {
            return;
        }
        if hw >= self.next_seq {
            tracing::warn!(
                hw,
                next = self.next_seq,
                "ignoring an ACK above what was sent"
            );
            return;
        }
        self.acked = hw;
        self.trim_outbox(hw);
        self.raise_floor(hw);
        self.progress_at = if self.outbox.is_empty() {
            None
        } else {
            Some(now)
        };
        self.events.push_back(Event::Acked { hw });
    }

    fn trim_outbox(&mut self, hw: u64) {
        while self.outbox.front().is_some_and(|e| e.seq <= hw) {
            self.outbox.pop_front();
        }
        self.trim_store();
    }

    /// Drops the store's bytes below the outbox's first frame: all of them when the outbox is
    /// empty, else once they are most of the store (each byte is moved about once).
    fn trim_store(&mut self) {
        let end = self.store_base + self.store.len() as u64;
        let first = self.outbox.front().map_or(end, |e| e.start);
        let dead = (first - self.store_base) as usize;
        if dead == self.store.len() {
            if self.store.capacity() > STORE_KEEP {
                self.store = Vec::new();
            } else {
                self.store.clear();
            }
        } else if dead >= 4096 && dead > self.store.len() / 2 {
            self.store.drain(..dead);
        } else {
            return;
        }
        self.store_base = first;
    }

    fn raise_floor(&mut self, floor: u64) {
        if floor <= self.floor {
            return;
        }
        self.floor = floor;
        while let Some(&(seq, len)) = self.inflight.front() {
            if seq > floor {
                break;
            }
            self.inflight_bytes -= len;
            self.inflight.pop_front();
        }
    }

    fn send_sync(&mut self, reply: bool) {
        let base = self.outbox.front().map_or(self.next_seq, |e| e.seq);
        self.frames
            .push_back(Queued::Frame(Frame::Peer(PeerMsg::Sync(Sync {
                sid: self.sid,
                r#gen: self.conn_gen,
                tx: TxPos {
                    base,
                    next: self.next_seq,
                },
                rx: RxPos {
                    sid: self.rx_sid,
                    hw: self.rx_hw,
                },
                reply,
            }))));
        self.sync_sent = true;
        self.raise_floor(base - 1);
    }

    fn send_ack(&mut self) {
        self.ack_at = None;
        self.ack_forced = false;
        let Some(rx_sid) = self.rx_sid else { return };
        if !self.connected || self.consumed_hw == 0 {
            return;
        }
        self.frames.push_back(Queued::Frame(Frame::Ack {
            sid: rx_sid,
            hw: self.consumed_hw,
        }));
        self.ack_sent_hw = self.consumed_hw;
        self.unacked_bytes = 0;
    }
}

fn data_frame(p: &Protocol, entry: &Entry) -> Frame {
    Frame::Data {
        seq: entry.seq,
        text: entry.text,
        payload: p.payload_of(entry),
    }
}

#[cfg(test)]
mod tests;
