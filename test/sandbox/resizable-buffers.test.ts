/**
 * An isolate's memory limit (sandbox.memoryLimitMb) holds for ArrayBuffers too, over real SMTP: isolated-vm
 * enforces it through V8's ArrayBuffer allocator, which a resizable buffer bypassed — a call grew one to
 * 64 MB in a 32 MB isolate, filled it and kept it, and was answered 250. Resizable buffers do not exist in
 * the sandbox: such a call fails closed; fixed-length buffers, their subclasses and slices work as before.
 *
 * Likewise Intl objects, which hold ICU memory outside V8's heap: a Segments object (`segmenter.segment(text)`)
 * keeps its own UTF-16 copy of the text — a 32 MB isolate kept 1.6 GB of them over ten 100 ms calls with its heap
 * at 5 MB (3.2 GB with their iterators) — and a DateTimeFormat ~30 KB. Intl does not exist in the sandbox; the
 * locale-sensitive methods of strings, numbers and dates still work (their ICU objects live for the call only).
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
  const text = 'x'.repeat(2 ** 20); // 1 MB in the heap, once
  export default function (ctx) {
    const local = ctx.address.localPart;
    // 48 MB of native copies of the text, past the 32 MB limit, kept for good.
    if (local === 'segments') for (let i = 0; i < 24; i++) kept.push(new Intl.Segmenter().segment(text));
    if (local === 'formats') for (let i = 0; i < 100; i++) kept.push(new Intl.DateTimeFormat('en', { timeZone: 'Asia/Tokyo' }));
    if (local === 'locale') {
      const when = new Date(Date.UTC(2026, 0, 2, 3, 4, 5)).toLocaleString('en-GB', { timeZone: 'UTC' });
      if (when !== '02/01/2026, 03:04:05') throw new Error('toLocaleString: ' + when);
      if ((1234.5).toLocaleString('de-DE') !== '1.234,5' || 'a'.localeCompare('B', 'en', { sensitivity: 'base' }) !== -1) throw new Error('locale methods');
      if ('I'.toLocaleLowerCase('tr') !== 'ı') throw new Error('toLocaleLowerCase');
    }
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

test('a call that keeps Intl objects (ICU memory outside the isolate\'s limit) fails closed, naming why', async () => {
  const before = server.logs.length;
  for (const local of ['segments', 'formats']) {
    assert.equal(await rcpt(local), FAIL_CLOSED, local);
  }
  const failures = server.logs.slice(before).filter((l) => String(l.msg).startsWith('policy script rcptto failed'));
  assert.equal(failures.length, 2, JSON.stringify(failures));
  for (const l of failures) assert.match(String(l.err), /Intl is not defined/);
});

test('locale-sensitive methods of dates, numbers and strings work as before', async () => {
  assert.match(await rcpt('locale'), /^250 /);
});
