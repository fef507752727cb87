// What the tests share: real wspair nodes and a real redis-server as child processes, on free
// loopback ports, and small functions that wait for events. A missing binary or redis-server fails
// the test loudly: nothing here skips.

import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

/** The shared secret of test clusters (inner.secret needs 16 bytes or more). */
const SECRET = 'wspair-js-tests-inner-secret';

const children = new Set();
process.on('exit', () => {
  for (const child of children) child.kill('SIGKILL');
});

/** The wspair binary built by `cargo build -p wspair`, or $WSPAIR_BIN. */
export function wspairBinary() {
  const bin = process.env.WSPAIR_BIN ?? path.join(repoRoot, 'target/debug/wspair');
  if (!existsSync(bin)) {
    throw new Error(`no wspair binary at ${bin}: run \`cargo build -p wspair\` first (or set WSPAIR_BIN)`);
  }
  return bin;
}

/**
 * A loopback port nothing listens on now, below the kernel's ephemeral range (32768 and up on
 * Linux): a port from that range could be taken as the source port of some outgoing connection
 * between this check and its use, which matters for a node started again on a dead one's port.
 */
export async function freePort() {
  for (;;) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const free = await new Promise((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(false));
      server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves with `promise`, or rejects naming `what` after `ms`. */
export function within(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `check` until it returns true. */
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${what}`);
    await sleep(10);
  }
}

/** A channel id no other test uses: 32 characters of [A-Za-z0-9_]. */
export function channelId() {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  let id = '';
  for (let i = 0; i < 32; i++) id += alphabet[Math.floor(Math.random() * alphabet.length)];
  return id;
}

function startChild(command, args, name) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let output = '';
  const keep = (chunk) => {
    output = (output + chunk).slice(-20000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const spawned = new Promise((resolve, reject) => {
    child.on('spawn', resolve);
    child.on('error', (e) => reject(new Error(`cannot start ${name} (${command}): ${e.message}`)));
  });
  exited.then(() => children.delete(child));
  return { child, exited, spawned, output: () => output };
}

/** Starts redis-server on a free port; resolves once it answers PING. */
export async function startRedis() {
  const port = await freePort();
  const proc = startChild(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    'redis-server',
  );
  await proc.spawned;
  const deadline = Date.now() + 5000;
  while (!(await ping(port))) {
    if (proc.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`redis-server did not start:\n${proc.output()}`);
    }
    await sleep(20);
  }
  return {
    url: `redis://127.0.0.1:${port}`,
    stop: async () => {
      proc.child.kill('SIGKILL');
      await proc.exited;
    },
  };
}

function ping(port) {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (data) => {
      socket.destroy();
      resolve(data.toString().startsWith('+PONG'));
    });
    socket.on('error', () => resolve(false));
  });
}

function healthz(port) {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, path: '/healthz', timeout: 500 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

/**
 * Starts a wspair node on free loopback ports; in cluster mode (`redisUrl`) with the flags the
 * Rust tests use (tests/it/harness/mod.rs, process_cluster_args), on `port` if given. Resolves
 * once /healthz answers. `url` is its WebSocket base URL, `origin` its HTTP one.
 */
export async function startNode({ redisUrl = null, args = [], port: fixedPort = null } = {}) {
  const bin = wspairBinary();
  // A fixed port lets a node started after a kill take the dead one's address.
  const port = fixedPort ?? (await freePort());
  const innerPort = await freePort();
  const all = ['serve', '--outer-ip', '127.0.0.1', '--outer-port', String(port), '--inner-port', String(innerPort), '--admin-port', '0'];
  if (redisUrl) {
    all.push(
      '--registry-redis', redisUrl,
      '--registry-node-ttl', '2s',
      '--registry-timeout', '500ms',
      '--inner-ip', '127.0.0.1',
      '--inner-secret', SECRET,
      '--inner-heartbeat-interval', '200ms',
      '--inner-link-timeout', '1s',
      '--inner-connect-timeout', '2s',
    );
  }
  all.push(...args);
  const proc = startChild(bin, all, 'wspair');
  await proc.spawned;
  const deadline = Date.now() + 10000;
  while (!(await healthz(port))) {
    if (proc.child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`wspair node did not start (${all.join(' ')}):\n${proc.output()}`);
    }
    await sleep(20);
  }
  return {
    port,
    url: `ws://127.0.0.1:${port}/channel`,
    origin: `http://127.0.0.1:${port}`,
    output: proc.output,
    exited: proc.exited,
    /** Sends `signal` and waits for the process to end; keeps its log if $WSPAIR_JS_NODE_LOGS names a directory. */
    kill: async (signal = 'SIGKILL') => {
      if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill(signal);
      await proc.exited;
      if (process.env.WSPAIR_JS_NODE_LOGS) {
        writeFileSync(path.join(process.env.WSPAIR_JS_NODE_LOGS, `node-${port}.log`), proc.output());
      }
    },
  };
}

/** Records a client's events by type; `messages` holds the data of `message` events. */
export function record(client) {
  const log = { all: [], messages: [], presence: [], connected: [], disconnected: [], reset: [], rawpeer: [], refused: [] };
  for (const type of ['message', 'presence', 'connected', 'disconnected', 'reset', 'rawpeer', 'refused', 'close']) {
    client.addEventListener(type, (event) => {
      log.all.push(event);
      if (type === 'message') log.messages.push(event);
      else if (log[type]) log[type].push(event);
    });
  }
  return log;
}

/** Resolves with the next event of `type` on `client` that satisfies `accept`. */
export function nextEvent(client, type, accept = () => true) {
  return new Promise((resolve) => {
    const listener = (event) => {
      if (!accept(event)) return;
      client.removeEventListener(type, listener);
      resolve(event);
    };
    client.addEventListener(type, listener);
  });
}

const openClients = new Set();

/**
 * connect() for tests: the client is remembered, so that `closeClients` (run after each test)
 * ends it even when the test failed half way, and the test process can exit.
 */
export async function open(options) {
  const { connect } = await import('../src/wspair.js');
  const client = await connect(options);
  openClients.add(client);
  return client;
}

/** Closes every client `open` made that is still running. */
export async function closeClients() {
  const clients = [...openClients];
  openClients.clear();
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
}
