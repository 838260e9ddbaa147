// Shadow scripts on live traffic (engine/shadow/): a listener's shadowScripts run beside its live scripts.
// Real SMTP sessions on 127.0.0.1: the client-visible replies stay the live scripts' while the differences
// are logged and counted (metric and status); a shadow script that throws or loops forever changes no
// reply and does not hold one up (the reply arrives while the looping call is still running — counters,
// not timings); calls beyond what the shadow's isolates can take are skipped; a reload applies.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { metrics } from '../../engine/metrics/metrics.ts';

async function shadowCount(listener: string, hook: string, result: string): Promise<number> {
  return (await metrics.shadowCalls.get()).values.find((v) => v.labels.listener === listener && v.labels.hook === hook && v.labels.result === result)?.value ?? 0;
}
const inFlight = async (): Promise<number> => (await metrics.shadowInFlight.get()).values[0]?.value ?? 0;

/** A config whose shadowScripts folder is <dir>/shadow, filled before the server starts. */
async function start(listener: string, live: Record<string, string>, shadow: Record<string, string>, sandbox: object = {}): Promise<TestServer & { shadowDir: string }> {
  const shadowDir = await mkdtemp(join(tmpdir(), 'postern-shadow-'));
  for (const [name, text] of Object.entries(shadow)) await writeFile(join(shadowDir, name), text);
  const server = await startTestServer({
    config: configYaml({
      localDomains: ['example.com'],
      sandbox: { ...sandbox },
      admin: { listen: '127.0.0.1:0' },
      listeners: [testListener(listener, { shadowScripts: shadowDir })],
    } as never),
    scripts: live,
  });
  const stop = server.stop.bind(server);
  return Object.assign(server, { shadowDir, stop: async () => { await stop(); await rm(shadowDir, { recursive: true, force: true }); } });
}

async function status(server: TestServer): Promise<{ shadow: Record<string, Record<string, number>> }> {
  const a = server.admin!.address;
  return await (await fetch(`http://127.0.0.1:${a.port}/status`)).json() as { shadow: Record<string, Record<string, number>> };
}

test('differences are logged and counted; the client gets the live replies; nothing extra is spooled', async () => {
  const server = await start('shadow-diff', {
    'rcptto.ts': `export default function (ctx) { if (ctx.address.localPart === 'blocked') return reject('No'); }`,
  }, {
    'rcptto.ts': `export default function (ctx) { if (ctx.address.localPart.startsWith('b')) return reject('No'); }`,
  });
  try {
    const c = await SmtpTestClient.connect(server.port('shadow-diff'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    assert.equal((await c.command('RCPT TO:<ok@example.com>')).text, '250 2.1.5 Accepted');
    assert.equal((await c.command('RCPT TO:<bob@example.com>')).text, '250 2.1.5 Accepted'); // the shadow would refuse
    assert.equal((await c.command('RCPT TO:<blocked@example.com>')).text, '550 5.7.1 No');
    assert.equal((await c.command('DATA')).code, 354);
    assert.match((await c.command('Subject: x\r\n\r\nhi\r\n.')).text, /^250 2\.0\.0 Ok: queued as /);
    await c.quit();
    await until('three shadow calls settled', async () => (await shadowCount('shadow-diff', 'rcptto', 'same')) + (await shadowCount('shadow-diff', 'rcptto', 'different')) === 3);
    assert.equal(await shadowCount('shadow-diff', 'rcptto', 'different'), 1);
    assert.equal(await shadowCount('shadow-diff', 'rcptto', 'same'), 2);
    const diff = server.logs.filter((l) => l.msg === 'shadow verdict differs: rcptto live none, shadow reject {"text":"No"}');
    assert.equal(diff.length, 1);
    assert.equal(diff[0]!.hook, 'rcptto');
    assert.equal(typeof diff[0]!.cid, 'string');
    assert.equal(diff[0]!.cid, server.logs.find((l) => l.msg?.toString().includes('accepted from=<a@example.org>'))!.cid);
    assert.equal((await server.spools.list()).length, 1);
    assert.deepEqual((await status(server)).shadow['shadow-diff'], { same: 2, different: 1, error: 0, skipped: 0 });
  } finally {
    await server.stop();
  }
});

test('a shadow script that throws or loops forever changes no reply and holds none up; beyond its isolates calls are skipped', async () => {
  const server = await start('shadow-bad', {
    'mailfrom.ts': 'export default function () {}',
    'rcptto.ts': 'export default function () {}',
  }, {
    'mailfrom.ts': `export default function () { throw new Error('candidate bug'); }`,
    'rcptto.ts': 'export default function () { for (;;) {} }',
  }, { isolates: 1, timeoutMs: 5000 });
  try {
    const c = await SmtpTestClient.connect(server.port('shadow-bad'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, '250 2.1.0 Accepted');
    await until('the throwing shadow counted as an error', async () => (await shadowCount('shadow-bad', 'mailfrom', 'error')) === 1);
    assert.ok(server.logs.some((l) => l.msg === 'shadow script mailfrom failed (not fatal)' && String(l.err).includes('candidate bug')));
    // The first RCPT's shadow call loops until its time limit; its live reply is already here.
    assert.equal((await c.command('RCPT TO:<one@example.com>')).text, '250 2.1.5 Accepted');
    assert.equal(await shadowCount('shadow-bad', 'rcptto', 'error'), 0, 'the reply came while the looping shadow call was still running');
    assert.ok(await inFlight() >= 1);
    // One isolate takes two calls in flight (one running, one waiting): the next ones are skipped, not queued.
    for (const r of ['two', 'three', 'four', 'five']) assert.equal((await c.command(`RCPT TO:<${r}@example.com>`)).text, '250 2.1.5 Accepted');
    assert.equal(await shadowCount('shadow-bad', 'rcptto', 'error'), 0);
    await until('the calls over the limit skipped', async () => (await shadowCount('shadow-bad', 'rcptto', 'skipped')) === 3);
    assert.equal((await c.command('DATA')).code, 354);
    assert.match((await c.command('Subject: x\r\n\r\nhi\r\n.')).text, /^250 2\.0\.0 Ok: queued as /);
    await c.quit();
    // The looping call ends at its time limit, counted as an error.
    await until('the looping shadow call timed out', async () => (await shadowCount('shadow-bad', 'rcptto', 'error')) >= 1, { timeoutMs: 30_000 });
    assert.ok(server.logs.some((l) => l.msg === 'shadow script rcptto failed (not fatal)' && l.kind === 'timeout'));
    assert.equal((await status(server)).shadow['shadow-bad']!.skipped, 3);
  } finally {
    await server.stop();
  }
});

test('hot reload applies to shadow scripts', async () => {
  const server = await start('shadow-reload', {
    'rcptto.ts': 'export default function () {}',
  }, {
    'rcptto.ts': 'export default function () {}',
  });
  try {
    const send = async (rcpt: string): Promise<void> => {
      const c = await SmtpTestClient.connect(server.port('shadow-reload'));
        await c.hello();
      await c.command('MAIL FROM:<a@example.org>');
      assert.equal((await c.command(`RCPT TO:<${rcpt}>`)).text, '250 2.1.5 Accepted');
      await c.quit();
    };
    await send('x@example.com');
    await until('the first shadow call settled', async () => (await shadowCount('shadow-reload', 'rcptto', 'same')) === 1);
    const reloaded = new Promise((resolve) => { const off = server.reloader.onReload((o) => { off(); resolve(o); }); });
    await writeFile(join(server.shadowDir, 'rcptto.ts'), `export default function () { return defer('candidate'); }`);
    assert.partialDeepStrictEqual(await reloaded, { ok: true, changed: true });
    await send('y@example.com');
    await until('the reloaded shadow differs', async () => (await shadowCount('shadow-reload', 'rcptto', 'different')) === 1);
    assert.ok(server.logs.some((l) => l.msg === 'shadow verdict differs: rcptto live none, shadow defer {"text":"candidate"}'));
  } finally {
    await server.stop();
  }
});

test('shadow scripts count in a store namespace of their own: they never use up the live limits', async () => {
  const limited = `export default async function () {
  const r = await rate('per-server', 2, 3600);
  if (!r.allowed) return defer('Slow down', { code: 450, enhanced: '4.7.1' });
}`;
  const server = await start('shadow-store', { 'mailfrom.ts': limited }, { 'mailfrom.ts': limited });
  try {
    const c = await SmtpTestClient.connect(server.port('shadow-store'));
    await c.hello();
    for (let i = 1; i <= 2; i++) {
      assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, '250 2.1.0 Accepted', `message ${i}`);
      // Each shadow call has counted before the next live one: a shared count would refuse the second.
      await until(`shadow call ${i} settled`, async () => (await shadowCount('shadow-store', 'mailfrom', 'same')) === i);
      await c.command('RSET');
    }
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, '450 4.7.1 Slow down');
    await until('the third shadow call settled', async () => (await shadowCount('shadow-store', 'mailfrom', 'same')) === 3);
    assert.equal(await shadowCount('shadow-store', 'mailfrom', 'different'), 0);
    await c.quit();
  } finally {
    await server.stop();
  }
});

test('a shadow script counting many keys in the memory store never pushes out a live script\'s count (held apart, each side bounded)', async () => {
  // With store.maxKeys 1000, each shadow call counts 190 keys never seen again (a candidate that keys per
  // message): the live scripts' side was the same one, its oldest key — the live limit's — was dropped, and
  // the live limit started again from 0.
  const shadowDir = await mkdtemp(join(tmpdir(), 'postern-shadow-'));
  await writeFile(join(shadowDir, 'mailfrom.ts'), `export default async function () {
  const n = await counter('calls').add(1, 3600);
  for (let i = 0; i < 190; i++) await rate('once:' + n + ':' + i, 5, 3600);
  return accept();
}`);
  const server = await startTestServer({
    config: configYaml({
      localDomains: ['example.com'],
      sandbox: { timeoutMs: 10000 },
      store: { maxKeys: 1000 },
      admin: { listen: '127.0.0.1:0' },
      listeners: [testListener('shadow-keys', { shadowScripts: shadowDir })],
    } as never),
    scripts: { 'mailfrom.ts': `export default async function () {
  const r = await rate('per-server', 2, 3600);
  if (!r.allowed) return defer('Slow down', { code: 450, enhanced: '4.7.1' });
}` },
  });
  const shadowCalls = async (): Promise<number> => await shadowCount('shadow-keys', 'mailfrom', 'same')
    + await shadowCount('shadow-keys', 'mailfrom', 'different') + await shadowCount('shadow-keys', 'mailfrom', 'error');
  try {
    const c = await SmtpTestClient.connect(server.port('shadow-keys'));
    await c.hello();
    for (let i = 1; i <= 8; i++) {
      assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, i <= 2 ? '250 2.1.0 Accepted' : '450 4.7.1 Slow down', `message ${i}`);
      await until(`shadow call ${i} settled`, async () => (await shadowCalls()) === i);
      await c.command('RSET');
    }
    assert.equal(await shadowCount('shadow-keys', 'mailfrom', 'error'), 0, 'the shadow calls ran to the end');
    assert.ok(server.logs.some((l) => /^store: more than 1000 keys in memory; dropped/.test(String(l.msg))), 'the shadow side was trimmed');
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, '450 4.7.1 Slow down', 'the live count is still there');
    await c.quit();
  } finally {
    await server.stop();
    await rm(shadowDir, { recursive: true, force: true });
  }
});

test('postern check (and so a reload) refuses a shadow folder that does not compile, naming file and line', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-shadow-check-'));
  const shadowDir = join(dir, 'candidate');
  await mkdir(shadowDir);
  await mkdir(join(dir, 'scripts'));
  await writeFile(join(shadowDir, 'rcptto.ts'), 'export default function (ctx) {\n  return reject(;\n}\n');
  await writeFile(join(dir, 'postern.yaml'), configYaml({ dataDir: join(dir, 'data'), scripts: join(dir, 'scripts'), listeners: [testListener('in', { shadowScripts: shadowDir })] } as never));
  const r = spawnSync(process.execPath, [new URL('../../engine/cli/main.ts', import.meta.url).pathname, 'check', '-c', join(dir, 'postern.yaml')], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 1, r.stdout + r.stderr);
  await rm(dir, { recursive: true, force: true });
  assert.match(r.stderr, new RegExp(`^${join(shadowDir, 'rcptto.ts').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}:2:\\d+: `, 'm'));
});
