// Disk faults while a data hook's header edits are applied: a message over 1 MiB has its own spool file
// and is copied once more, edited, into incoming/; a journal-sized one is edited in memory (failed journal
// syncs are covered by test/spool/journal-faults.test.ts). A write that
// fails (a full disk) or a sync that fails (EIO) during that must give the client a 4xx, spool nothing
// (no half-edited message, no file left in incoming/ or queue/), and the same message sent again once the
// disk is well is spooled whole and edited. node:fs is patched in this process for the spool's files only
// (as test/spool/helpers/faulty-disk.ts does for journal segments); the server and its client are real.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs, { readdirSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let server: TestServer;
const real = { openSync: fs.openSync, closeSync: fs.closeSync, writeSync: fs.writeSync, fdatasync: fs.fdatasync };
/** Open spool files by fd → path, and what is to fail next. */
const paths = new Map<number, string>();
let fail: { kind: 'write' | 'sync'; match: RegExp } | null = null;
let injected = 0;

before(async () => {
  (fs as { openSync: unknown }).openSync = (path: fs.PathLike, ...rest: unknown[]) => {
    const fd = (real.openSync as (...a: unknown[]) => number)(path, ...rest);
    paths.set(fd, String(path));
    return fd;
  };
  (fs as { closeSync: unknown }).closeSync = (fd: number) => { paths.delete(fd); real.closeSync(fd); };
  (fs as { writeSync: unknown }).writeSync = (fd: number, ...rest: unknown[]) => {
    if (fail?.kind === 'write' && fail.match.test(paths.get(fd) ?? '')) {
      fail = null;
      injected++;
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    }
    return (real.writeSync as (...a: unknown[]) => number)(fd, ...rest);
  };
  (fs as { fdatasync: unknown }).fdatasync = (fd: number, cb: (err: Error | null) => void) => {
    if (fail?.kind === 'sync' && fail.match.test(paths.get(fd) ?? '')) {
      fail = null;
      injected++;
      process.nextTick(cb, Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO', errno: -5, syscall: 'fdatasync' }));
      return;
    }
    real.fdatasync(fd, cb);
  };
  syncBuiltinESMExports();
  server = await startTestServer({
    config: 'localDomains: [example.com]\nlisteners:\n  - name: mx\n    listen: 127.0.0.1:0\n    limits: { greetingDelayMs: 0 }\n',
    scripts: { 'data.ts': `export default () => accept({ headers: [{ op: 'remove', name: 'X-Secret' }, { op: 'add', name: 'X-Edited', value: 'yes' }] });` },
  });
});
after(async () => {
  Object.assign(fs, real);
  syncBuiltinESMExports();
  await server?.stop();
});

async function send(body: string): Promise<{ code: number; text: string; id: string | null }> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  try {
    await c.hello();
    const r = await c.sendMail('a@example.org', ['b@example.com'], body);
    return { code: r.code, text: r.text, id: /queued as ([0-9a-z]+)/.exec(r.text)?.[1] ?? null };
  } finally {
    await c.quit();
  }
}

const line = 'z'.repeat(998) + '\r\n';
const LARGE = 'X-Secret: 1\r\nSubject: big\r\n\r\n' + line.repeat(1500); // 1.5 MB: a file of its own, rewritten
const SMALL = 'X-Secret: 1\r\nSubject: small\r\n\r\n' + line.repeat(10); // in the journal, edited in memory

const cases: Array<[string, string, { kind: 'write' | 'sync'; match: RegExp }]> = [
  ['the edited copy of a large message cannot be written (disk full)', LARGE, { kind: 'write', match: /\.edited\.part$/ }],
  ['the edited copy of a large message cannot be synced (EIO)', LARGE, { kind: 'sync', match: /\.edited\.part$/ }],
  ['the edited small message cannot be written to the journal (disk full)', SMALL, { kind: 'write', match: /\.seg$/ }],
];

for (const [name, message, fault] of cases) {
  test(`${name}: 4xx, nothing spooled or left behind; sent again, it is spooled whole and edited`, async () => {
    const spooledBefore = await server.runtime.spool.list();
    const faultsBefore = injected;
    fail = fault;
    const refused = await send(message);
    assert.equal(injected, faultsBefore + 1, 'the fault was hit');
    // A full disk is said as such (452 4.3.1 Insufficient system storage); a failed sync is a local error (451).
    assert.equal(refused.code, fault.kind === 'write' ? 452 : 451, refused.text);
    assert.deepEqual(await server.runtime.spool.list(), spooledBefore, 'nothing spooled');
    assert.deepEqual(readdirSync(server.runtime.spool.incomingDir), [], 'nothing left in incoming/');

    const ok = await send(message);
    assert.equal(ok.code, 250, ok.text);
    const { envelope, message: spooled } = await server.runtime.spool.readForDelivery(ok.id!); // checks the hash or CRC
    assert.equal(envelope.size, spooled.length);
    const text = spooled.toString();
    assert.ok(!text.includes('X-Secret'), 'edited');
    assert.match(text, /\r\nX-Edited: yes\r\nSubject: (big|small)\r\n\r\nzzz/);
    assert.ok(text.endsWith('\r\n\r\n' + message.split('\r\n\r\n')[1]), 'body whole');
    assert.deepEqual(readdirSync(server.runtime.spool.incomingDir), []);
  });
}
