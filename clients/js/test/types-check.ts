// Compiled by scripts/test-js.sh with `tsc --noEmit`: checks that index.d.ts describes the API
// the README shows (this file is never run).

import { connect, WspairClient, WspairError, type PresenceState } from 'wspair-client';

async function page(): Promise<void> {
  const client: WspairClient = await connect({
    urls: ['wss://relay.example/channel'],
    channelId: '0123456789abcdef0123456789abcdef',
    role: 'web',
  });
  client.addEventListener('message', (event) => {
    const data: string | Uint8Array = event.data;
    const seq: number = event.seq;
    console.log(data, seq);
  });
  client.addEventListener('presence', (event) => {
    const state: PresenceState = event.state;
    console.log(state, event.left);
  });
  const seq: number = await client.send('hello');
  await client.send(new Uint8Array([1, 2, 3]));
  for await (const event of client) {
    if (event.type === 'message') console.log(event.data);
    else if (event.type === 'reset') console.log(event.oldSid, event.deliveredHw);
  }
  try {
    await client.close();
  } catch (e) {
    if (e instanceof WspairError && e.code === 'close_timed_out') console.log(e.unacknowledged, seq);
  }
}

void page;
