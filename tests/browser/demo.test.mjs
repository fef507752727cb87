// The demo page in a real browser: a web page and an app page pair through two nodes, exchange
// messages both ways, and keep every message (exactly once, in order) across the death of the
// app page's node and the start of another on its address; the web page shows the app
// `reconnecting`, then `online`. Ends with a screenshot of the two pages in docs/demo.png.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { freePort, repoRoot, startNode, startRedis } from '../../clients/js/test/harness.js';

const DOCS_DIR = path.join(repoRoot, 'docs');

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// Headless, and quiet on a machine without internet: no background fetches that fail.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

async function send(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

/** The texts of the messages a page received, in the order it shows them. */
function received(page) {
  return page.$$eval('#messages li.theirs', (lis) => lis.map((li) => li.dataset.text));
}

/** Waits until the page shows `texts` received, then checks it shows nothing else. */
async function expectReceived(page, texts) {
  await page.waitForFunction(
    (n) => document.querySelectorAll('#messages li.theirs').length >= n,
    texts.length,
    { timeout: 20000 },
  );
  assert.deepEqual(await received(page), texts);
}

async function expectAllAcked(page, count) {
  await page.waitForFunction(
    (n) => {
      const mine = [...document.querySelectorAll('#messages li.mine')];
      return mine.length === n && mine.every((li) => li.dataset.acked === 'true');
    },
    count,
    { timeout: 20000 },
  );
}

const peerState = (page, state, timeout = 20000) =>
  page.waitForSelector(`#peer-state[data-state="${state}"]`, { timeout });

test('two pages pair, talk, and survive the death of a node', { timeout: 120000 }, async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop());
  const [webPort, appPort] = [await freePort(), await freePort()];
  const demo = ['--outer-demo', 'true'];
  const webNode = await startNode({ port: webPort, redisUrl: redis.url, args: demo });
  t.after(() => webNode.kill());
  let appNode = await startNode({ port: appPort, redisUrl: redis.url, args: demo });
  t.after(() => appNode.kill());

  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const web = await browser.newPage({ viewport: { width: 900, height: 720 } });
  const app = await browser.newPage({ viewport: { width: 390, height: 720 } });
  for (const page of [web, app]) page.on('pageerror', (e) => console.error('page error:', e));

  // The web page makes a channel and offers it; the app page joins it on the other node.
  await web.goto(`${webNode.origin}/`);
  await web.waitForSelector('body[data-ready="true"]');
  const channelId = await web.textContent('#channel');
  assert.match(channelId, /^[A-Za-z0-9_]{32}$/);
  assert.equal(await web.getAttribute('#join-link', 'href'), `${webNode.origin}/?join=${channelId}`);
  const qr = await web.evaluate(async () => {
    const img = document.getElementById('qr');
    await img.decode();
    return { width: img.naturalWidth, src: img.getAttribute('src') };
  });
  assert.ok(qr.width >= 200, `the QR code is drawn (${JSON.stringify(qr)})`);

  await app.goto(`${appNode.origin}/?join=${channelId}`);
  await app.waitForSelector('body[data-ready="true"]');
  assert.equal(await app.textContent('#role'), 'app');
  await peerState(web, 'online');
  await peerState(app, 'online');

  // Both ways, each message acknowledged by the other page.
  for (const n of [1, 2, 3]) {
    await send(web, `from web ${n}`);
    await send(app, `from app ${n}`);
  }
  await expectAllAcked(web, 3);
  await expectAllAcked(app, 3);
  await expectReceived(app, ['from web 1', 'from web 2', 'from web 3']);
  await expectReceived(web, ['from app 1', 'from app 2', 'from app 3']);

  // The app page's node dies. The web page sees its peer reconnecting; both keep sending.
  const killedAt = Date.now();
  await appNode.kill();
  await peerState(web, 'reconnecting');
  const reconnectingAfter = Date.now() - killedAt;
  await send(web, 'from web 4 (app away)');
  await send(app, 'from app 4 (node down)');

  // Another node takes the dead one's address: the app page comes back to it and resumes.
  appNode = await startNode({ port: appPort, redisUrl: redis.url, args: demo });
  await peerState(web, 'online');
  await peerState(app, 'online');
  const onlineAfter = Date.now() - killedAt;
  await send(web, 'from web 5');
  await send(app, 'from app 5');

  await expectAllAcked(web, 5);
  await expectAllAcked(app, 5);
  await expectReceived(app, ['from web 1', 'from web 2', 'from web 3', 'from web 4 (app away)', 'from web 5']);
  await expectReceived(web, ['from app 1', 'from app 2', 'from app 3', 'from app 4 (node down)', 'from app 5']);
  const webEvents = await web.$$eval('#messages li.event', (lis) => lis.map((li) => li.textContent));
  assert.deepEqual(webEvents, ['peer online', 'peer reconnecting', 'peer online']);
  console.log(`app node killed: web page showed reconnecting after ${reconnectingAfter} ms, online after ${onlineAfter} ms`);

  // The two pages side by side, whole, for the README.
  const shots = [await web.screenshot({ fullPage: true }), await app.screenshot({ fullPage: true })];
  const sheet = await browser.newPage({ viewport: { width: 1320, height: 400 } });
  await sheet.setContent(
    `<body style="margin:0;padding:10px;background:#cfd6e4;display:inline-flex;align-items:flex-start;gap:10px">${shots
      .map((png) => `<img src="data:image/png;base64,${png.toString('base64')}" style="border-radius:6px">`)
      .join('')}</body>`,
  );
  await sheet.waitForFunction(() => [...document.images].every((img) => img.complete));
  mkdirSync(DOCS_DIR, { recursive: true });
  writeFileSync(path.join(DOCS_DIR, 'demo.png'), await sheet.screenshot({ fullPage: true }));
});
