// A PROXY header that arrives in many pieces (a v2 header of the largest accepted size, sent a byte at a
// time over a real socket on 127.0.0.1) is read with each byte copied a bounded number of times: joining
// every piece onto all before it copied n²/2 bytes (8 MB for this 4 KB header; 2 GB for a 64 KB one).
// Counted, not timed: every Buffer.concat made while the header is read adds its output's size.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { once } from 'node:events';
import { readProxyHeader } from '../../engine/proxy-protocol/read-proxy-header.ts';
import { V2_MAX_PAYLOAD } from '../../engine/proxy-protocol/proxy-header.ts';
import { proxyV1, proxyV2 } from '../helpers/proxy-header.ts';

/** Send `bytes` one at a time, each only once the server's socket has read the one before; what readProxyHeader made of it. */
async function readPiecewise(bytes: Buffer, after: Buffer): Promise<{ header: Awaited<ReturnType<typeof readProxyHeader>>; copied: number; rest: Buffer }> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const client = net.connect({ host: '127.0.0.1', port: (server.address() as net.AddressInfo).port });
  client.setNoDelay(true);
  const [accepted] = await once(server, 'connection') as [net.Socket];
  const concat = Buffer.concat;
  let copied = 0;
  Buffer.concat = function counted(list: readonly Uint8Array[], totalLength?: number): Buffer {
    const out = concat.call(Buffer, list, totalLength);
    copied += out.length;
    return out;
  } as typeof Buffer.concat;
  try {
    const reading = readProxyHeader(accepted, 60_000);
    for (let i = 0; i < bytes.length; i++) {
      client.write(bytes.subarray(i, i + 1));
      // One piece each: wait until the server has it (and its 'readable' has run).
      while (accepted.bytesRead <= i) await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
    }
    client.write(after);
    const header = await reading;
    const counted = copied;
    Buffer.concat = concat;
    let rest = Buffer.alloc(0);
    while (rest.length < after.length) {
      const chunk = accepted.read() as Buffer | null;
      if (chunk) rest = Buffer.concat([rest, chunk]); else await once(accepted, 'readable');
    }
    return { header, copied: counted, rest };
  } finally {
    Buffer.concat = concat;
    client.destroy();
    accepted.destroy();
    server.close();
  }
}

test('a v2 header of the largest accepted size, a byte at a time: each byte copied a bounded number of times, the bytes after it intact', { timeout: 120_000 }, async () => {
  const header = proxyV2('192.0.2.7', 40000, { tlv: Buffer.alloc(V2_MAX_PAYLOAD - 12, 0x41) });
  assert.equal(header.length, 16 + V2_MAX_PAYLOAD);
  const r = await readPiecewise(header, Buffer.from('EHLO x\r\n'));
  assert.equal(r.header.command, 'proxy');
  assert.deepEqual(r.header.command === 'proxy' && r.header.source, { address: '192.0.2.7', port: 40000 });
  assert.equal(r.rest.toString(), 'EHLO x\r\n');
  // The 16-byte fixed part is rejoined as it grows (16²/2), then the whole header once.
  assert.ok(r.copied <= 2 * header.length, `${r.copied} bytes copied for a ${header.length}-byte header`);
});

test('a v1 line a byte at a time is still read (rejoined as it grows: at most 107 bytes)', { timeout: 120_000 }, async () => {
  const line = Buffer.from(proxyV1('2001:db8::5', 1234, '2001:db8::1', 25));
  const r = await readPiecewise(line, Buffer.from('QUIT\r\n'));
  assert.deepEqual(r.header.command === 'proxy' && r.header.source, { address: '2001:db8::5', port: 1234 });
  assert.equal(r.rest.toString(), 'QUIT\r\n');
  assert.ok(r.copied <= 107 * 107, `${r.copied} bytes copied`);
});
