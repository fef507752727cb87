// wspair-client: the wspair.v1 client for browsers and Node (PROTOCOL.md), the JavaScript port
// of the Rust library in client/.
//
// This file is the I/O around the sans-IO state machine (protocol.js): it opens WebSockets
// (the platform's, or the `ws` package in Node), reconnects with backoff over a list of URLs,
// moves to another node on `goaway` before leaving the old one, runs the state machine's
// timers, and hands events to the application through EventTarget and async iteration. A
// message counts as taken, and so may be acknowledged, when it is handed over: dispatched to a
// `message` listener when no iterator is running (with none, messages wait), yielded by the
// iterator otherwise; an application that stops iterating stops acknowledging, and so its
// peer (PROTOCOL.md §4, §7).

import { decodeFrame, decodeMessage, encodeFrame, isKeyHex, randomKey, sidOfKey } from './frame.js';
import { Protocol, TOO_LARGE, WINDOW_FULL } from './protocol.js';

export {
  decodeFrame,
  decodeMessage,
  encodeFrame,
  decodeVarint,
  encodeVarint,
  FrameError,
  sidOfKey,
  randomKey,
  sha256,
} from './frame.js';
export { Protocol, DEFAULT_PROTOCOL_CONFIG } from './protocol.js';

/** The subprotocol this library speaks. */
export const SUBPROTOCOL = 'wspair.v1';

/** The close code of a session displaced by a newer one. */
const CODE_DISPLACED = 4001;
/** The close code of a session an operator closed (the node's admin API): the client stops. */
const CODE_OPERATOR = 4004;
/** How long a node has to send `welcome` after the upgrade. */
const WELCOME_TIMEOUT = 10000;
/** How long a closing client waits for the node's close reply. */
const CLOSE_REPLY_WAIT = 1000;

const DEFAULTS = {
  raw: false,
  rawFallback: false,
  backoffMin: 100,
  backoffMax: 5000,
  presenceQuiet: 1000,
  presenceGrace: 30000,
  ackTimeout: 2000,
  closeTimeout: 5000,
  connectTimeout: 0,
};

const textDecoder = new TextDecoder();
const textEncoder = new TextEncoder();
const now = () => performance.now();

/**
 * What went wrong. `code` is one of: `refused` (with `status` and `reason`), `no_subprotocol`,
 * `network`, `protocol`, `too_large` (with `length` and `max`), `closed`, `close_timed_out`
 * (with `unacknowledged`), `config`, `timeout`.
 */
export class WspairError extends Error {
  constructor(code, message, fields = {}) {
    super(message);
    this.name = 'WspairError';
    this.code = code;
    Object.assign(this, fields);
  }
}

/**
 * An event of a client. Its fields depend on its type:
 * `message` (data, text, seq) · `presence` (state, left) · `acked` (hw) ·
 * `reset` (oldSid, deliveredHw) · `connected` (gen, node, raw) · `disconnected` (code, reason) ·
 * `refused` (status, reason) · `rawpeer` · `close` (code, reason) ·
 * `token` (ok, expires, reason: the node's answer to setToken()).
 */
export class WspairEvent extends Event {
  constructor(type, fields = {}) {
    super(type);
    Object.assign(this, fields);
  }
}

/**
 * Connects, and resolves with the client once its first connection is welcomed.
 *
 * Network errors and 503 are retried with backoff (bounded by `connectTimeout`); any other
 * refusal rejects with a WspairError of code `refused` carrying the HTTP `status` and `reason`
 * (in Node with the `ws` package; a browser does not show a refusal's status, so there it is
 * a `network` error and retried).
 *
 * @param {import('../index.d.ts').ConnectOptions} options
 * @returns {Promise<WspairClient>}
 */
export function connect(options) {
  return WspairClient.connect(options);
}

/** The WebSocket constructor: the option, the platform's, or the `ws` package's. */
async function webSocketClass(option) {
  if (option) return option;
  if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  // A variable specifier keeps bundlers for the browser from trying to include `ws`.
  const name = 'ws';
  try {
    const module = await import(name);
    return module.WebSocket ?? module.default;
  } catch (e) {
    throw new WspairError('config', `no WebSocket here: install the ws package (${e.message})`);
  }
}

/** Percent-encodes a query value: everything but RFC 3986 unreserved characters. */
function encodeQueryValue(value) {
  return encodeURIComponent(value).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** The URL of a connection (PROTOCOL.md §1); a raw one has no key and gen. */
export function connectionUrl(base, channelId, role, v1, key, gen, token = null) {
  const sep = base.includes('?') ? '&' : '?';
  let url = `${base}${sep}type=${role}&channelId=${encodeQueryValue(channelId)}`;
  if (v1) url += `&key=${key}&gen=${gen}`;
  if (token !== null && token !== undefined) url += `&token=${encodeQueryValue(token)}`;
  return url;
}

/** Exponential backoff with full jitter: the n-th delay is uniform in 0..min(max, min·2^n). */
class Backoff {
  constructor(min, max) {
    this.min = min;
    this.max = Math.max(min, max);
    this.attempts = 0;
  }

  nextDelay() {
    const ceiling = Math.min(this.max, this.min * 2 ** Math.min(this.attempts, 20));
    this.attempts += 1;
    return Math.random() * ceiling;
  }

  reset() {
    this.attempts = 0;
  }
}

/**
 * One WebSocket of a client. It reports once: ready (welcomed, or open for a raw one) or
 * failed; after ready, its messages and its close. A link the client gave up is `dead` and
 * reports nothing more (its handlers stay attached: the `ws` package throws on an error event
 * nobody listens to).
 */
class Link {
  constructor(WS, url, { v1, allowRaw, gen, sid }, handlers) {
    this.v1 = v1;
    this.gen = gen;
    this.state = 'opening';
    this.handlers = handlers;
    this.lastError = null;
    this.welcomeTimer = null;
    let ws;
    try {
      ws = v1 ? new WS(url, [SUBPROTOCOL]) : new WS(url);
    } catch (e) {
      queueMicrotask(() => this.fail(new WspairError('config', `cannot open ${url}: ${e.message}`)));
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    if (typeof ws.on === 'function') {
      // The `ws` package shows a refusal's status and body; browsers do not.
      ws.on('unexpected-response', (request, response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk) => {
          body += chunk;
        });
        const done = () => {
          const status = response.statusCode;
          const reason = body.trim() || response.statusMessage || '';
          this.fail(new WspairError('refused', `refused with HTTP ${status}: ${reason}`, { status, reason }));
        };
        response.on('end', done);
        response.on('error', done);
      });
    }
    ws.onopen = () => {
      if (this.state !== 'opening') return;
      if (!this.v1) {
        this.ready(null);
      } else if (ws.protocol !== SUBPROTOCOL) {
        // A browser connects even when the server did not echo the subprotocol: the node
        // took it as a raw client, which is what raw fallback wants.
        if (allowRaw) {
          this.v1 = false;
          this.ready(null);
        } else {
          this.fail(new WspairError('no_subprotocol', 'the server did not accept the wspair.v1 subprotocol'));
        }
      } else {
        this.welcomeTimer = setTimeout(
          () => this.fail(new WspairError('network', 'no welcome in time')),
          WELCOME_TIMEOUT,
        );
      }
    };
    ws.onmessage = (event) => {
      if (this.state === 'open') {
        this.handlers.message(this, event.data);
      } else if (this.state === 'opening' && this.v1) {
        this.onFirstFrame(event.data, sid);
      }
    };
    ws.onerror = (event) => {
      this.lastError = event?.message ?? event?.error?.message ?? 'WebSocket error';
    };
    ws.onclose = (event) => {
      if (this.state === 'opening') {
        const what = this.lastError ?? `closed before welcome: ${event.code} ${event.reason}`;
        this.fail(
          /no subprotocol/i.test(what)
            ? new WspairError('no_subprotocol', 'the server did not accept the wspair.v1 subprotocol')
            : new WspairError('network', what),
        );
      } else if (this.state === 'open') {
        this.state = 'dead';
        this.handlers.closed(this, event.code, event.reason);
      } else if (this.state === 'closing') {
        this.closeReply?.();
      }
    };
  }

  /** The first frame of a v1 connection must be the node's `welcome` for this client's sid. */
  onFirstFrame(data, sid) {
    let frame;
    try {
      if (typeof data === 'string') throw new Error('a text message on a v1 connection');
      frame = decodeFrame(data);
    } catch (e) {
      this.fail(new WspairError('protocol', e.message));
      return;
    }
    if (frame.kind !== 'server' || frame.t !== 'welcome') {
      this.fail(new WspairError('protocol', `expected welcome first, got ${frame.kind} ${frame.t ?? ''}`));
    } else if (frame.sid && frame.sid !== sid) {
      this.fail(new WspairError('protocol', `the node derived sid ${frame.sid}, not ${sid}`));
    } else {
      this.ready(frame);
    }
  }

  ready(welcome) {
    clearTimeout(this.welcomeTimer);
    this.state = 'open';
    this.handlers.ready(this, welcome);
  }

  fail(error) {
    if (this.state !== 'opening') return;
    clearTimeout(this.welcomeTimer);
    this.kill();
    this.handlers.failed(this, error);
  }

  /** Writes one message; a socket that is not open drops it (a resend repairs that). */
  send(data) {
    try {
      this.ws.send(data);
    } catch {
      // Only a socket still connecting throws, and no frame is written before it is open.
    }
  }

  /** Drops the socket at once: no close frame when the platform allows it. */
  kill() {
    this.state = 'dead';
    clearTimeout(this.welcomeTimer);
    const ws = this.ws;
    if (!ws) return;
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close();
    } catch {
      // Already closed.
    }
  }

  /** Closes with 1000 and waits for the node's reply, at most CLOSE_REPLY_WAIT. */
  closeGracefully() {
    this.state = 'closing';
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.kill();
        resolve();
      }, CLOSE_REPLY_WAIT);
      this.closeReply = () => {
        clearTimeout(timer);
        this.state = 'dead';
        resolve();
      };
      try {
        this.ws.close(1000);
      } catch {
        this.closeReply();
      }
    });
  }
}

/**
 * A wspair.v1 client: one stream to the peer, kept across reconnects. Create it with
 * `connect()`. Events: `message`, `presence`, `acked`, `reset`, `connected`, `disconnected`,
 * `refused`, `rawpeer`, `close`; listen with addEventListener, or iterate with `for await`.
 */
export class WspairClient extends EventTarget {
  #cfg;
  #WS;
  #key;
  #sid;
  #proto;
  #link = null;
  #attempt = null;
  #gen = 0;
  #urlIndex = -1;
  #backoff;
  #retryTimer = null;
  #goaway = false;
  #raw = false;
  #reconnects = 0;
  /** Sends waiting for room in the window (or, raw, for a connection), in order. */
  #blocked = [];
  /** Numbered sends waiting for the peer's ACK, in seq order. */
  #unacked = [];
  #closing = null;
  #stopped = false;
  #firstConnect = null;
  #reconnectWaiters = [];
  #timer = null;
  #timerAt = null;
  #pumpQueued = false;
  /** Events not yet handed over: { event, stream }. */
  #queue = [];
  /** The `message` listeners, with whether each is `once`: messages wait while there are none. */
  #messageListeners = new Map();
  #deliverTimer = null;
  #iterating = false;
  #waiter = null;

  /** Use `connect()`; the constructor checks the options and opens nothing. */
  constructor(options, WebSocketClass) {
    super();
    const cfg = { ...DEFAULTS, ...options };
    cfg.urls = options.urls ?? (options.url ? [options.url] : []);
    if (cfg.urls.length === 0) throw new WspairError('config', 'no URL (give url or urls)');
    if (cfg.role !== 'app' && cfg.role !== 'web') {
      throw new WspairError('config', `role must be 'app' or 'web', got ${cfg.role}`);
    }
    if (typeof cfg.channelId !== 'string') throw new WspairError('config', 'channelId must be a string');
    if (cfg.key !== undefined && !isKeyHex(cfg.key)) {
      throw new WspairError('config', 'key must be 32 lowercase hex digits');
    }
    this.#cfg = cfg;
    this.#WS = WebSocketClass;
    this.#key = cfg.key ?? randomKey();
    this.#sid = sidOfKey(this.#key);
    this.#backoff = new Backoff(cfg.backoffMin, cfg.backoffMax);
    this.#proto = new Protocol(this.#sid, {
      ackTimeout: cfg.ackTimeout,
      presenceQuiet: cfg.presenceQuiet,
      presenceGrace: cfg.presenceGrace,
    });
  }

  /** As the module's `connect()`. */
  static async connect(options) {
    const WS = await webSocketClass(options?.WebSocket);
    const client = new WspairClient(options, WS);
    await client.#open();
    return client;
  }

  /**
   * As EventTarget's. Messages wait in the client, unacknowledged, until there is a `message`
   * listener (or an async iterator runs): a message nobody received is never acknowledged.
   */
  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
    if (type !== 'message' || !listener) return;
    const once = typeof options === 'object' && options !== null && Boolean(options.once);
    if (!this.#messageListeners.has(listener)) this.#messageListeners.set(listener, once);
    const signal = typeof options === 'object' && options !== null ? options.signal : undefined;
    signal?.addEventListener('abort', () => this.#messageListeners.delete(listener), { once: true });
    this.#scheduleDelivery();
  }

  /** As EventTarget's. */
  removeEventListener(type, listener, options) {
    super.removeEventListener(type, listener, options);
    if (type === 'message') this.#messageListeners.delete(listener);
  }

  /** This client's stream id (16 hex digits), derived from its key. */
  get sid() {
    return this.#sid;
  }

  /** The peer's presence as last reported: `online`, `reconnecting`, `offline`, or null. */
  get presence() {
    return this.#proto.presence;
  }

  /** Whether a connection is up now. */
  get connected() {
    return this.#link !== null;
  }

  /** Whether the client has stopped (closed, or displaced by another client). */
  get closed() {
    return this.#stopped;
  }

  /** Counters and positions, for monitoring and tests. */
  stats() {
    const p = this.#proto;
    return {
      sid: this.#sid,
      gen: this.#link?.gen ?? this.#gen,
      raw: this.#raw,
      outboxLength: p.outbox.length,
      blocked: this.#blocked.length,
      nextSeq: p.nextSeq,
      acked: p.acked,
      rxSid: p.rxSid,
      rxHw: p.rxHw,
      reconnects: this.#reconnects,
      duplicatesDropped: p.duplicatesDropped,
      gapsSeen: p.gapsSeen,
    };
  }

  /**
   * Sends a message: a string as text, an ArrayBuffer or typed array as binary. Resolves with
   * its seq once the peer's application took it (its ACK came); with 0 when the peer is raw
   * (sent unnumbered, at most once, no ACK will come). Waits while the window is full. Rejects
   * with `too_large` for a message above the node's max frame, and with `closed` or
   * `close_timed_out` when the client stops first.
   *
   * @param {string | ArrayBuffer | ArrayBufferView} data
   * @returns {Promise<number>}
   */
  send(data) {
    if (this.#stopped) return Promise.reject(new WspairError('closed', 'the client is closed'));
    let payload;
    const text = typeof data === 'string';
    if (text) payload = textEncoder.encode(data);
    else if (data instanceof ArrayBuffer) payload = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) payload = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else return Promise.reject(new TypeError('send takes a string, an ArrayBuffer or a typed array'));
    return new Promise((resolve, reject) => {
      const pending = { data, text, payload, resolve, reject };
      if (this.#blocked.length > 0 || !this.#offer(pending)) this.#blocked.push(pending);
      this.#schedulePump();
    });
  }

  /**
   * Drops the current socket abruptly and reconnects to the next URL; resolves once a new
   * connection is welcomed (or the client stopped).
   */
  reconnect() {
    if (this.#stopped) return Promise.resolve();
    const done = new Promise((resolve) => this.#reconnectWaiters.push(resolve));
    const link = this.#link;
    if (link) {
      this.#link = null;
      link.kill();
      this.#disconnected(null, 'reconnect requested');
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
      if (!this.#attempt && !this.#stopped) this.#startAttempt();
    }
    return done;
  }

  /**
   * Replaces the client token (the node's `auth.*`): every later connection presents it, and
   * the open v1 connection hands it to its session (PROTOCOL.md §2.5), which then closes at the
   * new token's expiry rather than the old one's. The node answers with a `token` event
   * (`ok`, `expires` in seconds since the Unix epoch or null, `reason` when refused); while no
   * v1 connection is open there is no answer, and the next connection's upgrade checks it.
   *
   * @param {string} token
   */
  setToken(token) {
    if (typeof token !== 'string') throw new TypeError('setToken takes a string');
    this.#cfg.token = token;
    if (this.#link !== null && !this.#raw) this.#link.send(encodeFrame({ kind: 'node', t: 'token', token }));
  }

  /**
   * Leaves for good: waits up to `closeTimeout` for every message to be acknowledged, sends
   * `bye` (the peer reports `offline` at once) and closes with 1000. Rejects with
   * `close_timed_out` when messages were still unacknowledged. Events not yet handed over are
   * dropped, and async iteration ends.
   *
   * @returns {Promise<void>}
   */
  close() {
    if (this.#closing) return this.#closing.promise;
    if (this.#stopped) return Promise.resolve();
    let resolve;
    let reject;
    const promise = new Promise((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.#closing = { deadline: now() + this.#cfg.closeTimeout, resolve, reject, promise, done: false };
    this.#schedulePump();
    return promise;
  }

  /**
   * Async iteration over the client's events, in order, until it stops. One iterator at a
   * time; while it runs, a message is acknowledged when the iterator yields it, and listeners
   * get each event at that moment too.
   *
   * @returns {AsyncIterator<WspairEvent>}
   */
  [Symbol.asyncIterator]() {
    if (this.#iterating) throw new WspairError('config', 'one async iterator at a time');
    this.#iterating = true;
    const finish = () => {
      this.#iterating = false;
      this.#waiter = null;
      this.#scheduleDelivery();
      return { value: undefined, done: true };
    };
    return {
      next: () => {
        if (!this.#iterating) return Promise.resolve({ value: undefined, done: true });
        if (this.#queue.length > 0) {
          return Promise.resolve({ value: this.#hand(this.#queue.shift()), done: false });
        }
        if (this.#stopped) return Promise.resolve(finish());
        return new Promise((resolve) => {
          this.#waiter = resolve;
        });
      },
      return: () => {
        const waiter = this.#waiter;
        const result = finish();
        waiter?.(result);
        return Promise.resolve(result);
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  // Connections.

  #open() {
    return new Promise((resolve, reject) => {
      let timer = null;
      this.#firstConnect = {
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      if (this.#cfg.connectTimeout > 0) {
        timer = setTimeout(() => {
          const first = this.#firstConnect;
          this.#firstConnect = null;
          this.#stop(null, false);
          first?.reject(new WspairError('timeout', `no connection within ${this.#cfg.connectTimeout} ms`));
        }, this.#cfg.connectTimeout);
      }
      this.#startAttempt();
    });
  }

  #startAttempt(v1 = !this.#cfg.raw) {
    if (v1) this.#gen += 1;
    this.#urlIndex += 1;
    const base = this.#cfg.urls[this.#urlIndex % this.#cfg.urls.length];
    const url = connectionUrl(base, this.#cfg.channelId, this.#cfg.role, v1, this.#key, this.#gen, this.#cfg.token);
    this.#attempt = new Link(
      this.#WS,
      url,
      { v1, allowRaw: this.#cfg.rawFallback, gen: this.#gen, sid: this.#sid },
      {
        ready: (link, welcome) => this.#adopt(link, welcome),
        failed: (link, error) => this.#attemptFailed(link, error),
        message: (link, data) => this.#onMessage(link, data),
        closed: (link, code, reason) => {
          if (link !== this.#link) return;
          this.#link = null;
          this.#disconnected(code, reason);
        },
      },
    );
  }

  /** A welcomed connection becomes the current one; an old one (after goaway) is dropped. */
  #adopt(link, welcome) {
    if (link !== this.#attempt || this.#stopped) {
      link.kill();
      return;
    }
    const t = now();
    this.#attempt = null;
    this.#link?.kill();
    if (this.#firstConnect === null) this.#reconnects += 1;
    this.#link = link;
    this.#goaway = false;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = null;
    this.#backoff.reset();
    if (welcome) {
      this.#raw = false;
      this.#proto.onConnected(link.gen, t);
      this.#proto.onFrame(welcome, t);
    } else {
      this.#raw = true;
      this.#proto.onDisconnected(t);
      this.#collect();
      this.#enqueue(new WspairEvent('connected', { gen: link.gen, node: '', raw: true }));
    }
    this.#collect();
    const first = this.#firstConnect;
    this.#firstConnect = null;
    first?.resolve();
    for (const waiter of this.#reconnectWaiters.splice(0)) waiter();
    this.#schedulePump();
  }

  #attemptFailed(link, error) {
    if (link !== this.#attempt) return;
    this.#attempt = null;
    if (this.#stopped) return;
    if (error.code === 'no_subprotocol' && this.#cfg.rawFallback && link.v1) {
      this.#startAttempt(false);
      return;
    }
    if (this.#firstConnect) {
      const retryable = error.code === 'network' || (error.code === 'refused' && error.status === 503);
      if (!retryable) {
        const first = this.#firstConnect;
        this.#firstConnect = null;
        this.#stop(null, false);
        first.reject(error);
        return;
      }
    } else if (error.code === 'refused') {
      this.#enqueue(new WspairEvent('refused', { status: error.status, reason: error.reason }));
    }
    if (this.#link === null || this.#goaway) this.#scheduleRetry();
  }

  #scheduleRetry() {
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (!this.#stopped && !this.#attempt && (this.#link === null || this.#goaway)) this.#startAttempt();
    }, this.#backoff.nextDelay());
  }

  /** The current connection is gone (already unset): tell, and plan the next. */
  #disconnected(code, reason) {
    this.#proto.onDisconnected(now());
    this.#collect();
    if (code === CODE_DISPLACED && this.#attempt) {
      // This client's own next connection took the slot (goaway): expected, not news.
      this.#schedulePump();
      return;
    }
    this.#enqueue(new WspairEvent('disconnected', { code, reason }));
    if (code === CODE_DISPLACED || code === CODE_OPERATOR) {
      // Another client took the role: coming back would displace it in turn. Or an operator
      // closed the channel: coming back would undo that.
      this.#enqueue(new WspairEvent('close', { code, reason }));
      const why = code === CODE_OPERATOR ? `an operator closed the channel: ${reason}` : 'another client took the role';
      this.#stop(new WspairError('closed', why), true);
      return;
    }
    if (!this.#attempt) this.#scheduleRetry();
    this.#schedulePump();
  }

  #onMessage(link, data) {
    if (link !== this.#link) return;
    if (this.#raw) {
      const text = typeof data === 'string';
      const payload = text ? data : new Uint8Array(data);
      this.#enqueue(new WspairEvent('message', { data: payload, text, seq: 0 }));
      return;
    }
    if (typeof data === 'string') return; // a v1 node sends binary frames only
    let frames;
    try {
      frames = decodeMessage(data);
    } catch {
      return; // malformed: ignored, as the Rust library does
    }
    for (const frame of frames) {
      if (frame.kind === 'server' && frame.t === 'goaway') {
        // Make before break: open the next connection, keep this one until it is welcomed.
        this.#goaway = true;
        clearTimeout(this.#retryTimer);
        this.#retryTimer = null;
        if (!this.#attempt) this.#startAttempt();
        continue;
      }
      this.#proto.onFrame(frame, now());
    }
    this.#schedulePump();
  }

  // Sending.

  /** Offers a send to the state machine; false when it must wait. */
  #offer(pending) {
    if (this.#raw) {
      if (this.#link === null) return false;
      this.#link.send(pending.text ? pending.data : pending.payload);
      pending.resolve(0);
      return true;
    }
    const result = this.#proto.offer(pending.text, pending.payload, now());
    if (result === WINDOW_FULL) return false;
    if (result === TOO_LARGE) {
      const { length, max } = this.#proto.tooLarge;
      pending.reject(
        new WspairError('too_large', `a frame of ${length} bytes exceeds the node's max_frame of ${max}`, {
          length,
          max,
        }),
      );
    } else if (result === 0) {
      pending.resolve(0);
    } else {
      this.#unacked.push({ seq: result, resolve: pending.resolve, reject: pending.reject });
    }
    return true;
  }

  /** Runs, once per burst of input, everything that follows from it. */
  #schedulePump() {
    if (this.#pumpQueued) return;
    this.#pumpQueued = true;
    queueMicrotask(() => {
      this.#pumpQueued = false;
      this.#pump();
    });
  }

  #pump() {
    if (this.#stopped) return;
    while (this.#blocked.length > 0 && this.#offer(this.#blocked[0])) this.#blocked.shift();
    this.#writeFrames();
    this.#collect();
    if (this.#closing && !this.#closing.done) this.#finishClose();
    if (!this.#stopped) this.#armTimer();
  }

  #writeFrames() {
    this.#proto.piggybackAck();
    let frame;
    while ((frame = this.#proto.pollMessage()) !== undefined) {
      if (this.#link !== null && !this.#raw) this.#link.send(frame);
    }
  }

  #armTimer() {
    let at = this.#proto.pollTimeout();
    if (this.#closing && (at === null || this.#closing.deadline < at)) at = this.#closing.deadline;
    if (at === this.#timerAt) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    if (at === null) return;
    this.#timer = setTimeout(() => {
      this.#timerAt = null;
      this.#proto.onTick(now());
      this.#pump();
    }, Math.max(0, at - now()));
  }

  async #finishClose() {
    const closing = this.#closing;
    const unacknowledged = this.#proto.outbox.length + this.#blocked.length;
    if (unacknowledged > 0 && now() < closing.deadline) return;
    closing.done = true;
    const link = this.#link;
    if (link && !this.#raw) {
      this.#proto.bye();
      this.#writeFrames();
    }
    this.#link = null;
    const error =
      unacknowledged === 0
        ? null
        : new WspairError('close_timed_out', `closed with ${unacknowledged} messages unacknowledged`, {
            unacknowledged,
          });
    this.#stop(error, false);
    if (link) await link.closeGracefully();
    if (error) closing.reject(error);
    else closing.resolve();
  }

  /** Ends the client: no more connections, timers or events (but those kept for the reader). */
  #stop(error, keepEvents) {
    if (this.#stopped) return;
    this.#stopped = true;
    clearTimeout(this.#timer);
    clearTimeout(this.#retryTimer);
    this.#attempt?.kill();
    this.#attempt = null;
    this.#link?.kill();
    this.#link = null;
    const reason = error ?? new WspairError('closed', 'the client is closed');
    for (const pending of this.#blocked.splice(0)) pending.reject(reason);
    for (const pending of this.#unacked.splice(0)) pending.reject(reason);
    // A close() still waiting for the outbox ends with the reason the client stopped.
    if (this.#closing && !this.#closing.done) {
      this.#closing.done = true;
      this.#closing.reject(reason);
    }
    if (!keepEvents) {
      this.#queue = [];
      clearTimeout(this.#deliverTimer);
      this.#deliverTimer = null;
    }
    for (const waiter of this.#reconnectWaiters.splice(0)) waiter();
    if (this.#waiter && this.#queue.length === 0) {
      const waiter = this.#waiter;
      this.#waiter = null;
      this.#iterating = false;
      waiter({ value: undefined, done: true });
    }
  }

  // Events.

  /** Moves the state machine's events into the application's queue. */
  #collect() {
    let e;
    while ((e = this.#proto.pollEvent()) !== undefined) {
      switch (e.type) {
        case 'message': {
          const data = e.text ? textDecoder.decode(e.payload) : e.payload.slice();
          const stream = e.seq > 0 ? e.sid : null;
          this.#enqueue(new WspairEvent('message', { data, text: e.text, seq: e.seq }), stream);
          break;
        }
        case 'acked': {
          let n = 0;
          while (n < this.#unacked.length && this.#unacked[n].seq <= e.hw) {
            this.#unacked[n].resolve(this.#unacked[n].seq);
            n += 1;
          }
          this.#unacked.splice(0, n);
          this.#enqueue(new WspairEvent('acked', { hw: e.hw }));
          break;
        }
        case 'rawpeer':
          // What waited was sent once, unnumbered: no ACK will come for it.
          for (const pending of this.#unacked.splice(0)) pending.resolve(0);
          this.#enqueue(new WspairEvent('rawpeer'));
          break;
        case 'presence':
          this.#enqueue(new WspairEvent('presence', { state: e.state, left: e.left }));
          break;
        case 'reset':
          this.#enqueue(new WspairEvent('reset', { oldSid: e.oldSid, deliveredHw: e.deliveredHw }));
          break;
        case 'connected':
          this.#enqueue(new WspairEvent('connected', { gen: e.gen, node: e.node, raw: false }));
          break;
        case 'token':
          this.#enqueue(new WspairEvent('token', { ok: e.ok, expires: e.expires, reason: e.reason }));
          break;
        default:
          break;
      }
    }
  }

  #enqueue(event, stream = null) {
    if (this.#stopped && event.type !== 'disconnected' && event.type !== 'close') return;
    this.#queue.push({ event, stream });
    this.#scheduleDelivery();
  }

  /**
   * Hands queued events over: to a waiting iterator, or, with no iterator running, to the
   * listeners on the next turn of the event loop (so that listeners added right after
   * `await connect()` see the first events).
   */
  #scheduleDelivery() {
    if (this.#iterating) {
      if (this.#waiter && this.#queue.length > 0) {
        const waiter = this.#waiter;
        this.#waiter = null;
        waiter({ value: this.#hand(this.#queue.shift()), done: false });
      }
      return;
    }
    if (this.#deliverTimer !== null || this.#queue.length === 0) return;
    this.#deliverTimer = setTimeout(() => {
      this.#deliverTimer = null;
      while (!this.#iterating && this.#queue.length > 0) {
        if (this.#queue[0].event.type === 'message' && this.#messageListeners.size === 0) break;
        this.#hand(this.#queue.shift());
      }
    }, 0);
  }

  /** One event reaches the application: a numbered message counts as taken. */
  #hand({ event, stream }) {
    if (event.type === 'message' && event.seq > 0 && stream !== null && !this.#stopped) {
      if (this.#proto.take(stream, event.seq, now())) this.#schedulePump();
    }
    this.dispatchEvent(event);
    if (event.type === 'message') {
      for (const [listener, once] of this.#messageListeners) {
        if (once) this.#messageListeners.delete(listener);
      }
    }
    return event;
  }
}
