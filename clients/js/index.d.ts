// Types of wspair-client, the wspair.v1 client for browsers and Node (src/wspair.js).

/** Which side of a pair a client is (the `type` query parameter). */
export type Role = 'app' | 'web';

/** The peer's presence as the library derives it (PROTOCOL.md §8). */
export type PresenceState = 'online' | 'reconnecting' | 'offline';

export interface ConnectOptions {
  /** A base WebSocket URL such as `ws://127.0.0.1:1024/channel`. */
  url?: string;
  /** Base URLs tried in turn: every new connection goes to the next one. */
  urls?: string[];
  /** The pair's channel id (32 characters of [A-Za-z0-9_]). */
  channelId: string;
  role: Role;
  /** Connect as a raw client: no subprotocol, no acknowledgements, no resume. Default false. */
  raw?: boolean;
  /** Connect raw when the server does not accept `wspair.v1` (default: fail). */
  rawFallback?: boolean;
  /** The client's secret (32 lowercase hex digits); drawn at random by default. One per client. */
  key?: string;
  /** The client token (the node's `auth.*`), sent as the `token` query parameter; see setToken(). */
  token?: string;
  /** The first reconnect delay's upper bound, ms (default 100). */
  backoffMin?: number;
  /** The largest reconnect delay's upper bound, ms (default 5000). */
  backoffMax?: number;
  /** Away this long before the peer is reported `reconnecting`, ms (default 1000). */
  presenceQuiet?: number;
  /** Away this long before the peer is reported `offline`, ms (default 30000). */
  presenceGrace?: number;
  /** With messages unacknowledged and no progress this long, ask the peer to sync, ms (default 2000). */
  ackTimeout?: number;
  /** How long close() waits for the outbox to empty, ms (default 5000). */
  closeTimeout?: number;
  /** Give up the first connection after this long, ms (default 0: keep trying). */
  connectTimeout?: number;
  /** A WebSocket constructor to use instead of globalThis.WebSocket or the `ws` package. */
  WebSocket?: unknown;
}

export type WspairErrorCode =
  | 'refused'
  | 'no_subprotocol'
  | 'network'
  | 'protocol'
  | 'too_large'
  | 'closed'
  | 'close_timed_out'
  | 'config'
  | 'timeout';

/** What went wrong; the fields beside `code` depend on it. */
export class WspairError extends Error {
  code: WspairErrorCode;
  /** `refused`: the HTTP status. */
  status?: number;
  /** `refused`: the server's one-line reason. */
  reason?: string;
  /** `too_large`: the frame's length and the node's limit. */
  length?: number;
  max?: number;
  /** `close_timed_out`: messages still unacknowledged. */
  unacknowledged?: number;
}

/** An event of a client; see the typed events below for each type's fields. */
export class WspairEvent extends Event {
  constructor(type: string, fields?: object);
}

/** A message of the peer, handed over exactly once and in order. */
export interface MessageEvent extends WspairEvent {
  readonly type: 'message';
  /** A string for a text message, the bytes of a binary one. */
  data: string | Uint8Array;
  text: boolean;
  /** Its position in the peer's stream; 0 for an unnumbered message (a raw peer's). */
  seq: number;
}

export interface PresenceEvent extends WspairEvent {
  readonly type: 'presence';
  state: PresenceState;
  /** Whether the peer said it left for good (`bye`). */
  left: boolean;
}

/** The peer acknowledged every message up to `hw`. */
export interface AckedEvent extends WspairEvent {
  readonly type: 'acked';
  hw: number;
}

/** The peer's stream changed: its messages after `deliveredHw` never handed over are lost. */
export interface ResetEvent extends WspairEvent {
  readonly type: 'reset';
  oldSid: string;
  deliveredHw: number;
}

export interface ConnectedEvent extends WspairEvent {
  readonly type: 'connected';
  gen: number;
  /** The node's id ('' on a raw connection). */
  node: string;
  raw: boolean;
}

export interface DisconnectedEvent extends WspairEvent {
  readonly type: 'disconnected';
  /** The close code (1006 when the socket dropped), null when asked for by reconnect(). */
  code: number | null;
  reason: string;
}

/** A reconnect attempt was refused with an HTTP status; the client keeps trying. */
export interface RefusedEvent extends WspairEvent {
  readonly type: 'refused';
  status: number;
  reason: string;
}

/** The peer is a raw client: messages to it go unnumbered, at most once, never acknowledged. */
export interface RawPeerEvent extends WspairEvent {
  readonly type: 'rawpeer';
}

/** The client stopped on its own: another client took its role (code 4001). */
export interface CloseEvent extends WspairEvent {
  readonly type: 'close';
  code: number;
  reason: string;
}

/** The node's answer to setToken(): taken (the session now closes at `expires`) or refused. */
export interface TokenEvent extends WspairEvent {
  readonly type: 'token';
  ok: boolean;
  /** The session's new expiry in seconds since the Unix epoch; null when it no longer expires. */
  expires: number | null;
  /** Why the token was refused ('' when taken). */
  reason: string;
}

export interface WspairEventMap {
  message: MessageEvent;
  presence: PresenceEvent;
  acked: AckedEvent;
  reset: ResetEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  refused: RefusedEvent;
  rawpeer: RawPeerEvent;
  close: CloseEvent;
  token: TokenEvent;
}

export type AnyWspairEvent = WspairEventMap[keyof WspairEventMap];

export interface ClientStats {
  sid: string;
  gen: number;
  raw: boolean;
  outboxLength: number;
  blocked: number;
  nextSeq: number;
  acked: number;
  rxSid: string | null;
  rxHw: number;
  reconnects: number;
  duplicatesDropped: number;
  gapsSeen: number;
}

/** A wspair.v1 client: one stream to the peer, kept across reconnects. */
export class WspairClient extends EventTarget {
  private constructor();
  static connect(options: ConnectOptions): Promise<WspairClient>;
  /** This client's stream id (16 hex digits). */
  readonly sid: string;
  readonly presence: PresenceState | null;
  /** Whether a connection is up now. */
  readonly connected: boolean;
  /** Whether the client has stopped. */
  readonly closed: boolean;
  /**
   * Sends a string as text, bytes as binary. Resolves with the message's seq once the peer's
   * application took it; with 0 when the peer is raw. Waits while the window is full.
   */
  send(data: string | ArrayBuffer | ArrayBufferView): Promise<number>;
  /** Drops the socket and reconnects to the next URL; resolves once welcomed again. */
  reconnect(): Promise<void>;
  /**
   * Replaces the client token: later connections present it, and the open v1 connection hands
   * it to its session, which answers with a `token` event.
   */
  setToken(token: string): void;
  /** Waits for the outbox (up to closeTimeout), says bye, closes with 1000. */
  close(): Promise<void>;
  stats(): ClientStats;
  addEventListener<K extends keyof WspairEventMap>(
    type: K,
    listener: (event: WspairEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof WspairEventMap>(
    type: K,
    listener: (event: WspairEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  /** The events in order until the client stops; one iterator at a time. */
  [Symbol.asyncIterator](): AsyncIterator<AnyWspairEvent>;
}

/** Connects; resolves once the first connection is welcomed. */
export function connect(options: ConnectOptions): Promise<WspairClient>;

/** The subprotocol: `wspair.v1`. */
export const SUBPROTOCOL: 'wspair.v1';

/** The URL of one connection (PROTOCOL.md §1). */
export function connectionUrl(
  base: string,
  channelId: string,
  role: Role,
  v1: boolean,
  key?: string,
  gen?: number,
): string;

// The codec and the state machine, for other transports and for tests.

export type Position = number | bigint;

export type Frame =
  | { kind: 'data'; seq: Position; text: boolean; payload: Uint8Array }
  | { kind: 'ack'; sid: string; hw: Position }
  | { kind: 'peer'; v?: number; t: string; [field: string]: unknown }
  | { kind: 'server'; v?: number; t: string; [field: string]: unknown };

export class FrameError extends Error {
  code:
    | 'empty'
    | 'unknown_kind'
    | 'varint_truncated'
    | 'varint_too_long'
    | 'varint_overflow'
    | 'ack_truncated'
    | 'trailing'
    | 'invalid_utf8'
    | 'json'
    | 'batch_empty'
    | 'batch_truncated'
    | 'batch_kind';
}

export function decodeFrame(message: ArrayBuffer | Uint8Array): Frame;
/** The frames of one message: its own frame, or each frame of a BATCH (PROTOCOL.md §2.6). */
export function decodeMessage(message: ArrayBuffer | Uint8Array): Frame[];
export function encodeFrame(frame: Frame): Uint8Array;
export function encodeVarint(value: Position): Uint8Array;
export function decodeVarint(bytes: Uint8Array, offset?: number): [Position, number];
export function sidOfKey(key: string): string;
export function randomKey(): string;
export function sha256(bytes: Uint8Array): Uint8Array;

export const DEFAULT_PROTOCOL_CONFIG: Readonly<{
  ackTimeout: number;
  presenceQuiet: number;
  presenceGrace: number;
  gapSyncInterval: number;
  ackDelay: number;
  ackEvery: number;
}>;

/** The sans-IO state machine (times in milliseconds). */
export class Protocol {
  constructor(sid: string, config?: Partial<typeof DEFAULT_PROTOCOL_CONFIG>);
  onConnected(gen: number, now: number): void;
  onDisconnected(now: number): void;
  onFrame(frame: Frame, now: number): void;
  onTick(now: number): void;
  offer(text: boolean, payload: Uint8Array, now: number): number | 'window_full' | 'too_large';
  take(sid: string, seq: number, now: number): boolean;
  bye(): void;
  pollFrame(): Uint8Array | undefined;
  pollEvent(): { type: string; [field: string]: unknown } | undefined;
  pollTimeout(): number | null;
}
