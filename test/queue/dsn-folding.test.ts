// The bounce's text part folds each recipient's line at spaces. Folding looked for a space in the indentation
// it had just added, so a word over 72 characters on a continuation line made it add the same line for ever:
// a common "550 5.1.1 <a-long-address@example.com>: Recipient address rejected: User unknown" for an address
// of 73+ characters, or any next hop's long token, hung the queue process at the bounce (memory growing; under
// postern serve its watchdog killed it, and the restarted one hung on the same message). Built in a worker
// thread here, so that the old code fails the test by its deadline instead of hanging it. The returned header
// likewise: a field of 5000 characters (or a NUL) was copied as it was, and a next hop refused the bounce.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';

const BUILD = `
const { parentPort } = require('node:worker_threads');
import(${JSON.stringify(new URL('../../engine/queue/dsn.ts', import.meta.url).href)}).then(({ buildDsn }) => {
  const address = 'a-rather-long-local-part-of-forty-chars@a-subdomain.of-a-long-domain.example.com';
  const diagnostics = [
    '550 5.1.1 <' + address + '>: Recipient address rejected: User unknown in virtual mailbox table',
    '550 5.7.1 ' + 'x'.repeat(5000),
    '550 ' + 'y'.repeat(200) + ' ' + 'z'.repeat(100),
  ];
  const raw = buildDsn({
    hostname: 'postern.test', original: { id: 'q1', sender: 'a@origin.test', receivedAt: new Date().toISOString() },
    originalMessage: Buffer.from('Subject: x\\r\\nX-Long: ' + 'h'.repeat(5000) + '\\r\\nX-Nul: a\\0b\\r\\n\\r\\nbody\\r\\n'), expired: false,
    failed: diagnostics.map((d, i) => ({ recipient: i ? 'b@example.com' : address, status: '5.1.1', diagnostic: d, remoteReply: true, remoteMta: 'mx.example.com[192.0.2.1]:25' })),
  }).toString('latin1');
  parentPort.postMessage(raw);
});
`;

test('a bounce whose diagnostics hold words longer than a line is built, every line within 998 characters, every word kept', { timeout: 60_000 }, async () => {
  const worker = new Worker(BUILD, { eval: true });
  let timer: NodeJS.Timeout | undefined;
  try {
    const raw = await new Promise<string>((resolve, reject) => {
      timer = setTimeout(() => reject(new Error('buildDsn did not return within 30 s (folding loops)')), 30_000);
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    const lines = raw.split('\r\n');
    assert.ok(lines.every((l) => l.length <= 998), `longest line: ${Math.max(...lines.map((l) => l.length))}`);
    const text = raw.slice(raw.indexOf('This is the mail system'), raw.indexOf('Content-Description: Delivery report'));
    const words = text.replace(/\r\n {4}/g, ' ').replace(/\s+/g, ' ');
    assert.match(words, /<a-rather-long-local-part-of-forty-chars@a-subdomain\.of-a-long-domain\.example\.com>: Recipient address rejected: User unknown in virtual mailbox table/);
    assert.equal((text.match(/x{100,}/g) ?? []).join('').length, 5000, 'the long token is kept, in pieces');
    // The returned header's 5000-character field and NUL: quoted-printable, kept whole once decoded.
    assert.ok(!raw.includes('\0'), 'no NUL in the bounce');
    const returned = raw.slice(raw.indexOf('Content-Type: text/rfc822-headers'));
    assert.match(returned, /^Content-Type: text\/rfc822-headers\r\nContent-Transfer-Encoding: quoted-printable\r\n/);
    const decoded = returned.replace(/=\r\n/g, '').replace(/=([0-9A-F]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
    assert.ok(decoded.includes(`X-Long: ${'h'.repeat(5000)}\r\nX-Nul: a\0b\r\n`));
  } finally {
    clearTimeout(timer);
    await worker.terminate();
  }
});
