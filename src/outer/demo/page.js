// The demo page's behaviour: pick the role and channel from the address, connect with the
// wspair.v1 library, and show messages, delivery acks and the peer's presence.
//
// Without `?join=`, this page is the `web` side of a fresh channel and shows a link (and its QR
// code) that opens the `app` side. State is mirrored in `data-*` attributes so that a browser
// test can read it without scraping text.
import { connect } from './wspair.js';

const ID_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_';

/** A fresh channel id: 32 characters of [A-Za-z0-9_], from the browser's CSPRNG. */
function freshChannelId() {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  return Array.from(bytes, (b) => ID_ALPHABET[b % ID_ALPHABET.length]).join('');
}

const $ = (id) => document.getElementById(id);

function setState(element, state, label = state) {
  element.dataset.state = state;
  element.textContent = label;
}

function addLine(className, text, meta = '') {
  const li = document.createElement('li');
  li.className = className;
  li.append(document.createTextNode(text));
  if (meta !== null) {
    const span = document.createElement('span');
    span.className = 'meta';
    span.textContent = meta;
    li.append(span);
  }
  $('messages').append(li);
  li.scrollIntoView({ block: 'nearest' });
  return li;
}

async function main() {
  const params = new URLSearchParams(location.search);
  const joined = params.get('join');
  if (joined !== null && !/^[A-Za-z0-9_]{32}$/.test(joined)) {
    throw new Error('the link is broken: its channel id must be 32 letters, digits or _');
  }
  const role = joined ? 'app' : 'web';
  const channelId = joined || freshChannelId();
  const path = document.querySelector('meta[name="wspair-path"]').content;
  const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}${path}`;

  document.body.dataset.role = role;
  $('role').textContent = role;
  $('channel').textContent = channelId;
  if (role === 'web') {
    const link = `${location.origin}/?join=${channelId}`;
    $('join-link').href = link;
    $('join-link').textContent = link;
    $('qr').src = `/demo/qr.svg?text=${encodeURIComponent(link)}`;
    $('invite').hidden = false;
  }

  const client = await connect({ url, channelId, role });
  setState($('self-state'), 'connected');

  client.addEventListener('connected', () => setState($('self-state'), 'connected'));
  client.addEventListener('close', () => {
    setState($('self-state'), 'closed', `closed: another page took the ${role} role`);
    $('send').disabled = true;
  });
  client.addEventListener('disconnected', () => setState($('self-state'), 'reconnecting'));
  client.addEventListener('presence', (event) => {
    const { state } = event;
    setState($('peer-state'), state);
    addLine('event', `peer ${state}`, null);
  });
  client.addEventListener('reset', () => {
    addLine('event', 'the peer restarted: what its last page had not received is lost', null);
  });
  client.addEventListener('message', (event) => {
    const { data } = event;
    const text = typeof data === 'string' ? data : `(${data.byteLength} bytes)`;
    addLine('theirs', text, null).dataset.text = text;
  });

  $('send-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const text = $('text').value;
    if (!text) return;
    $('text').value = '';
    const li = addLine('mine', text, 'sending');
    li.dataset.text = text;
    li.dataset.acked = 'false';
    try {
      await client.send(text);
      li.dataset.acked = 'true';
      li.querySelector('.meta').textContent = '\u2713 delivered';
    } catch (error) {
      li.querySelector('.meta').textContent = `not sent: ${error.message}`;
    }
  });
  window.wspairDemo = { client, role, channelId };
  document.body.dataset.ready = 'true';
}

main().catch((error) => {
  setState($('self-state'), 'closed', `failed: ${error.message}`);
  console.error(error);
});
