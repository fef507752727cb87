// The state machine alone (src/protocol.js), with explicit time: two instances wired to each
// other by hand, so that the rules of PROTOCOL.md §3, §4 and §8 are checked without a node.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { decodeFrame, decodeMessage, encodeFrame, KIND_BATCH } from '../src/frame.js';
import { Protocol } from '../src/protocol.js';

const WELCOME = { kind: 'server', t: 'welcome', node: 'n', gen: 1, window: { msgs: 8, bytes: 1 << 20 }, max_frame: 10240 };

function events(p) {
  const out = [];
  let e;
  while ((e = p.pollEvent()) !== undefined) out.push(e);
  return out;
}

function frames(p) {
  const out = [];
  let f;
  while ((f = p.pollFrame()) !== undefined) out.push(decodeFrame(f));
  return out;
}

/** Two clients on one connection each, told that the other is online, their syncs exchanged. */
function pair() {
  const a = new Protocol('00000000000000aa');
  const b = new Protocol('00000000000000bb');
  for (const [p, peer] of [
    [a, b],
    [b, a],
  ]) {
    p.onConnected(1, 0);
    p.onFrame(WELCOME, 0);
    p.onFrame({ kind: 'server', t: 'peer', state: 'online', sid: peer.sid, gen: 1, raw: false }, 0);
  }
  const fromA = frames(a);
  const fromB = frames(b);
  for (const f of fromA) b.onFrame(f, 0);
  for (const f of fromB) a.onFrame(f, 0);
  events(a);
  events(b);
  return { a, b };
}

test('messages flow after the syncs, are acknowledged when taken, and duplicates are dropped', () => {
  const { a, b } = pair();
  assert.deepEqual([a.offer(true, new TextEncoder().encode('x'), 0), a.offer(false, new Uint8Array([1]), 0)], [1, 2]);
  const data = frames(a);
  assert.deepEqual(
    data.map((f) => [f.kind, f.seq]),
    [
      ['data', 1],
      ['data', 2],
    ],
  );
  for (const f of data) b.onFrame(f, 1);
  const got = events(b);
  assert.deepEqual(
    got.map((e) => [e.type, e.seq]),
    [
      ['message', 1],
      ['message', 2],
    ],
  );
  // Nothing is acknowledged before the application takes it; then after the ACK delay.
  assert.equal(b.pollTimeout(), null);
  b.take(a.sid, 2, 1);
  assert.equal(b.pollTimeout(), 21);
  b.onTick(21);
  const [ack] = frames(b);
  assert.deepEqual(ack, { kind: 'ack', sid: a.sid, hw: 2 });
  a.onFrame(ack, 22);
  assert.deepEqual(events(a), [{ type: 'acked', hw: 2 }]);
  assert.equal(a.outbox.length, 0);

  // A resent frame is dropped by position.
  b.onFrame(data[1], 30);
  assert.deepEqual(events(b), []);
  assert.equal(b.duplicatesDropped, 1);
});

test('a gap asks for a sync (at most one per 100 ms), and the sync resends from the gap', () => {
  const { a, b } = pair();
  for (let i = 0; i < 3; i++) a.offer(true, new Uint8Array([0x61 + i]), 0);
  const [one, , three] = frames(a);
  b.onFrame(one, 0);
  b.onFrame(three, 0);
  assert.equal(b.gapsSeen, 1);
  const asked = frames(b);
  assert.deepEqual(
    asked.map((f) => [f.t, f.rx.hw]),
    [['sync', 1]],
  );
  b.onFrame(three, 50);
  assert.deepEqual(frames(b), [], 'no second sync within 100 ms');
  a.onFrame(asked[0], 60);
  const resent = frames(a).filter((f) => f.kind === 'data');
  assert.deepEqual(
    resent.map((f) => f.seq),
    [2, 3],
  );
  for (const f of resent) b.onFrame(f, 70);
  assert.deepEqual(
    events(b).filter((e) => e.type === 'message').map((e) => e.seq),
    [1, 2, 3],
  );
});

test('the window holds messages back until an ACK opens it', () => {
  const { a, b } = pair();
  for (let i = 1; i <= 8; i++) assert.equal(a.offer(false, new Uint8Array([i]), 0), i);
  assert.equal(a.offer(false, new Uint8Array([9]), 0), 'window_full');
  for (const f of frames(a)) b.onFrame(f, 0);
  events(b);
  b.take(a.sid, 4, 0); // half the window: an ACK at once
  for (const f of frames(b)) a.onFrame(f, 0);
  assert.equal(a.offer(false, new Uint8Array([9]), 0), 9);
});

test('presence: reconnecting after the quiet period, offline after the grace, online again', () => {
  const { a } = pair();
  a.onFrame({ kind: 'server', t: 'peer', state: 'away' }, 1000);
  a.onTick(1999);
  assert.deepEqual(events(a), []);
  assert.equal(a.pollTimeout(), 2000);
  a.onTick(2000);
  assert.deepEqual(events(a), [{ type: 'presence', state: 'reconnecting', left: false }]);
  a.onTick(31000);
  assert.deepEqual(events(a), [{ type: 'presence', state: 'offline', left: false }]);
  a.onFrame({ kind: 'server', t: 'peer', state: 'online', sid: '00000000000000bb', gen: 2, raw: false }, 32000);
  assert.deepEqual(events(a), [{ type: 'presence', state: 'online', left: false }]);
  // A bye: offline at once, and no timer after it.
  a.onFrame(decodeFrame(encodeFrame({ kind: 'peer', t: 'bye' })), 33000);
  assert.deepEqual(events(a), [{ type: 'presence', state: 'offline', left: true }]);
  a.onFrame({ kind: 'server', t: 'peer', state: 'away' }, 33001);
  assert.equal(a.presenceDeadline(), null);
});

test('an ACK due later rides along with frames written now', () => {
  const { a, b } = pair();
  a.offer(true, new TextEncoder().encode('x'), 0);
  for (const f of frames(a)) b.onFrame(f, 1);
  events(b);
  b.take(a.sid, 1, 1);
  b.piggybackAck();
  assert.deepEqual(frames(b), [], 'nothing to write: the ACK waits for its timer');

  b.offer(true, new TextEncoder().encode('y'), 2);
  b.piggybackAck();
  assert.deepEqual(
    frames(b).map((f) => f.kind),
    ['data', 'ack'],
    'the ACK joins the write',
  );
  b.offer(true, new TextEncoder().encode('z'), 3);
  b.piggybackAck();
  assert.deepEqual(frames(b).map((f) => f.kind), ['data'], 'nothing new taken: no ACK');
});

test('a message belongs to the stream current when it arrived, not when events are read', () => {
  const { a, b } = pair();
  a.offer(true, new TextEncoder().encode('old'), 0);
  const [old] = frames(a);
  // In one burst: a DATA of the old stream, a restarted peer's sync, its first DATA.
  const restarted = new Protocol('00000000000000cc');
  b.onFrame(old, 1);
  b.onFrame({ kind: 'peer', t: 'sync', sid: restarted.sid, gen: 1, tx: { base: 1, next: 2 }, rx: { sid: b.sid, hw: 0 }, reply: false }, 1);
  b.onFrame({ kind: 'data', seq: 1, text: true, payload: new TextEncoder().encode('new') }, 1);
  const messages = events(b).filter((e) => e.type === 'message');
  assert.deepEqual(
    messages.map((e) => [new TextDecoder().decode(e.payload), e.sid]),
    [
      ['old', a.sid],
      ['new', restarted.sid],
    ],
  );
});

test('data and acks written together go in one BATCH within max_frame, other frames alone', () => {
  const { a, b } = pair();
  a.offer(false, new Uint8Array([7]), 0);
  b.onFrame(decodeFrame(a.pollMessage()), 1);
  assert.equal(events(b).filter((e) => e.type === 'message').length, 1);
  b.take(b.rxSid, 1, 1);
  for (let i = 0; i < 3; i++) b.offer(false, new Uint8Array([i, i, i, i]), 1);
  b.piggybackAck();
  const message = b.pollMessage();
  assert.equal(message[0], KIND_BATCH);
  const carried = decodeMessage(message);
  assert.deepEqual(
    carried.map((f) => [f.kind, f.seq ?? f.hw]),
    [
      ['data', 1],
      ['data', 2],
      ['data', 3],
      ['ack', 1],
    ],
  );
  assert.equal(b.pollMessage(), undefined);
  // DATA of 4 bytes takes 6; two in a BATCH take 1 + 2 * (1 + 6) = 15.
  b.maxFrame = 15;
  for (let i = 0; i < 3; i++) b.offer(false, new Uint8Array([i, i, i, i]), 1);
  const shapes = [];
  let m;
  while ((m = b.pollMessage()) !== undefined) shapes.push([m[0] === KIND_BATCH, decodeMessage(m).map((f) => f.seq)]);
  assert.deepEqual(shapes, [
    [true, [4, 5]],
    [false, [6]],
  ]);
});

test('a BATCH holds at most the welcome max_batch frames', () => {
  const { a } = pair();
  a.maxBatch = 2;
  for (let i = 0; i < 5; i++) a.offer(false, new Uint8Array([i]), 0);
  const counts = [];
  let m;
  while ((m = a.pollMessage()) !== undefined) counts.push(decodeMessage(m).length);
  assert.deepEqual(counts, [2, 2, 1]);
});
