// One wspair node: a pair of JS clients exchanging messages both ways, presence, the window,
// a raw peer, raw fallback against a node with v1 turned off, and refusals before the upgrade.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { WebSocket } from 'ws';

import { WspairError } from '../src/wspair.js';
import { channelId, closeClients, nextEvent, open, record, sleep, startNode, until, within } from './harness.js';

let node;
let nodeV1Off;

before(async () => {
  [node, nodeV1Off] = await Promise.all([
    startNode({ args: ['--v1-window', '16'] }),
    startNode({ args: ['--v1-enabled', 'false'] }),
  ]);
});

afterEach(closeClients);

after(async () => {
  await Promise.all([node?.kill(), nodeV1Off?.kill()]);
});

/** A plain WebSocket client without the subprotocol, open. */
async function rawClient(url, id, role) {
  const ws = new WebSocket(`${url}?type=${role}&channelId=${id}`);
  ws.binaryType = 'arraybuffer';
  const received = [];
  ws.on('message', (data, isBinary) => received.push(isBinary ? new Uint8Array(data) : data.toString()));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  return { ws, received };
}

test('a pair exchanges text and binary both ways, once, in order, acknowledged', async () => {
  const id = channelId();
  const app = await open({ url: node.url, channelId: id, role: 'app' });
  const appLog = record(app);
  const web = await open({ url: node.url, channelId: id, role: 'web' });
  const webLog = record(web);

  // Listeners added right after connect() still see the first connection.
  await until(() => appLog.connected.length === 1 && webLog.connected.length === 1, 2000, 'connected events');
  assert.equal(appLog.connected[0].gen, 1);
  assert.equal(appLog.connected[0].raw, false);
  assert.match(appLog.connected[0].node, /^[0-9a-f]{16}$/);

  // More than the node's window of 16: send() waits for room, and keeps the order.
  const count = 100;
  const fromApp = [];
  const fromWeb = [];
  for (let i = 0; i < count; i++) {
    fromApp.push(i % 2 === 0 ? app.send(`app ${i}`) : app.send(new Uint8Array([i, 0xff])));
    fromWeb.push(web.send(i % 3 === 0 ? new Uint8Array([i]).buffer : `web ${i}`));
  }
  const seqs = await within(Promise.all([...fromApp, ...fromWeb]), 10000, 'every send acknowledged');
  const expectedSeqs = Array.from({ length: count }, (_, i) => i + 1);
  assert.deepEqual(seqs, [...expectedSeqs, ...expectedSeqs]);

  await until(() => webLog.messages.length >= count && appLog.messages.length >= count, 5000, 'messages');
  await sleep(100);
  assert.equal(webLog.messages.length, count);
  assert.equal(appLog.messages.length, count);
  webLog.messages.forEach((m, i) => {
    assert.equal(m.seq, i + 1);
    if (i % 2 === 0) {
      assert.equal(m.text, true);
      assert.equal(m.data, `app ${i}`);
    } else {
      assert.equal(m.text, false);
      assert.ok(m.data instanceof Uint8Array);
      assert.deepEqual([...m.data], [i, 0xff]);
    }
  });
  appLog.messages.forEach((m, i) => {
    if (i % 3 === 0) assert.deepEqual([...m.data], [i]);
    else assert.equal(m.data, `web ${i}`);
  });
  assert.equal(app.stats().outboxLength, 0);
  assert.ok(app.stats().acked === count && web.stats().rxHw === count);

  // A message above the node's max frame is refused, and nothing else is disturbed.
  await assert.rejects(app.send(new Uint8Array(20000)), (e) => e instanceof WspairError && e.code === 'too_large');

  await Promise.all([app.close(), web.close()]);
  await assert.rejects(app.send('late'), (e) => e.code === 'closed');
});

test('async iteration yields the events in order and acknowledges as it goes', async () => {
  const id = channelId();
  const app = await open({ url: node.url, channelId: id, role: 'app' });
  const web = await open({ url: node.url, channelId: id, role: 'web' });
  const sent = Promise.all(['one', 'two', 'three'].map((m) => app.send(m)));
  const seen = [];
  const types = [];
  await within(
    (async () => {
      for await (const event of web) {
        types.push(event.type);
        if (event.type === 'message') seen.push(event.data);
        if (seen.length === 3) break;
      }
    })(),
    5000,
    'three messages through async iteration',
  );
  assert.deepEqual(seen, ['one', 'two', 'three']);
  assert.equal(types[0], 'connected');
  assert.ok(types.includes('presence'));
  assert.deepEqual(await within(sent, 3000, 'acks'), [1, 2, 3]);
  await Promise.all([app.close(), web.close()]);
});

test('presence: the peer is online, and offline at once after its close()', async () => {
  const id = channelId();
  const web = await open({ url: node.url, channelId: id, role: 'web' });
  const webLog = record(web);
  const app = await open({ url: node.url, channelId: id, role: 'app' });
  await until(() => webLog.presence.at(-1)?.state === 'online', 3000, 'web sees app online');
  assert.equal(web.presence, 'online');
  await app.send('bye soon');
  const closedAt = performance.now();
  const offline = nextEvent(web, 'presence', (e) => e.state === 'offline');
  await app.close();
  const event = await within(offline, 900, 'offline before the 1 s quiet period');
  assert.equal(event.left, true);
  assert.ok(performance.now() - closedAt < 900);
  assert.ok(!webLog.presence.some((e) => e.state === 'reconnecting'));
  await web.close();
});

test('a peer restarted from scratch: a stream reset, and the displaced client stops', async () => {
  const id = channelId();
  const web = await open({ url: node.url, channelId: id, role: 'web' });
  const webLog = record(web);
  const first = await open({ url: node.url, channelId: id, role: 'app' });
  const firstLog = record(first);
  assert.deepEqual(await within(Promise.all([first.send('a'), first.send('b')]), 3000, 'acks'), [1, 2]);

  // A new client (a new key: a new stream) takes the role.
  const second = await open({ url: node.url, channelId: id, role: 'app' });
  await until(() => webLog.reset.length === 1, 3000, 'the reset');
  assert.equal(webLog.reset[0].oldSid, first.sid);
  assert.equal(webLog.reset[0].deliveredHw, 2);
  await until(() => firstLog.all.at(-1)?.type === 'close', 3000, 'the displaced client stops');
  assert.equal(first.closed, true);
  assert.equal(firstLog.disconnected.at(-1).code, 4001);
  await assert.rejects(first.send('too late'), (e) => e.code === 'closed');

  assert.equal(await within(second.send('c'), 3000, 'ack of the new stream'), 1);
  await until(() => webLog.messages.length === 3, 3000, 'the new stream');
  assert.deepEqual(
    webLog.messages.map((m) => [m.data, m.seq]),
    [
      ['a', 1],
      ['b', 2],
      ['c', 1],
    ],
  );
});

test('a JS client paired with a raw client sends and receives unnumbered messages', async () => {
  const id = channelId();
  const web = await open({ url: node.url, channelId: id, role: 'web' });
  const webLog = record(web);
  const raw = await rawClient(node.url, id, 'app');
  await until(() => webLog.rawpeer.length === 1, 3000, 'rawpeer event');
  assert.deepEqual(await Promise.all([web.send('to raw'), web.send(new Uint8Array([7, 8]))]), [0, 0]);
  await until(() => raw.received.length === 2, 3000, 'raw client receives');
  assert.equal(raw.received[0], 'to raw');
  assert.deepEqual([...raw.received[1]], [7, 8]);
  raw.ws.send('from raw');
  raw.ws.send(new Uint8Array([9]));
  await until(() => webLog.messages.length === 2, 3000, 'JS client receives');
  assert.deepEqual(
    webLog.messages.map((m) => [m.seq, m.text]),
    [
      [0, true],
      [0, false],
    ],
  );
  assert.equal(webLog.messages[0].data, 'from raw');
  assert.deepEqual([...webLog.messages[1].data], [9]);
  raw.ws.close();
  await web.close();
});

test('raw: true connects without the subprotocol; a v1 peer sees a raw peer', async () => {
  const id = channelId();
  const app = await open({ url: node.url, channelId: id, role: 'app', raw: true });
  const appLog = record(app);
  const web = await open({ url: node.url, channelId: id, role: 'web' });
  const webLog = record(web);
  await until(() => webLog.rawpeer.length === 1, 3000, 'rawpeer event');
  assert.equal(app.stats().raw, true);
  assert.equal(await app.send('plain'), 0);
  assert.equal(await web.send('wrapped'), 0);
  await until(() => webLog.messages.length === 1 && appLog.messages.length === 1, 3000, 'both receive');
  assert.equal(webLog.messages[0].data, 'plain');
  assert.equal(appLog.messages[0].data, 'wrapped');
  await Promise.all([app.close(), web.close()]);
});

test('a node without v1: refused without rawFallback, raw with it', async () => {
  const id = channelId();
  await assert.rejects(
    open({ url: nodeV1Off.url, channelId: id, role: 'web' }),
    (e) => e instanceof WspairError && e.code === 'no_subprotocol',
  );
  const web = await open({ url: nodeV1Off.url, channelId: id, role: 'web', rawFallback: true });
  const webLog = record(web);
  assert.equal(web.stats().raw, true);
  const raw = await rawClient(nodeV1Off.url, id, 'app');
  await sleep(100);
  assert.equal(await web.send('over raw'), 0);
  await web.send(new Uint8Array([1, 2]));
  raw.ws.send('back');
  await until(() => raw.received.length === 2 && webLog.messages.length === 1, 3000, 'exchange');
  assert.equal(raw.received[0], 'over raw');
  assert.deepEqual([...raw.received[1]], [1, 2]);
  assert.equal(webLog.messages[0].data, 'back');
  assert.equal(webLog.messages[0].text, true);
  raw.ws.close();
  await web.close();
});

test('malformed input is refused before the upgrade, with the status and reason', async () => {
  await assert.rejects(open({ url: node.url, channelId: 'too-short', role: 'app' }), (e) => {
    assert.ok(e instanceof WspairError);
    assert.equal(e.code, 'refused');
    assert.equal(e.status, 400);
    assert.match(e.reason, /channelId/);
    return true;
  });
  await assert.rejects(
    open({ url: node.url.replace('/channel', '/chat'), channelId: channelId(), role: 'app' }),
    (e) => e.code === 'refused' && e.status === 404 && /no such path/.test(e.reason),
  );
  await assert.rejects(open({ url: node.url, channelId: channelId(), role: 'phone' }), (e) => e.code === 'config');
  await assert.rejects(
    open({ url: node.url, channelId: channelId(), role: 'app', key: 'not hex' }),
    (e) => e.code === 'config',
  );
});

test('messages wait, unacknowledged, until the application listens for them', async () => {
  const id = channelId();
  const sender = await open({ url: node.url, channelId: id, role: 'app' });
  const acked = [];
  const sends = ['m1', 'm2', 'm3'].map((m) => sender.send(m).then((seq) => acked.push(seq)));
  const late = await open({ url: node.url, channelId: id, role: 'web' });
  await until(() => late.stats().rxHw === 3, 3000, 'the messages reach the receiving library');
  await sleep(300);
  assert.deepEqual(acked, [], 'nobody listened: nothing is acknowledged');
  const log = record(late);
  await within(Promise.all(sends), 3000, 'acks once a listener took them');
  assert.deepEqual(
    log.messages.map((m) => m.data),
    ['m1', 'm2', 'm3'],
  );
});

test('close() waiting for acknowledgements ends when another client takes the role', async () => {
  const id = channelId();
  const first = await open({ url: node.url, channelId: id, role: 'app' });
  first.send('to nobody').catch(() => {});
  const closing = first.close().then(
    () => 'resolved',
    (error) => error,
  );
  await open({ url: node.url, channelId: id, role: 'app' });
  const outcome = await within(closing, 3000, 'close() settles');
  assert.ok(outcome instanceof WspairError && outcome.code === 'closed', String(outcome));
});
