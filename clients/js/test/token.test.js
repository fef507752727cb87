// Client tokens with a node that requires them (--auth-secret): the token option opens the
// connection, setToken() hands the open session a fresh one that outlives the first, a refused
// token is answered with its reason, and a reconnect presents the latest token.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, afterEach, before, test } from 'node:test';

import { channelId, closeClients, nextEvent, open, sleep, startNode, within } from './harness.js';

const SECRET = 'a-test-secret-of-32-bytes-or-more!';
let node;

before(async () => {
  node = await startNode({ args: ['--auth-secret', SECRET] });
});

afterEach(closeClients);

after(async () => {
  await node?.kill();
});

const base64url = (text) => Buffer.from(text).toString('base64url');

/** An HS256 token for `id` and `role` that expires at `exp` (Unix seconds). */
function token(id, role, exp) {
  const head = `${base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${base64url(
    JSON.stringify({ channelId: id, role, exp }),
  )}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

const unixNow = () => Math.floor(Date.now() / 1000);

test('setToken() keeps the session open past the first expiry, and reconnects use it', async () => {
  const id = channelId();
  const firstExp = unixNow() + 2;
  const web = await open({ url: node.url, channelId: id, role: 'web', token: token(id, 'web', firstExp) });
  const app = await open({ url: node.url, channelId: id, role: 'app', token: token(id, 'app', unixNow() + 600) });

  const later = unixNow() + 600;
  const answer = nextEvent(web, 'token');
  web.setToken(token(id, 'web', later));
  const taken = await within(answer, 5000, 'the token answer');
  assert.equal(taken.ok, true);
  assert.equal(taken.expires, later);

  await sleep(Math.max(0, (firstExp + 0.6) * 1000 - Date.now()));
  assert.equal(web.stats().reconnects, 0, 'no 4003, no reconnect');
  const got = nextEvent(app, 'message');
  await web.send('after the first expiry');
  assert.equal((await within(got, 5000, 'a message')).data, 'after the first expiry');

  // The first token has expired: a reconnect works only because it presents the latest.
  await within(web.reconnect(), 5000, 'the reconnect');
  const back = nextEvent(web, 'message');
  await app.send('after the reconnect');
  assert.equal((await within(back, 5000, 'a message')).data, 'after the reconnect');

  // A token for the other role is refused with the reason an upgrade would get.
  await sleep(1100);
  const refused = nextEvent(web, 'token');
  web.setToken(token(id, 'app', later));
  const answerRefused = await within(refused, 5000, 'the refusal');
  assert.equal(answerRefused.ok, false);
  assert.equal(answerRefused.reason, 'token is for role "app", not web');
});
