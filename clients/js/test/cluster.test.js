// Two wspair nodes sharing a real redis-server: a client that reconnects lands on the other
// node and resumes, a node killed with SIGKILL mid-stream loses and duplicates nothing, and a
// draining node moves its clients (goaway) without a presence change at their peers.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';

import { channelId, closeClients, open, record, sleep, startNode, startRedis, until, within } from './harness.js';

let redis;
const nodes = [];

before(async () => {
  redis = await startRedis();
});

afterEach(closeClients);

after(async () => {
  await Promise.all(nodes.map((n) => n.kill()));
  await redis?.stop();
});

async function clusterNode(args = []) {
  const node = await startNode({ redisUrl: redis.url, args });
  nodes.push(node);
  return node;
}

/**
 * Sends `count` numbered text messages `${label} ${i}`, a few at a time with short pauses, so
 * that they are still flowing when the test breaks something. Resolves with the send promises.
 */
/** Two nodes, an app on the first and a web on the second (each with the other as a fallback),
 * recorded, and online to each other. */
async function crossNodePair() {
  const [a, b] = await Promise.all([clusterNode(), clusterNode()]);
  const id = channelId();
  const app = await open({ urls: [a.url, b.url], channelId: id, role: 'app' });
  const appLog = record(app);
  const web = await open({ urls: [b.url, a.url], channelId: id, role: 'web' });
  const webLog = record(web);
  await until(() => app.presence === 'online' && web.presence === 'online', 5000, 'online across nodes');
  return { a, b, app, appLog, web, webLog };
}

async function stream(client, label, count) {
  const sends = [];
  for (let i = 0; i < count; i++) {
    sends.push(client.send(`${label} ${i}`));
    if (i % 10 === 9) await sleep(4);
  }
  return sends;
}

/** Checks that `log` got exactly `${label} 0` .. `${label} ${count - 1}`, in order, once. */
function assertExactlyOnceInOrder(log, label, count) {
  const got = log.messages.map((m) => m.data);
  const want = Array.from({ length: count }, (_, i) => `${label} ${i}`);
  assert.equal(got.length, count, `${label}: ${got.length} messages, want ${count}`);
  assert.deepEqual(got, want, `${label}: every message once and in order`);
  assert.deepEqual(
    log.messages.map((m) => m.seq),
    want.map((_, i) => i + 1),
  );
}

test('a client forced to reconnect lands on the other node and resumes', async () => {
  const { a, app, appLog, web, webLog } = await crossNodePair();
  await until(() => appLog.connected.length === 1 && webLog.connected.length === 1, 3000, 'connected');
  assert.notEqual(appLog.connected[0].node, webLog.connected[0].node, 'the pair starts across two nodes');

  const count = 400;
  const appStream = stream(app, 'app', count);
  const webStream = stream(web, 'web', count);
  await until(() => webLog.messages.length >= 50, 5000, 'the stream under way');
  await within(app.reconnect(), 5000, 'the reconnect');
  assert.equal(app.stats().reconnects, 1);
  await until(() => appLog.connected.length === 2, 2000, 'the second connected event');
  assert.equal(appLog.connected[1].gen, 2);
  assert.equal(appLog.connected[1].node, webLog.connected[0].node, 'the app moved to the web\'s node');

  const sends = [...(await appStream), ...(await webStream)];
  await within(Promise.all(sends), 15000, 'every message acknowledged');
  await until(() => webLog.messages.length >= count && appLog.messages.length >= count, 5000, 'every message');
  await sleep(200);
  assertExactlyOnceInOrder(webLog, 'app', count);
  assertExactlyOnceInOrder(appLog, 'web', count);
  assert.ok(!webLog.presence.some((p) => p.state === 'offline'), 'the web never saw the app offline');
  assert.equal(webLog.reset.length + appLog.reset.length, 0, 'no stream reset');
  await Promise.all([app.close(), web.close()]);
});

test('a node killed mid-stream: its client moves, every message arrives once and in order', async () => {
  const { a, app, appLog, web, webLog } = await crossNodePair();

  const count = 1000;
  const appStream = stream(app, 'app', count);
  const webStream = stream(web, 'web', count);
  await until(() => webLog.messages.length >= 150 && appLog.messages.length >= 150, 5000, 'mid-stream');
  await a.kill('SIGKILL');
  const killedAt = performance.now();

  const sends = [...(await appStream), ...(await webStream)];
  await within(Promise.all(sends), 20000, 'every message acknowledged after the kill');
  await until(() => webLog.messages.length >= count && appLog.messages.length >= count, 5000, 'every message');
  await sleep(200);
  assertExactlyOnceInOrder(webLog, 'app', count);
  assertExactlyOnceInOrder(appLog, 'web', count);
  assert.ok(appLog.disconnected.length >= 1, 'the app saw its node go');
  assert.equal(appLog.connected.at(-1).node, webLog.connected[0].node, 'the app is on the surviving node');
  assert.equal(webLog.reset.length + appLog.reset.length, 0, 'no stream reset');
  assert.ok(!webLog.presence.some((p) => p.state === 'offline'));
  console.log(`resumed ${Math.round(performance.now() - killedAt)} ms after the kill`);
  await Promise.all([app.close(), web.close()]);
});

test('a draining node sends goaway: the client moves first, its peer sees no change', async () => {
  const [a, b] = await Promise.all([
    clusterNode(['--drain-spread', '200ms', '--drain-timeout', '5s']),
    clusterNode(),
  ]);
  const id = channelId();
  const app = await open({ urls: [a.url, b.url], channelId: id, role: 'app' });
  const appLog = record(app);
  const web = await open({ urls: [b.url], channelId: id, role: 'web' });
  const webLog = record(web);
  await until(() => webLog.presence.at(-1)?.state === 'online', 5000, 'online');
  const presenceBefore = webLog.presence.length;

  const count = 300;
  const appStream = stream(app, 'app', count);
  await until(() => webLog.messages.length >= 30, 5000, 'mid-stream');
  await a.kill('SIGTERM');
  const sends = await appStream;
  await within(Promise.all(sends), 15000, 'every message acknowledged');
  await until(() => webLog.messages.length >= count, 5000, 'every message');
  await sleep(200);
  assertExactlyOnceInOrder(webLog, 'app', count);
  assert.equal(appLog.disconnected.length, 0, 'make before break: no disconnected event');
  assert.equal(appLog.connected.at(-1).node, webLog.connected[0].node);
  assert.equal(webLog.presence.length, presenceBefore, 'no presence change at the peer');
  await Promise.all([app.close(), web.close()]);
});
