// What one connection may make the service hold: requests read ahead of their answers are bounded by their
// bytes, not only by their count (a request may be maxAttributes × maxLineBytes, 1.6 MB by default), and a
// chunk of many tiny requests is not parsed past that bound.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest, requestText } from './helpers/policy-client.ts';

let s: TestServer;

before(async () => {
  s = await startTestServer({
    // A long time limit: while the first request's script spins, the service reads what follows it.
    config: `
localDomains: [example.org]
sandbox: { timeoutMs: 4000, fastPathMs: 0 }
policyServices:
  - { name: local, listen: 'unix:./policy.sock' }
`,
    scripts: { 'rcptto.ts': `export default (ctx) => { if (ctx.address.address.startsWith('spin@')) for (;;) {} }` },
  });
});
after(() => s?.stop());

/**
 * Sends the text in pieces of 64 KB, each after the last one reached the kernel, and returns how many bytes
 * the service has taken (read, or in the socket buffers between) once that stands still: it stopped reading.
 */
async function takenWhenStill(c: PolicyClient, text: string): Promise<number> {
  let flushed = 0;
  void (async () => {
    for (let i = 0; i < text.length && !c.socket.destroyed; i += 65536) {
      const piece = text.slice(i, i + 65536);
      await new Promise((resolve) => c.socket.write(piece, resolve));
      flushed += piece.length;
    }
  })();
  let last = -1;
  for (let still = 0; still < 5;) {
    await new Promise((r) => setTimeout(r, 100));
    still = flushed === last ? still + 1 : 0;
    last = flushed;
  }
  return last;
}

test('large requests sent behind a slow one: the service reads ahead a bounded number of bytes', async () => {
  const c = await PolicyClient.connect({ path: s.policyAddresses.get('local')!.slice('unix:'.length) });
  const big = requestText(rcptRequest(Object.fromEntries(Array.from({ length: 150 }, (_, i) => [`x_${i}`, 'v'.repeat(8000)]))));
  const text = requestText(rcptRequest({ recipient: 'spin@x.example' })) + big.repeat(40); // 48 MB
  const taken = await takenWhenStill(c, text);
  // One request being decided, one read ahead, and the kernel's socket buffers: a few MB; it was 32 requests, 38 MB.
  assert.ok(taken < 8_000_000, `the service took ${taken} bytes of ${text.length} while one request was decided`);
  c.socket.destroy();
});

test('chunks of tiny requests behind slow ones: the service does not parse them all (heap)', async () => {
  // A 5-byte request is an object of a few hundred bytes: parsed whole, a 64 KB chunk made 13,000 of them.
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const path = s.policyAddresses.get('local')!.slice('unix:'.length);
  const clients = await Promise.all(Array.from({ length: 40 }, () => PolicyClient.connect({ path })));
  gc();
  const before = process.memoryUsage().heapUsed;
  const text = requestText(rcptRequest({ recipient: 'spin@x.example' })) + 'a=b\n\n'.repeat(13_000);
  const taken = await Promise.all(clients.map((c) => takenWhenStill(c, text)));
  assert.ok(taken.every((t) => t === text.length), 'each chunk is read');
  gc();
  const grown = process.memoryUsage().heapUsed - before;
  assert.ok(grown < 30_000_000, `${grown} bytes of heap for ${clients.length} connections of ${text.length} bytes`);
  for (const c of clients) c.socket.destroy();
});
