// Replay (engine/replay/): with `replay:` the server records each script call's context and verdict; after
// a script edit, `postern replay --scripts CANDIDATE` finds exactly the decisions that would change on a
// recorded run of mixed traffic (accepted and refused), grouped by hook and old → new verdict. Real SMTP
// sessions on 127.0.0.1, the real command line; the recordings are bounded and rotated.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, writeFile, utimes } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { pruneRecordings, recordingFiles } from '../../engine/replay/recording-files.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { replayCommand, type ReplayCliOptions } from '../../engine/cli/replay.ts';


const cli = (args: string[]): Promise<CliResult> => runCli(args);
// The case's first replay is the command line; its further ones call replayCommand in this process, with the command
// line's default (a process each, ~0.5 s of CPU mostly module loading and isolates, proved nothing more).
const here = (opts: ReplayCliOptions): Promise<CliResult> => runInProcess(() => replayCommand({ examples: '3', ...opts }));

const LIVE_RCPT = `export default function (ctx) {
  if (ctx.address.localPart.startsWith('spam')) return reject('No spam here');
}`;
const LIVE_MAIL = `export default function (ctx) {
  if (ctx.address?.domain === 'bad.example') return reject('Bad sender');
}`;

test('replay finds exactly the changed decisions of a recorded run after a script edit', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 2 }, listeners: [testListener('in')] } as never),
    scripts: { 'rcptto.ts': LIVE_RCPT, 'mailfrom.ts': LIVE_MAIL },
  });
  try {
    // Mixed traffic: accepted and refused senders and recipients.
    const sessions: Array<[string, string[]]> = [
      ['a@good.example', ['alice@example.com', 'spam1@example.com', 'bulk-1@example.com']],
      ['b@bad.example', []],
      ['c@good.example', ['bulk-2@example.com', 'bob@example.com']],
    ];
    const replies: string[] = [];
    for (const [from, rcpts] of sessions) {
      const c = await SmtpTestClient.connect(server.port('in'));
      await c.hello();
      replies.push((await c.command(`MAIL FROM:<${from}>`)).text);
      for (const r of rcpts) replies.push((await c.command(`RCPT TO:<${r}>`)).text);
      await c.quit();
    }
    assert.deepEqual(replies, [
      '250 2.1.0 Accepted', '250 2.1.5 Accepted', '550 5.7.1 No spam here', '250 2.1.5 Accepted',
      '550 5.7.1 Bad sender',
      '250 2.1.0 Accepted', '250 2.1.5 Accepted', '250 2.1.5 Accepted',
    ]);
    const dataDir = join(server.dir, 'data');
    const lines = async (): Promise<string[]> => (await Promise.all(recordingFiles(dataDir).map((f) => readFile(f.path, 'utf8')))).join('').split('\n').filter(Boolean);
    await until('8 calls recorded', async () => (await lines()).length === 8);
    const recorded = (await lines()).map((l) => JSON.parse(l) as { hook: string; verdict: string; ctx: { address: { address: string } } });
    assert.deepEqual(recorded.filter((r) => r.hook === 'rcptto').map((r) => [r.ctx.address.address, r.verdict]), [
      ['alice@example.com', 'none'], ['spam1@example.com', 'reject {"text":"No spam here"}'], ['bulk-1@example.com', 'none'],
      ['bulk-2@example.com', 'none'], ['bob@example.com', 'none'],
    ]);
    // One file per day and process: several worker processes never share one.
    assert.deepEqual((await readdir(join(dataDir, 'replay'))).map((n) => n.replace(/^\d{4}-\d\d-\d\d\.(\d+)\.jsonl$/, 'DAY.$1')), [`DAY.${process.pid}`]);

    // The edit: bulk senders' recipients are refused too; the sender rule is unchanged.
    const candidate = join(server.dir, 'candidate');
    await mkdir(candidate);
    await writeFile(join(candidate, 'rcptto.ts'), `export default function (ctx) {
  if (ctx.address.localPart.startsWith('spam') || ctx.address.localPart.startsWith('bulk')) return reject('No spam here');
}`);
    await writeFile(join(candidate, 'mailfrom.ts'), LIVE_MAIL);
    const config = join(server.dir, 'postern.yaml');
    const r = await cli(['replay', '-c', config, '--scripts', candidate, '--json']);
    assert.equal(r.code, 1, r.stderr);
    const summary = JSON.parse(r.stdout) as { decisions: number; changed: number; groups: Array<{ hook: string; from: string; to: string; count: number; examples: Array<{ address: string; connectionId: string; new: string }> }> };
    assert.equal(summary.decisions, 8);
    assert.equal(summary.changed, 2);
    assert.equal(summary.groups.length, 1);
    const g = summary.groups[0]!;
    assert.deepEqual([g.hook, g.from, g.to, g.count], ['rcptto', 'none', 'reject', 2]);
    assert.deepEqual(g.examples.map((e) => e.address), ['bulk-1@example.com', 'bulk-2@example.com']);
    assert.ok(g.examples.every((e) => e.new === 'reject {"text":"No spam here"}' && typeof e.connectionId === 'string'));

    // Filters, and the text form.
    const mailOnly = await here({ config, scripts: candidate, hook: 'mailfrom' });
    assert.equal(mailOnly.code, 0, mailOnly.stderr);
    assert.match(mailOnly.stdout, /^3 recorded decisions, 0 would change$/m);
    const text = await here({ config, scripts: candidate, since: '1h' });
    assert.equal(text.code, 1);
    assert.match(text.stdout, /^rcptto: none → reject: 2$/m);
    assert.match(text.stdout, /address=bulk-1@example\.com/);
    // A --since further back than any date (300 million days) is every recording, not "Invalid time value" (exit 3).
    const forever = await here({ config, scripts: candidate, since: '300000000d' });
    assert.equal(forever.code, 1, forever.stderr);
    assert.match(forever.stdout, /^rcptto: none → reject: 2$/m);
    // The live scripts against themselves: nothing changes.
    const same = await here({ config, scripts: join(server.dir, 'scripts') });
    assert.equal(same.code, 0, same.stdout + same.stderr);
    assert.match(same.stdout, /^8 recorded decisions, 0 would change$/m);
  } finally {
    await server.stop();
  }
});

test('recordings are rotated by day: days older than keepDays are deleted', async () => {
  const server = await startTestServer({ config: configYaml({ listeners: [testListener('x')] } as never) });
  try {
    const dataDir = join(server.dir, 'data');
    await mkdir(join(dataDir, 'replay'), { recursive: true });
    const day = (offset: number): string => new Date(Date.now() - offset * 86_400_000).toISOString().slice(0, 10);
    for (const offset of [0, 1, 2, 5]) await writeFile(join(dataDir, 'replay', `${day(offset)}.1.jsonl`), '{}\n');
    await writeFile(join(dataDir, 'replay', 'notes.txt'), 'kept');
    await utimes(join(dataDir, 'replay', 'notes.txt'), 0, 0);
    const bytes = pruneRecordings(dataDir, 2);
    assert.deepEqual(recordingFiles(dataDir).map((f) => f.day), [day(1), day(0)]);
    assert.equal(bytes, 6);
    assert.ok((await readdir(join(dataDir, 'replay'))).includes('notes.txt'));
  } finally {
    await server.stop();
  }
});

test('a full recordings folder stops recording (and says so) instead of growing', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 3, maxMegabytes: 1 }, listeners: [testListener('full')] } as never),
    scripts: { 'rcptto.ts': LIVE_RCPT },
  });
  try {
    const dataDir = join(server.dir, 'data');
    await mkdir(join(dataDir, 'replay'), { recursive: true });
    const today = new Date().toISOString().slice(0, 10);
    await writeFile(join(dataDir, 'replay', `${today}.1.jsonl`), Buffer.alloc(1024 * 1024, 0x20));
    const c = await SmtpTestClient.connect(server.port('full'));
    await c.hello();
    await c.command('MAIL FROM:<a@example.org>');
    assert.equal((await c.command('RCPT TO:<x@example.com>')).code, 250);
    await c.quit();
    await until('the warning', () => server.logs.some((l) => String(l.msg).startsWith('replay recordings folder full')));
    assert.deepEqual(recordingFiles(dataDir).map((f) => f.path.endsWith(`.${process.pid}.jsonl`)), [false]);
  } finally {
    await server.stop();
  }
});

test('what is written between looks at the folder counts: records with large header sections stop at maxMegabytes', async () => {
  // The folder was looked at every 500 records: a data hook's record holds its header section, so 500 records of
  // 200 KB wrote 100 MB past a 1 MB folder.
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 3, maxMegabytes: 1 }, listeners: [testListener('big')] } as never),
    scripts: { 'data.ts': 'export default function (ctx) { }' },
  });
  try {
    const dataDir = join(server.dir, 'data');
    const headers = Array.from({ length: 200 }, (_, i) => `X-Filler-${i}: ${'f'.repeat(990)}\r\n`).join('');
    const c = await SmtpTestClient.connect(server.port('big'));
    await c.hello();
    for (let i = 0; i < 12; i++) assert.equal((await c.sendMail('a@example.org', ['x@example.com'], `${headers}Subject: ${i}\r\n\r\nbody\r\n`)).code, 250);
    await until('the warning', () => server.logs.some((l) => String(l.msg).startsWith('replay recordings folder full')));
    const written = (): number => recordingFiles(dataDir).reduce((n, f) => n + statSync(f.path).size, 0);
    await until('the records within the bound on disk', () => written() >= 600 * 1024);
    await c.quit().catch(() => undefined);
    assert.ok(written() <= 1024 * 1024, `${written()} bytes recorded with maxMegabytes 1`);
  } finally {
    await server.stop();
  }
});

test('a recording file whose last line a killed process left cut short: the next records are whole lines', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], replay: { keepDays: 2 }, listeners: [testListener('in')] } as never),
    scripts: { 'rcptto.ts': LIVE_RCPT },
  });
  try {
    // What an earlier process with this PID (a container restarted the same day) was writing as it was killed.
    const dataDir = join(server.dir, 'data');
    const file = join(dataDir, 'replay', `${new Date().toISOString().slice(0, 10)}.${process.pid}.jsonl`);
    await mkdir(join(dataDir, 'replay'), { recursive: true });
    await writeFile(file, '{"t":"2026-01-01T00:00:00.000Z","listener":"in","hook":"rcptto","cid":"x","ctx":{"addr');
    const c = await SmtpTestClient.connect(server.port('in'));
    await c.hello();
    await c.command('MAIL FROM:<a@good.example>');
    await c.command('RCPT TO:<alice@example.com>');
    await c.command('RCPT TO:<spam9@example.com>');
    await c.quit();
    const records = async (): Promise<unknown[]> => (await readFile(file, 'utf8')).split('\n').slice(1).filter(Boolean).map((l) => JSON.parse(l));
    await until('both calls recorded', async () => (await readFile(file, 'utf8')).split('\n').filter(Boolean).length === 3);
    assert.equal((await records()).length, 2, 'each new record is a line of its own, after the fragment');
  } finally {
    await server.stop();
  }
});
