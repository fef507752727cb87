// The shared byte-level vectors (client/tests/vectors.json, the same file the Rust library's
// tests read): every valid frame decodes to its meaning and encodes back (byte for byte for
// DATA and ACK), every invalid one is refused with its error, and every key gives its sid.

import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { bytesToHex, decodeFrame, decodeMessage, encodeFrame, FrameError, hexToBytes, sha256, sidOfKey } from '../src/frame.js';
import { repoRoot } from './harness.js';

/** The vectors, with integers too large for a double kept exact (as bigints). */
function loadVectors() {
  const text = readFileSync(path.join(repoRoot, 'client/tests/vectors.json'), 'utf8');
  const exact = text.replace(/(:\s*)(\d{16,})(\s*[,}\n])/g, '$1{"bigint":"$2"}$3');
  return JSON.parse(exact, (_, value) =>
    value && typeof value === 'object' && typeof value.bigint === 'string' ? BigInt(value.bigint) : value,
  );
}

/** A position as the codec returns it: a number when exact as a double, else a bigint. */
function position(value) {
  const big = BigInt(value);
  return big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
}

const vectors = loadVectors();

test('every valid vector decodes to its meaning and encodes back', () => {
  assert.ok(vectors.valid.length >= 20);
  for (const v of vectors.valid) {
    const bytes = hexToBytes(v.hex);
    const frame = decodeFrame(bytes);
    const { kind, ...meaning } = v.frame;
    assert.equal(frame.kind, kind, v.name);
    if (kind === 'data') {
      assert.equal(frame.seq, position(meaning.seq), v.name);
      assert.equal(frame.text, meaning.text, v.name);
      assert.equal(bytesToHex(frame.payload), meaning.payload_hex, v.name);
      assert.equal(bytesToHex(encodeFrame(frame)), v.hex, `${v.name}: encoding`);
      const fresh = { kind, seq: meaning.seq, text: meaning.text, payload: hexToBytes(meaning.payload_hex) };
      assert.equal(bytesToHex(encodeFrame(fresh)), v.hex, `${v.name}: encoding from the meaning`);
    } else if (kind === 'ack') {
      assert.equal(frame.sid, meaning.sid, v.name);
      assert.equal(frame.hw, position(meaning.hw), v.name);
      assert.equal(bytesToHex(encodeFrame(frame)), v.hex, `${v.name}: encoding`);
    } else {
      // JSON: the same object (unknown fields kept), whatever the key order.
      const { kind: _, ...fields } = frame;
      assert.deepEqual(fields, meaning, v.name);
      assert.deepEqual(decodeFrame(encodeFrame(frame)), frame, `${v.name}: round trip`);
    }
  }
});

test('every invalid vector is refused with its error', () => {
  assert.ok(vectors.invalid.length >= 15);
  for (const v of vectors.invalid) {
    assert.throws(
      () => decodeFrame(hexToBytes(v.hex)),
      (e) => e instanceof FrameError && e.code === v.error,
      `${v.name}: expected ${v.error}`,
    );
  }
});

test('every key gives its sid, and SHA-256 agrees with node:crypto', () => {
  assert.ok(vectors.sids.length >= 1);
  for (const v of vectors.sids) assert.equal(sidOfKey(v.key), v.sid, v.name);
  for (const length of [0, 1, 16, 55, 56, 63, 64, 65, 1000]) {
    const bytes = randomBytes(length);
    assert.equal(bytesToHex(sha256(bytes)), createHash('sha256').update(bytes).digest('hex'), `${length} bytes`);
  }
});

/** A DATA or ACK meaning as the codec decodes it. */
function dataOrAck(meaning) {
  if (meaning.kind === 'data') {
    return { kind: 'data', seq: position(meaning.seq), text: meaning.text, payload: meaning.payload_hex };
  }
  return { kind: 'ack', sid: meaning.sid, hw: position(meaning.hw) };
}

test('every message carries its frames in order, a BATCH each of its own', () => {
  assert.ok(vectors.messages.length >= 5);
  for (const v of vectors.messages) {
    const frames = decodeMessage(hexToBytes(v.hex)).map((f) =>
      f.kind === 'data' ? { ...f, payload: bytesToHex(f.payload) } : f,
    );
    assert.deepEqual(frames, v.frames.map(dataOrAck), v.name);
  }
});

test('every invalid message is refused with its error', () => {
  assert.ok(vectors.invalid_messages.length >= 8);
  for (const v of vectors.invalid_messages) {
    assert.throws(
      () => decodeMessage(hexToBytes(v.hex)),
      (e) => e instanceof FrameError && e.code === v.error,
      `${v.name}: expected ${v.error}`,
    );
  }
});
