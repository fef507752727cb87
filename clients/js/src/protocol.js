// The wspair.v1 state machine, without I/O (PROTOCOL.md §3–§8); a port of the Rust library's
// client/src/protocol.rs, rule for rule.
//
// A Protocol holds everything one client knows about its own stream (the outbox) and its
// peer's (the high-water mark), and decides what to write and what to tell the application.
// It owns no socket and reads no clock: the caller feeds it connections, frames and instants
// (milliseconds), and drains the frames to write (pollFrame) and the events (pollEvent). That
// keeps every rule testable with explicit time.
//
// Events: { type: 'message', text, payload, seq } · { type: 'presence', state, left }
//         { type: 'acked', hw } · { type: 'reset', oldSid, deliveredHw }
//         { type: 'connected', gen, node } · { type: 'rawpeer' }

import { dataHeaderLength, encodeBatch, encodeData, encodeFrame, isBatchable, varintLength } from './frame.js';

/** Timings and batching (PROTOCOL.md §11), in milliseconds. */
export const DEFAULT_PROTOCOL_CONFIG = Object.freeze({
  ackTimeout: 2000,
  presenceQuiet: 1000,
  presenceGrace: 30000,
  gapSyncInterval: 100,
  ackDelay: 20,
  ackEvery: 32,
});

/** The window used until a node's welcome states one. */
export const DEFAULT_WINDOW = Object.freeze({ msgs: 1024, bytes: 1048576 });

/** Why offer() did not take a message. */
export const WINDOW_FULL = 'window_full';
export const TOO_LARGE = 'too_large';

// What is known of the peer's session on the current connection.
const UNKNOWN = 'unknown';
const ONLINE_V1 = 'v1';
const ONLINE_RAW = 'raw';
const AWAY = 'away';

export class Protocol {
  /**
   * @param {string} sid this client's stream id (16 hex digits, not zero)
   * @param {Partial<typeof DEFAULT_PROTOCOL_CONFIG>} [config]
   */
  constructor(sid, config = {}) {
    this.cfg = { ...DEFAULT_PROTOCOL_CONFIG, ...config };
    this.sid = sid;
    this.gen = 0;
    this.connected = false;
    this.connections = 0;
    this.window = DEFAULT_WINDOW;
    this.maxFrame = null;
    /** The most frames a BATCH may hold (welcome.max_batch), or null. */
    this.maxBatch = null;

    // Sender (§3, §7). The outbox holds consecutive seqs with their encoded DATA frames.
    this.outbox = [];
    this.nextSeq = 1;
    this.sentUpto = 0;
    this.acked = 0;
    this.floor = 0;
    this.inflight = []; // [seq, payload length] above floor
    this.inflightBytes = 0;
    this.progressAt = null;

    // Receiver (§4).
    this.rxSid = null;
    this.rxHw = 0;
    this.deliveredInStream = 0;
    this.consumedHw = 0;
    this.ackSentHw = 0;
    this.untaken = []; // [seq, payload length] handed over, not yet taken
    this.unackedBytes = 0;
    this.ackAt = null;
    this.ackForced = false;
    this.gapSync = null; // [at, hw]
    this.duplicatesDropped = 0;
    this.gapsSeen = 0;

    // The peer's session on this connection (§5).
    this.peer = { state: UNKNOWN };
    this.syncSent = false;
    this.peerSyncWait = null;
    this.peerSynced = false;

    // Presence (§8).
    this.presence = null;
    this.awaySince = null;
    this.everOnline = false;
    this.peerLeft = false;

    this.frames = []; // Uint8Array, or the seq of an outbox entry (taken when written)
    this.events = [];
  }

  /** Whether the peer is a raw client on the current connection. */
  get peerIsRaw() {
    return this.connected && this.peer.state === ONLINE_RAW;
  }

  /** Whether a new numbered message of `length` payload bytes fits the window now. */
  windowOpen(length) {
    return (
      this.nextSeq - this.floor <= this.window.msgs &&
      (this.inflight.length === 0 || this.inflightBytes + length <= this.window.bytes)
    );
  }

  /**
   * Called before a batch of frames is written: when frames wait and messages taken by the
   * application are not acknowledged yet, their ACK joins the batch instead of waiting for its
   * timer (PROTOCOL.md §4).
   */
  piggybackAck() {
    if (this.frames.length > 0 && this.consumedHw > this.ackSentHw) this.sendAck();
  }

  /** The next encoded frame to write on the current connection, or undefined. */
  pollFrame() {
    while (this.frames.length > 0) {
      const queued = this.frames.shift();
      if (typeof queued !== 'number') return queued;
      const entry = this.entry(queued);
      if (entry) return entry.frame;
    }
    return undefined;
  }

  /**
   * The next message to write, or undefined: the next frame, or DATA and ACK frames that follow
   * each other in one BATCH of at most the node's max_frame and at most its max_batch frames
   * (PROTOCOL.md §2.6). A node relays one
   * message where it would have relayed each frame; a frame alone goes as it is.
   */
  pollMessage() {
    const first = this.pollFrame();
    if (first === undefined || this.maxFrame === null || !isBatchable(first[0])) return first;
    const group = [first];
    let size = 1 + varintLength(first.length) + first.length;
    for (;;) {
      const next = this.#nextBatchable();
      if (next === undefined) break;
      const grown = size + varintLength(next.length) + next.length;
      if (grown > this.maxFrame || (this.maxBatch !== null && group.length >= this.maxBatch)) break;
      group.push(this.pollFrame());
      size = grown;
    }
    return group.length === 1 ? first : encodeBatch(group);
  }

  /** The next frame to write if it may join a BATCH; drops acknowledged outbox entries on the way. */
  #nextBatchable() {
    while (this.frames.length > 0) {
      const queued = this.frames[0];
      const frame = typeof queued === 'number' ? this.entry(queued)?.frame : queued;
      if (frame === undefined) {
        this.frames.shift();
        continue;
      }
      return isBatchable(frame[0]) ? frame : undefined;
    }
    return undefined;
  }

  /** The next event for the application, or undefined. */
  pollEvent() {
    return this.events.shift();
  }

  entry(seq) {
    if (this.outbox.length === 0) return undefined;
    const entry = this.outbox[seq - this.outbox[0].seq];
    return entry && entry.seq === seq ? entry : undefined;
  }

  /** A connection of generation `gen` is open; its welcome follows through onFrame. */
  onConnected(gen, now) {
    if (this.connected) this.dropConnection(now);
    this.connected = true;
    this.gen = gen;
    this.connections += 1;
  }

  /** The current connection is gone. */
  onDisconnected(now) {
    if (this.connected) this.dropConnection(now);
  }

  /** This client leaves for good: queues bye (§2.3). */
  bye() {
    if (this.connected) this.frames.push(encodeFrame({ kind: 'peer', t: 'bye' }));
  }

  /**
   * Offers a message. Returns its seq (0 when sent unnumbered to a raw peer), or WINDOW_FULL,
   * or TOO_LARGE (then `tooLarge` holds { length, max }).
   */
  offer(text, payload, now) {
    const raw = this.peerIsRaw;
    const seq = raw ? 0 : this.nextSeq;
    const length = dataHeaderLength(seq) + payload.length;
    if (this.maxFrame !== null && length > this.maxFrame) {
      this.tooLarge = { length, max: this.maxFrame };
      return TOO_LARGE;
    }
    if (raw) {
      this.frames.push(encodeData(0, text, payload));
      return 0;
    }
    if (!this.windowOpen(payload.length)) return WINDOW_FULL;
    this.nextSeq += 1;
    if (this.outbox.length === 0) this.progressAt = now;
    this.inflight.push([seq, payload.length]);
    this.inflightBytes += payload.length;
    this.outbox.push({ seq, text, frame: encodeData(seq, text, payload) });
    if (this.flowing() && this.sentUpto === seq - 1) {
      this.frames.push(seq);
      this.sentUpto = seq;
    }
    return seq;
  }

  /**
   * The application took message `seq` of stream `sid`: it may now be acknowledged. Returns
   * whether a frame was queued or a timer set.
   */
  take(sid, seq, now) {
    if (this.rxSid !== sid || seq <= this.consumedHw || seq > this.rxHw) return false;
    this.consumedHw = seq;
    while (this.untaken.length > 0 && this.untaken[0][0] <= seq) {
      this.unackedBytes += this.untaken.shift()[1];
    }
    let changed = false;
    if (this.ackAt === null) {
      this.ackAt = now + this.cfg.ackDelay;
      changed = true;
    }
    const unacked = this.consumedHw - this.ackSentHw;
    if (
      unacked >= this.cfg.ackEvery ||
      unacked >= Math.max(1, Math.floor(this.window.msgs / 2)) ||
      this.unackedBytes >= this.window.bytes / 2
    ) {
      this.sendAck();
      changed = true;
    }
    return changed;
  }

  /** A decoded frame arrived on the current connection. */
  onFrame(frame, now) {
    if (!this.connected) return;
    switch (frame.kind) {
      case 'data':
        // Positions beyond 2^53 - 1 decode as bigints; no stream gets there.
        if (typeof frame.seq !== 'number') return;
        if (frame.seq === 0) {
          this.events.push({ type: 'message', text: frame.text, payload: frame.payload, seq: 0 });
        } else {
          this.onData(frame.seq, frame.text, frame.payload, now);
        }
        return;
      case 'ack':
        if (typeof frame.hw === 'number') this.onAck(frame.sid, frame.hw, now);
        return;
      case 'peer':
        if (frame.t === 'sync') this.onSync(frame, now);
        else if (frame.t === 'bye') this.onBye();
        return; // unknown types are ignored (§2)
      case 'server':
        if (frame.t === 'welcome') {
          this.window = { msgs: frame.window.msgs, bytes: frame.window.bytes };
          this.maxFrame = frame.max_frame;
          this.maxBatch = frame.max_batch ?? null;
          this.events.push({ type: 'connected', gen: frame.gen, node: frame.node });
        } else if (frame.t === 'peer') {
          this.onPeerInfo(frame, now);
        } else if (frame.t === 'token') {
          this.events.push({ type: 'token', ok: frame.ok, expires: frame.exp ?? null, reason: frame.reason ?? '' });
        }
        return;
      default:
        return;
    }
  }

  /** When onTick next has something to do (milliseconds), or null. */
  pollTimeout() {
    let min = null;
    for (const t of [
      this.ackDeadline(),
      this.retransmitDeadline(),
      this.peerSyncDeadline(),
      this.presenceDeadline(),
    ]) {
      if (t !== null && (min === null || t < min)) min = t;
    }
    return min;
  }

  /** Runs the timers due at `now`: delayed ACKs, retransmission, presence. */
  onTick(now) {
    const ack = this.ackDeadline();
    if (ack !== null && ack <= now) this.sendAck();
    const retransmit = this.retransmitDeadline();
    if (retransmit !== null && retransmit <= now) {
      this.sendSync(true);
      this.progressAt = now;
    }
    const peerSync = this.peerSyncDeadline();
    if (peerSync !== null && peerSync <= now) {
      this.sendSync(true);
      this.peerSyncWait = now;
    }
    const since = this.awaySince;
    if (since !== null && !this.peerLeft) {
      if (
        now >= since + this.cfg.presenceGrace ||
        (!this.everOnline && now >= since + this.cfg.presenceQuiet)
      ) {
        this.setPresence('offline', false);
      } else if (now >= since + this.cfg.presenceQuiet) {
        this.setPresence('reconnecting', false);
      }
    }
  }

  ackDeadline() {
    if (!this.connected || this.rxSid === null || this.consumedHw === 0) return null;
    if (this.consumedHw === this.ackSentHw && !this.ackForced) return null;
    return this.ackAt;
  }

  peerSyncDeadline() {
    if (!this.connected || this.peerSynced || this.peer.state !== ONLINE_V1) return null;
    return this.peerSyncWait === null ? null : this.peerSyncWait + this.cfg.ackTimeout / 4;
  }

  retransmitDeadline() {
    if (!this.connected || this.outbox.length === 0 || this.peer.state !== ONLINE_V1) return null;
    return this.progressAt === null ? null : this.progressAt + this.cfg.ackTimeout;
  }

  presenceDeadline() {
    if (this.awaySince === null || this.peerLeft) return null;
    if (this.presence === 'offline') return null;
    if (this.presence === 'reconnecting') return this.awaySince + this.cfg.presenceGrace;
    return this.awaySince + this.cfg.presenceQuiet;
  }

  /** Whether numbered DATA may be written now (§3). */
  flowing() {
    return this.connected && this.peer.state === ONLINE_V1 && this.syncSent && this.peerSynced;
  }

  dropConnection(now) {
    this.connected = false;
    this.frames = [];
    this.peerGone({ state: UNKNOWN }, now);
  }

  /** The peer's session is no longer known: its sync state goes, its away timer starts. */
  peerGone(view, now) {
    this.peer = view;
    this.syncSent = false;
    this.peerSynced = false;
    this.sentUpto = 0;
    if (this.awaySince === null && !this.peerLeft) this.awaySince = now;
  }

  /** A new session of the peer: nothing was synced with it yet. */
  newPeerSession(view) {
    this.peer = view;
    this.syncSent = false;
    this.peerSynced = false;
    this.sentUpto = 0;
    this.awaySince = null;
    this.peerLeft = false;
    this.everOnline = true;
    this.setPresence('online', false);
  }

  setPresence(state, left) {
    if (this.presence === 'offline' && state !== 'online') return;
    if (this.presence === state) return;
    this.presence = state;
    this.events.push({ type: 'presence', state, left });
  }

  onPeerInfo(info, now) {
    if (info.state === 'online' && !info.raw) {
      if (typeof info.sid !== 'string' || typeof info.gen !== 'number') return; // v1 needs both
      if (this.peer.state === ONLINE_V1 && this.peer.sid === info.sid && this.peer.gen >= info.gen) {
        return;
      }
      this.newPeerSession({ state: ONLINE_V1, sid: info.sid, gen: info.gen });
      this.sendSync(false);
      this.peerSyncWait = now;
    } else if (info.state === 'online') {
      if (this.peer.state === ONLINE_RAW) return;
      this.newPeerSession({ state: ONLINE_RAW });
      this.events.push({ type: 'rawpeer' });
      // A raw peer is never acknowledged: what waits is sent once, unnumbered.
      for (const entry of this.outbox) {
        this.frames.push(encodeData(0, entry.text, entry.frame.subarray(dataHeaderLength(entry.seq))));
      }
      this.outbox = [];
      this.inflight = [];
      this.inflightBytes = 0;
      this.floor = this.nextSeq - 1;
      this.progressAt = null;
    } else if (this.peer.state !== AWAY) {
      this.peerGone({ state: AWAY }, now);
    }
  }

  onBye() {
    this.peerLeft = true;
    this.awaySince = null;
    this.setPresence('offline', true);
  }

  onSync(sync, now) {
    const p = this.peer;
    if (p.state === ONLINE_V1 && p.sid === sync.sid && p.gen > sync.gen) return; // an older session
    if (p.state !== ONLINE_V1 || p.sid !== sync.sid || p.gen !== sync.gen) {
      this.newPeerSession({ state: ONLINE_V1, sid: sync.sid, gen: sync.gen });
    } else {
      this.awaySince = null;
      this.peerLeft = false;
      this.setPresence('online', false);
    }

    // Receiver: adopt or check the stream (§4).
    const sameStream = this.rxSid === sync.sid;
    const consistent = sync.tx.base <= this.rxHw + 1 && Math.max(0, sync.tx.next - 1) >= this.rxHw;
    if (!sameStream || !consistent) {
      if (this.rxSid !== null && this.deliveredInStream > 0) {
        this.events.push({ type: 'reset', oldSid: this.rxSid, deliveredHw: this.rxHw });
      }
      this.rxSid = sync.sid;
      this.rxHw = Math.max(0, sync.tx.base - 1);
      this.deliveredInStream = 0;
      this.consumedHw = this.rxHw;
      this.ackSentHw = this.rxHw;
      this.untaken = [];
      this.unackedBytes = 0;
      this.ackAt = null;
      this.ackForced = false;
    }
    this.peerSynced = true;
    this.gapSync = null;

    // Own sync before any DATA to this session, and as the asked-for answer (§5).
    if (!this.syncSent || sync.reply) this.sendSync(false);

    // Sender: resend, in order, what the peer's library has not received (§3). Only an ACK
    // releases a message.
    const received = sync.rx.sid === this.sid ? sync.rx.hw : 0;
    for (const entry of this.outbox) {
      if (entry.seq > received) this.frames.push(entry.seq);
    }
    this.sentUpto = this.nextSeq - 1;
    this.progressAt = this.outbox.length === 0 ? null : now;

    // Tell this connection's path what was taken, so its window count is current.
    if (this.consumedHw > 0) {
      this.ackForced = true;
      this.sendAck();
    }
  }

  onData(seq, text, payload, now) {
    if (!this.peerSynced) return; // before the peer's sync
    if (seq <= this.rxHw) {
      this.duplicatesDropped += 1;
      this.ackForced = true;
      if (this.ackAt === null) this.ackAt = now + this.cfg.ackDelay;
    } else if (seq === this.rxHw + 1) {
      this.rxHw = seq;
      this.deliveredInStream += 1;
      this.untaken.push([seq, payload.length]);
      // The stream it belongs to, as of its arrival: a later frame of the same burst may
      // start a new stream (a restarted peer's sync).
      this.events.push({ type: 'message', text, payload, seq, sid: this.rxSid });
    } else {
      this.gapsSeen += 1;
      const g = this.gapSync;
      if (g === null || g[1] !== this.rxHw || now >= g[0] + this.cfg.gapSyncInterval) {
        this.sendSync(false);
        this.gapSync = [now, this.rxHw];
      }
    }
  }

  onAck(sid, hw, now) {
    if (sid !== this.sid || hw <= this.acked) return;
    if (hw >= this.nextSeq) return; // above what was sent
    this.acked = hw;
    let n = 0;
    while (n < this.outbox.length && this.outbox[n].seq <= hw) n += 1;
    this.outbox.splice(0, n);
    this.raiseFloor(hw);
    this.progressAt = this.outbox.length === 0 ? null : now;
    this.events.push({ type: 'acked', hw });
  }

  raiseFloor(floor) {
    if (floor <= this.floor) return;
    this.floor = floor;
    let n = 0;
    while (n < this.inflight.length && this.inflight[n][0] <= floor) {
      this.inflightBytes -= this.inflight[n][1];
      n += 1;
    }
    this.inflight.splice(0, n);
  }

  sendSync(reply) {
    const base = this.outbox.length > 0 ? this.outbox[0].seq : this.nextSeq;
    this.frames.push(
      encodeFrame({
        kind: 'peer',
        t: 'sync',
        sid: this.sid,
        gen: this.gen,
        tx: { base, next: this.nextSeq },
        rx: { sid: this.rxSid, hw: this.rxHw },
        reply,
      }),
    );
    this.syncSent = true;
    this.raiseFloor(base - 1);
  }

  sendAck() {
    this.ackAt = null;
    this.ackForced = false;
    if (this.rxSid === null || !this.connected || this.consumedHw === 0) return;
    this.frames.push(encodeFrame({ kind: 'ack', sid: this.rxSid, hw: this.consumedHw }));
    this.ackSentHw = this.consumedHw;
    this.unackedBytes = 0;
  }
}
