/**
 * An isolate's memory limit (sandbox.memoryLimitMb) holds for ArrayBuffers too, over real SMTP: isolated-vm
 * enforces it through V8's ArrayBuffer allocator, which a resizable buffer bypassed — a call grew one to
 * 64 MB in a 32 MB isolate, filled it and kept it, and was answered 250. Resizable buffers do not exist in
 * the sandbox: such a call fails closed; fixed-length buffers, their subclasses and slices work as before.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { openTransaction } from '../helpers/smtp-client.ts';

const FAIL_CLOSED = '451 4.3.0 Temporary policy failure, try again later';

// A long time limit: on the old code the 64 MB fill must finish (and be answered 250), however loaded the machine.
const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 10000, memoryLimitMb: 32, isolates: 1 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

const SCRIPTS = {
  'rcptto.js': `const kept = [];
  class Chunk extends ArrayBuffer {}
  export default function (ctx) {
    const local = ctx.address.localPart;
    if (local === 'grow') {
      const b = new ArrayBuffer(1, { maxByteLength: 2 ** 30 });
      b.resize(64 * 2 ** 20);
      new Uint8Array(b).fill(1);
      kept.push(b);
    }
    if (local === 'big') kept.push(new ArrayBuffer(64 * 2 ** 20, { maxByteLength: 64 * 2 ** 20 }));
    if (local === 'subclass') kept.push(new Chunk(1, { maxByteLength: 2 ** 30 }));
    if (local === 'fixed') {
      const b = new ArrayBuffer(16);
      new Uint8Array(b).set([1, 2, 3], 0);
      const c = new Chunk(8).slice(2);
      if (b.resizable || !(c instanceof Chunk) || c.byteLength !== 6 || new Uint8Array(b.slice(1))[0] !== 2) throw new Error('broken buffers');
      if (b.transfer(32).byteLength !== 32 || !ArrayBuffer.isView(new DataView(new ArrayBuffer(4)))) throw new Error('broken buffers');
    }
  }`,
};

let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS }); });
after(async () => { await server.stop(); });

async function rcpt(local: string): Promise<string> {
  const c = await openTransaction(server.port('mx'));
  try {
    return (await c.command(`RCPT TO:<${local}@example.com>`)).text;
  } finally {
    await c.quit();
  }
}

test('a call that makes a resizable ArrayBuffer (to grow past the memory limit) fails closed, naming why', async () => {
  for (const local of ['grow', 'big', 'subclass']) {
    assert.equal(await rcpt(local), FAIL_CLOSED, local);
  }
  const failures = server.logs.filter((l) => String(l.msg).startsWith('policy script rcptto failed'));
  assert.equal(failures.length, 3, JSON.stringify(failures));
  for (const l of failures) assert.match(String(l.err), /resizable buffers \(maxByteLength\) are not available/);
});

test('fixed-length ArrayBuffers, subclasses, slices and transfers work as before', async () => {
  assert.match(await rcpt('fixed'), /^250 /);
  assert.match(await rcpt('someone'), /^250 /);
});
