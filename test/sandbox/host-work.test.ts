/**
 * Work a script makes the server's own thread do stays bounded per call, over real SMTP sockets: each
 * helper's input is copied out of the isolate and handled on the event-loop thread, which no time limit
 * interrupts, so a helper given a huge input (or called for huge output) would hold every connection.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';

const CONFIG = `
localDomains: [example.com]
sandbox: { timeoutMs: 2000, isolates: 1 }
tables: { users: ./users }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    limits: { greetingDelayMs: 0 }
`;

const SCRIPTS: Record<string, string> = {
  // A top level runs once per isolate, within its own time limit: it may look up more than a call may.
  'rcptto.ts': `const known = new Set();
  for (let i = 0; i < 600; i++) if (lookup('users', 'top' + i) !== null) known.add(i);
  export default async function (ctx) {
    const local = ctx.address.localPart;
    if (local === 'huge-key') {
      const key = 'A'.repeat(1 << 22);
      try { lookup('users', key); return reject('looked up'); } catch (e) { return reject(e.message); }
    }
    if (local === 'hash-flood' || local === 'hash-some') {
      const data = 'x'.repeat(1 << 20);
      try {
        for (let i = 0; i < (local === 'hash-flood' ? 64 : 3); i++) sha256(data);
        return reject('hashed');
      } catch (e) { return reject(e.message); }
    }
    if (local === 'lookup-flood' || local === 'lookup-some' || local === 'empty-hash-flood') {
      // New keys each time: the isolate remembers answers, so each one is a call to the server's thread.
      try {
        for (let i = 0; i < (local === 'lookup-some' ? 400 : 1e9); i++) {
          if (local === 'empty-hash-flood') sha256('');
          else lookup('users', 'k' + i);
        }
        return reject('looked up');
      } catch (e) { return reject(e.message); }
    }
    if (local === 'lookup-long-keys') {
      const long = 'k'.repeat(60000);
      try { for (let i = 0; i < 1e9; i++) lookup('users', long + i); } catch (e) { return reject(e.message); }
    }
    if (local === 'ops-flood' || local === 'ops-some') {
      try {
        for (let i = 0; i < (local === 'ops-some' ? 150 : 250); i++) await rate('ops-' + i, 10, 60);
        return reject('counted');
      } catch (e) { return reject(e.message); }
    }
    if (local === 'log-most') {
      const line = 'z'.repeat(250);
      for (let i = 0; i < 1000; i++) log(line);
      return;
    }
    if (local === 'log-flood') {
      const line = 'x'.repeat(8192);
      for (let i = 0; i < 1000; i++) log(ctx.address.address, line);
      return;
    }
    if (lookup('users', local) !== 'ok') return reject('no such user', { code: 550, enhanced: '5.1.1' });
  }`,
};

SCRIPTS['data.ts'] = `export default async (ctx) => {
  const subject = ctx.data.headers.find(([n]) => n === 'Subject')?.[1];
  const reads = subject === 'many' ? 64 : subject === 'bytes' ? 1e9 : 4;
  let n = 0;
  try {
    for (let i = 0; i < reads; i++) n += (await ctx.message.text(subject === 'bytes' ? 1 : 1 << 20)).length;
  } catch (e) { return reject(e.message); }
  return accept({ text: 'read ' + n });
}`;

let server: TestServer;
before(async () => { server = await startTestServer({ config: CONFIG, scripts: SCRIPTS, files: { users: 'bob ok\n' } }); });
after(async () => { await server.stop(); });

async function rcpt(address: string): Promise<string> {
  const c = await SmtpTestClient.connect(server.port('mx'));
  try {
    await c.hello();
    assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
    return (await c.command(`RCPT TO:<${address}>`, 20_000)).text;
  } finally {
    await c.quit();
  }
}

test('lookup() refuses a key the server would have to fold and hash at length (a TypeError in the script)', async () => {
  assert.equal(await rcpt('huge-key@example.com'), '550 5.7.1 lookup(): table and key are longer than 65536 characters');
  assert.match(await rcpt('bob@example.com'), /^250 /);
  assert.equal(await rcpt('mallory@example.com'), '550 5.1.1 no such user');
});

test('what one call logs is bounded in characters, not only in lines', async () => {
  assert.match(await rcpt('log-flood@example.com'), /^250 /);
  const dropped = /further log lines of this call are dropped: more than 1000 lines or 262144 characters/;
  await until('the line saying the rest is dropped', () => server.logs.some((l) => dropped.test(String(l.msg))));
  const lines = server.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('log-flood@example.com '));
  const total = lines.reduce((sum, l) => sum + String(l.msg).length, 0);
  assert.ok(total <= 256 * 1024, `${lines.length} lines, ${total} characters logged by one call`);
  assert.ok(lines.length >= 31, `${lines.length} lines: those within the bound are logged`);
});

test('what all scripts log is bounded per second, not only per call', async () => {
  // Each call logs close to its own bound (250,000 characters): calls after calls wrote it all, a full disk in the
  // making, or a server thread waiting for a stdout pipe that cannot keep up.
  const calls = 32;
  const isLine = (l: Record<string, unknown>): boolean => typeof l.msg === 'string' && l.msg.startsWith('zzzz');
  const c = await SmtpTestClient.connect(server.port('mx'));
  await c.hello();
  assert.match((await c.command('MAIL FROM:<a@sender.example>')).text, /^250 /);
  const start = performance.now();
  for (let i = 0; i < calls; i++) assert.match((await c.command('RCPT TO:<log-most@example.com>', 20_000)).text, /^250 /);
  const seconds = (performance.now() - start) / 1000;
  await c.quit();
  const logged = server.logs.filter(isLine).reduce((sum, l) => sum + String(l.msg).length, 0);
  const perSecond = 1 << 20;
  assert.ok(logged <= perSecond * (Math.ceil(seconds) + 1), `${logged} characters logged in ${seconds.toFixed(1)} s`);
  assert.ok(logged >= 250 * 1000, `${logged} characters: lines within the budget are logged`);
  if (calls * 250_000 > perSecond * (Math.ceil(seconds) + 1)) {
    const warning = /^(\d+) script log lines \(\d+ characters\) dropped: scripts of this process may log 10000 lines and 1048576 characters a second in all/;
    await until('the warning that lines were dropped', () => server.logs.some((l) => warning.test(String(l.msg))));
    // Once the budget is spent the scripts make no more lines until the second ends, rather than lines that are
    // formatted, copied out and parsed by the server's thread only to be dropped: what is dropped in a second is
    // at most the rest of the one call that spent it (1000 lines).
    const dropped = server.logs.map((l) => warning.exec(String(l.msg))).filter((m) => m !== null).map((m) => Number(m[1]));
    assert.ok(dropped.every((n) => n <= 1000), `lines dropped per second: ${dropped.join(', ')}`);
  }
});

test('what one call hashes is bounded in all, not only per helper call (hashing runs on the server\'s thread)', async () => {
  // 64 MiB in 1 MiB pieces used to go through, the event loop hashing for the call's whole time limit.
  assert.equal(await rcpt('hash-flood@example.com'), '550 5.7.1 sha256(): more than 4194304 characters hashed in one call (hashing runs on the server\'s own thread)');
  assert.equal(await rcpt('hash-some@example.com'), '550 5.7.1 hashed', 'a few MiB in one call still hash');
  assert.match(await rcpt('bob@example.com'), /^250 /);
});

test('calls of the synchronous helpers are bounded per call in number, and lookup() keys in characters', async () => {
  // A loop of lookup() with new keys, or of sha256(''), kept the server's thread 25-50% busy for the call's whole
  // time limit, which did not stop it: the isolate was abandoned at the deadline (451), call after call.
  const calls = '550 5.7.1 lookup(): more than 500 calls of lookup(), hashing and message.text() in one call (each runs on the server\'s own thread)';
  assert.equal(await rcpt('lookup-flood@example.com'), calls);
  assert.equal(await rcpt('empty-hash-flood@example.com'), calls.replace('lookup()', 'sha256()'));
  assert.equal(await rcpt('lookup-long-keys@example.com'),
    '550 5.7.1 lookup(): more than 1048576 characters of tables and keys looked up in one call (each lookup runs on the server\'s own thread)');
  assert.equal(await rcpt('lookup-some@example.com'), '550 5.7.1 looked up', 'hundreds of lookups in one call still go through');
  assert.match(await rcpt('bob@example.com'), /^250 /);
});

test('host operations are bounded per call: each costs the server\'s thread, even answered at once', async () => {
  assert.equal(await rcpt('ops-flood@example.com'), '550 5.7.1 more than 200 host operations (rate(), counter(), dns.resolve(), dnsbl()) in one call');
  assert.equal(await rcpt('ops-some@example.com'), '550 5.7.1 counted', 'a hundred or so still go through');
});

test('what one call reads of the message body is bounded in all, not only per text() call (read and decoded on the server\'s thread)', async () => {
  const line = 'y'.repeat(998) + '\r\n';
  const body = line.repeat(1200); // 1.2 MB: a spool file of its own, each text() reads it back
  const send = async (subject: string): Promise<string> => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    try {
      await c.hello();
      return (await c.sendMail('a@sender.example', ['bob@example.com'], `Subject: ${subject}\r\n\r\n${body}`)).text;
    } finally {
      await c.quit();
    }
  };
  // 64 reads of 1 MiB used to go through.
  assert.equal(await send('many'), '550 5.7.1 message.text(): more than 4194304 characters read in one call: keep what it gave');
  assert.match(await send('four'), /^250 2\.0\.0 read 4194304: queued as /);
  // And in number of reads: text(1) in a loop was 4 million calls to the server's thread.
  assert.equal(await send('bytes'), '550 5.7.1 message.text(): more than 500 calls of lookup(), hashing and message.text() in one call (each runs on the server\'s own thread)');
});
