// The wspair.v1 wire codec (PROTOCOL.md §2), and the stream id of a key (§1).
//
// Every v1 frame is one binary WebSocket message whose first byte is its kind, or one of the
// DATA and ACK frames a BATCH message carries (decodeMessage, encodeBatch). This file turns such
// messages into plain objects and back, and keeps no state, so the state machine and the shared
// test vectors (client/tests/vectors.json) rely on one strict definition of a frame.
//
// A decoded frame has the shape the vectors describe:
//   { kind: 'data', seq, text, payload }          payload: Uint8Array
//   { kind: 'ack', sid, hw }                       sid: 16 lowercase hex digits
//   { kind: 'peer', v, t, ...fields }              the JSON object, unknown fields kept
//   { kind: 'server', v, t, ...fields }
//   { kind: 'node', v, t, ...fields }              a request to the node (0x06), never relayed
// Positions (seq, hw) are numbers; one above Number.MAX_SAFE_INTEGER decodes as a bigint, and
// encoding takes either.

export const KIND_DATA_BINARY = 0x01;
export const KIND_DATA_TEXT = 0x02;
export const KIND_ACK = 0x03;
export const KIND_PEER = 0x04;
export const KIND_SERVER = 0x05;
export const KIND_NODE = 0x06;
export const KIND_BATCH = 0x07;

const JSON_KINDS = { peer: KIND_PEER, server: KIND_SERVER, node: KIND_NODE };

/** The longest LEB128 varint the protocol allows, in bytes. */
export const MAX_VARINT_LEN = 10;

const utf8Strict = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

/** Why a binary message is not a well-formed frame; `code` is the name the vectors use. */
export class FrameError extends Error {
  /**
   * @param {string} code one of empty, unknown_kind, varint_truncated, varint_too_long,
   *   varint_overflow, ack_truncated, trailing, invalid_utf8, json, batch_empty,
   *   batch_truncated, batch_kind
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = 'FrameError';
    this.code = code;
  }
}

const TWO_POW_64 = 1n << 64n;

/** How many bytes the LEB128 encoding of `value` takes (1 to 10). */
export function varintLength(value) {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) {
    let n = 1;
    for (let v = value; v >= 0x80; v = Math.floor(v / 0x80)) n += 1;
    return n;
  }
  let v = BigInt(value);
  let n = 1;
  while (v >= 0x80n) {
    v >>= 7n;
    n += 1;
  }
  return n;
}

/** The LEB128 bytes of `value` (a non-negative number or bigint below 2^64). */
export function encodeVarint(value) {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) {
    const out = [];
    let v = value;
    while (v >= 0x80) {
      out.push((v % 0x80) | 0x80);
      v = Math.floor(v / 0x80);
    }
    out.push(v);
    return Uint8Array.from(out);
  }
  let v = BigInt(value);
  if (v < 0n || v >= TWO_POW_64) throw new RangeError(`varint out of range: ${value}`);
  const out = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Uint8Array.from(out);
}

/**
 * Reads a LEB128 varint at `offset` of `bytes`: `[value, length]`. The value is a number, or a
 * bigint when above Number.MAX_SAFE_INTEGER.
 */
export function decodeVarint(bytes, offset = 0) {
  let value = 0n;
  for (let i = 0; offset + i < bytes.length; i++) {
    if (i === MAX_VARINT_LEN) throw new FrameError('varint_too_long', 'varint longer than 10 bytes');
    const b = bytes[offset + i];
    const low = b & 0x7f;
    if (i === MAX_VARINT_LEN - 1 && low > 1) {
      throw new FrameError('varint_overflow', 'varint above 2^64 - 1');
    }
    value |= BigInt(low) << BigInt(7 * i);
    if ((b & 0x80) === 0) {
      // Every value has one encoding: a last byte of zero would make it longer.
      if (b === 0 && i > 0) throw new FrameError('varint_overlong', 'overlong varint');
      const small = value <= BigInt(Number.MAX_SAFE_INTEGER);
      return [small ? Number(value) : value, i + 1];
    }
  }
  if (bytes.length - offset >= MAX_VARINT_LEN) {
    throw new FrameError('varint_too_long', 'varint longer than 10 bytes');
  }
  throw new FrameError('varint_truncated', 'truncated varint');
}

/** The bytes of a DATA frame. */
export function encodeData(seq, text, payload) {
  const header = encodeVarint(seq);
  const out = new Uint8Array(1 + header.length + payload.length);
  out[0] = text ? KIND_DATA_TEXT : KIND_DATA_BINARY;
  out.set(header, 1);
  out.set(payload, 1 + header.length);
  return out;
}

/** The length of a DATA frame's header (kind byte and seq varint). */
export function dataHeaderLength(seq) {
  return 1 + varintLength(seq);
}

/** Whether `s` is a sid as the protocol writes it: 16 hex digits. */
export function isSidHex(s) {
  return typeof s === 'string' && /^[0-9a-fA-F]{16}$/.test(s);
}

/** Encodes a frame object (the shape `decodeFrame` returns) as one binary message. */
export function encodeFrame(frame) {
  switch (frame.kind) {
    case 'data':
      return encodeData(frame.seq, frame.text, frame.payload);
    case 'ack': {
      if (!isSidHex(frame.sid)) throw new RangeError(`bad sid ${frame.sid}`);
      const hw = encodeVarint(frame.hw);
      const out = new Uint8Array(9 + hw.length);
      out[0] = KIND_ACK;
      out.set(hexToBytes(frame.sid), 1);
      out.set(hw, 9);
      return out;
    }
    case 'peer':
    case 'server':
    case 'node': {
      const { kind, v, t, ...fields } = frame;
      const json = utf8Encoder.encode(JSON.stringify({ v: 1, t, ...fields }));
      const out = new Uint8Array(1 + json.length);
      out[0] = JSON_KINDS[kind];
      out.set(json, 1);
      return out;
    }
    default:
      throw new RangeError(`unknown frame kind ${frame.kind}`);
  }
}

/** Whether a frame of kind `kind` may go into a BATCH: DATA and ACK. */
export function isBatchable(kind) {
  return kind === KIND_DATA_BINARY || kind === KIND_DATA_TEXT || kind === KIND_ACK;
}

/** One BATCH message holding the encoded `frames` (DATA and ACK), each prefixed by its length. */
export function encodeBatch(frames) {
  const lengths = frames.map((f) => encodeVarint(f.length));
  let size = 1;
  for (let i = 0; i < frames.length; i++) size += lengths[i].length + frames[i].length;
  const out = new Uint8Array(size);
  out[0] = KIND_BATCH;
  let at = 1;
  for (let i = 0; i < frames.length; i++) {
    out.set(lengths[i], at);
    at += lengths[i].length;
    out.set(frames[i], at);
    at += frames[i].length;
  }
  return out;
}

/**
 * The frames of one binary WebSocket message (ArrayBuffer or Uint8Array), in order: the
 * message's own frame, or each frame of a BATCH (PROTOCOL.md §2.6). Throws a FrameError if any
 * is malformed. DATA payloads are views into `message`.
 */
export function decodeMessage(message) {
  const bytes = message instanceof Uint8Array ? message : new Uint8Array(message);
  if (bytes[0] !== KIND_BATCH) return [decodeFrame(bytes)];
  if (bytes.length === 1) throw new FrameError('batch_empty', 'BATCH holds no frame');
  const frames = [];
  let at = 1;
  while (at < bytes.length) {
    const [len, n] = decodeVarint(bytes, at);
    if (typeof len !== 'number' || at + n + len > bytes.length) {
      throw new FrameError('batch_truncated', 'a frame runs past the end of its BATCH');
    }
    const frame = bytes.subarray(at + n, at + n + len);
    if (frame.length > 0 && ![KIND_DATA_BINARY, KIND_DATA_TEXT, KIND_ACK].includes(frame[0])) {
      const kind = frame[0].toString(16).padStart(2, '0');
      throw new FrameError('batch_kind', `frame of kind 0x${kind} inside a BATCH`);
    }
    frames.push(decodeFrame(frame));
    at += n + len;
  }
  return frames;
}

/**
 * Decodes one binary WebSocket message (ArrayBuffer or Uint8Array) holding one frame (a BATCH
 * holds several: see decodeMessage). Throws a FrameError for anything malformed. A DATA
 * payload is a view into `message`.
 */
export function decodeFrame(message) {
  const bytes = message instanceof Uint8Array ? message : new Uint8Array(message);
  if (bytes.length === 0) throw new FrameError('empty', 'empty frame');
  const kind = bytes[0];
  switch (kind) {
    case KIND_DATA_BINARY:
    case KIND_DATA_TEXT: {
      const [seq, n] = decodeVarint(bytes, 1);
      const payload = bytes.subarray(1 + n);
      const text = kind === KIND_DATA_TEXT;
      if (text) {
        try {
          utf8Strict.decode(payload);
        } catch {
          throw new FrameError('invalid_utf8', 'text DATA is not valid UTF-8');
        }
      }
      return { kind: 'data', seq, text, payload };
    }
    case KIND_ACK: {
      if (bytes.length < 9) throw new FrameError('ack_truncated', 'truncated ACK sid');
      const sid = bytesToHex(bytes.subarray(1, 9));
      const [hw, n] = decodeVarint(bytes, 9);
      const trailing = bytes.length - 9 - n;
      if (trailing > 0) throw new FrameError('trailing', `${trailing} trailing bytes`);
      return { kind: 'ack', sid, hw };
    }
    case KIND_PEER:
      return { kind: 'peer', ...checkPeer(parseJson(bytes)) };
    case KIND_SERVER:
      return { kind: 'server', ...checkServer(parseJson(bytes)) };
    case KIND_NODE:
      return { kind: 'node', ...checkNode(parseJson(bytes)) };
    default:
      throw new FrameError('unknown_kind', `unknown frame kind 0x${kind.toString(16).padStart(2, '0')}`);
  }
}

// JSON control objects: the same checks the Rust codec's types make (frame.rs).

function jsonError(what) {
  return new FrameError('json', `malformed JSON control frame: ${what}`);
}

function parseJson(bytes) {
  let obj;
  try {
    obj = JSON.parse(utf8Strict.decode(bytes.subarray(1)));
  } catch (e) {
    throw jsonError(e.message);
  }
  if (obj === null || typeof obj !== 'object' || Array.isArray(obj)) throw jsonError('not an object');
  if (typeof obj.t !== 'string') throw jsonError('missing field `t`');
  return obj;
}

function isCount(v, max = Number.MAX_SAFE_INTEGER) {
  return Number.isSafeInteger(v) && v >= 0 && v <= max;
}

const U32_MAX = 4294967295;

function need(ok, what) {
  if (!ok) throw jsonError(what);
}

function checkSid(obj, field, nullable) {
  const v = obj[field];
  if (nullable && (v === null || v === undefined)) {
    obj[field] = null;
    return;
  }
  need(isSidHex(v), `${field} is not 16 hex digits`);
  obj[field] = v.toLowerCase();
}

function checkPeer(obj) {
  if (obj.t === 'sync') {
    checkSid(obj, 'sid', false);
    need(isCount(obj.gen, U32_MAX), 'sync gen');
    need(obj.tx && isCount(obj.tx.base) && isCount(obj.tx.next), 'sync tx');
    need(obj.rx && typeof obj.rx === 'object' && isCount(obj.rx.hw), 'sync rx');
    checkSid(obj.rx, 'sid', true);
    need(obj.reply === undefined || typeof obj.reply === 'boolean', 'sync reply');
  }
  return obj;
}

function checkServer(obj) {
  switch (obj.t) {
    case 'welcome':
      need(typeof obj.node === 'string', 'welcome node');
      need(obj.session === undefined || isCount(obj.session), 'welcome session');
      need(isCount(obj.gen, U32_MAX), 'welcome gen');
      need(obj.window && isCount(obj.window.msgs) && isCount(obj.window.bytes), 'welcome window');
      need(isCount(obj.max_frame), 'welcome max_frame');
      need(obj.max_batch === undefined || obj.max_batch === null || isCount(obj.max_batch), 'welcome max_batch');
      if (obj.sid !== undefined) checkSid(obj, 'sid', true);
      need(obj.token_exp === undefined || isTime(obj.token_exp), 'welcome token_exp');
      break;
    case 'token':
      need(typeof obj.ok === 'boolean', 'token ok');
      need(obj.exp === undefined || obj.exp === null || isTime(obj.exp), 'token exp');
      need(obj.reason === undefined || typeof obj.reason === 'string', 'token reason');
      break;
    case 'peer':
      need(obj.state === 'online' || obj.state === 'away', 'peer state');
      if (obj.sid !== undefined) checkSid(obj, 'sid', true);
      need(obj.gen === undefined || obj.gen === null || isCount(obj.gen, U32_MAX), 'peer gen');
      need(obj.raw === undefined || typeof obj.raw === 'boolean', 'peer raw');
      break;
    case 'goaway':
      need(obj.reason === undefined || typeof obj.reason === 'string', 'goaway reason');
      break;
    default:
      break;
  }
  return obj;
}

/** Seconds since the Unix epoch, possibly fractional. */
function isTime(v) {
  return typeof v === 'number' && Number.isFinite(v) && v >= 0;
}

function checkNode(obj) {
  if (obj.t === 'token') need(typeof obj.token === 'string', 'token token');
  return obj;
}

// Hex and the stream id.

/** Lowercase hex of bytes. */
export function bytesToHex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/** Bytes of an even-length hex string. */
export function hexToBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Whether `key` is a client key as PROTOCOL.md §1 writes it: 32 lowercase hex digits. */
export function isKeyHex(key) {
  return typeof key === 'string' && /^[0-9a-f]{32}$/.test(key);
}

/**
 * The stream id of the client with secret `key` (32 hex digits): the first 8 bytes of the
 * SHA-256 of the key's 16 bytes, as 16 hex digits; 1 if those are all zero (PROTOCOL.md §1).
 */
export function sidOfKey(key) {
  const sid = bytesToHex(sha256(hexToBytes(key)).subarray(0, 8));
  return sid === '0000000000000000' ? '0000000000000001' : sid;
}

/** A fresh random key: 128 bits from the platform's cryptographic generator. */
export function randomKey() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return bytesToHex(bytes);
}

// SHA-256 (FIPS 180-4), synchronous and dependency-free: crypto.subtle is asynchronous and
// missing from pages not served over https, and the key is hashed once per client.

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

const rotr = (x, n) => (x >>> n) | (x << (32 - n));

/** The SHA-256 digest of `bytes` (32 bytes). */
export function sha256(bytes) {
  const h = new Uint32Array([
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
  ]);
  const length = bytes.length;
  const padded = new Uint8Array(Math.ceil((length + 9) / 64) * 64);
  padded.set(bytes);
  padded[length] = 0x80;
  const view = new DataView(padded.buffer);
  view.setUint32(padded.length - 8, Math.floor(length / 0x20000000));
  view.setUint32(padded.length - 4, (length * 8) >>> 0);
  const w = new Uint32Array(64);
  for (let block = 0; block < padded.length; block += 64) {
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(block + 4 * i);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    let [a, b, c, d, e, f, g, k] = h;
    for (let i = 0; i < 64; i++) {
      const t1 = (k + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      k = g;
      g = f;
      f = e;
      e = (d + t1) | 0;
      d = c;
      c = b;
      b = a;
      a = (t1 + t2) | 0;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += k;
  }
  const out = new Uint8Array(32);
  const outView = new DataView(out.buffer);
  for (let i = 0; i < 8; i++) outView.setUint32(4 * i, h[i]);
  return out;
}
