// `postern queue list | show | retry | delete` against the spool of a running server.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { until } from '../helpers/wait.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { SmtpTestClient, submitMessage } from '../helpers/smtp-client.ts';
import { startTestServer } from '../helpers/postern.ts';
import { runCli } from '../helpers/cli.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));
let sink: Sink;
let s: DeliveryServer;
let holding = true;

before(async () => {
  sink = await startSink({ decide: (stage, address) => (stage === 'rcpt' && holding && address.startsWith('hold') ? { code: 451, text: '4.2.0 Held' } : null) });
  s = await startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: smarthostDelivery(sink.port, { retrySchedule: [3600], scanIntervalMs: 300 }),
    }),
    scripts: { 'rcptto.ts': `export default () => accept();` },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [MAIN, 'queue', ...args, '-c', join(s.dir, 'postern.yaml')], { timeout: 30_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}

test('list, show, retry and delete while the server runs', async () => {
  const held = await s.send('me@origin.test', ['hold1@dest.test', 'ok@dest.test']);
  const other = await s.send('me@origin.test', ['hold2@dest.test']);
  for (const id of [held, other]) await s.nextAttempt((e) => e.id === id, { past: true });

  const list = await cli('list');
  assert.equal(list.code, 0, list.stderr);
  assert.match(list.stdout, new RegExp(`^${held} +\\d+ +\\S+ +<me@origin\\.test> +attempts 1, next `, 'm'));
  assert.match(list.stdout, /^ {4}hold1@dest\.test\n {6}\(451 4\.2\.0 Held\)$/m);
  assert.match(list.stdout, /\(1 recipient done\)/);
  assert.match(list.stdout, /^-- 2 messages$/m);
  const json = JSON.parse((await cli('list', '--json')).stdout) as { messages: Array<{ id: string; pending: Array<{ address: string }> }> };
  assert.deepEqual(json.messages.map((m) => [m.id, m.pending.map((p) => p.address)]), [[held, ['hold1@dest.test']], [other, ['hold2@dest.test']]]);

  const summary = await cli('summary');
  assert.equal(summary.code, 0, summary.stderr);
  assert.match(summary.stdout, /^ +T +5 +10 +20 +40 +80 +160 +320 +640 +1280 +1280\+\n/);
  assert.match(summary.stdout, /^ +TOTAL +2 +2( +0){9}$/m);
  assert.match(summary.stdout, /^ *dest\.test +2 +2( +0){9}$/m);
  const shape = JSON.parse((await cli('summary', '--json')).stdout) as { rows: Array<{ domain: string; total: number; counts: number[] }> };
  assert.deepEqual(shape.rows.map((r) => [r.domain, r.total, r.counts[0]]), [['TOTAL', 2, 2], ['dest.test', 2, 2]]);

  const show = await cli('show', held, '--json');
  assert.equal(show.code, 0);
  const env = JSON.parse(show.stdout);
  assert.equal(env.attempts, 1);
  assert.deepEqual(env.recipients.map((r: { status?: string }) => r.status ?? 'pending'), ['pending', 'delivered']);
  assert.match((await cli('show', held, '--json', '--message')).stdout, /\nSubject: test\r\n\r\nhello\r\n$/);

  holding = false;
  const retry = await cli('retry', held);
  assert.equal(retry.code, 0, retry.stderr);
  assert.equal(retry.stdout, `1 message due now: ${held}\n`);
  const done = await s.nextAttempt((e) => e.id === held && e.removed, { past: true });
  assert.equal(done.attempt, 2);
  assert.deepEqual(sink.messages.at(-1)!.to, ['hold1@dest.test']);

  const del = await cli('delete', other);
  assert.equal(del.code, 0);
  assert.equal(del.stdout, `${other}: deleted\n`);
  await s.scans(1); // a whole scan after the delete: the server forgets it
  assert.equal((await cli('list')).stdout, 'Mail queue is empty\n');
  assert.equal(s.attempts.filter((e) => e.id === other).length, 1, 'a deleted message is not attempted again');

  const missing = await cli('show', other);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /no such message in the queue/);
  assert.equal((await cli('delete', '../etc')).code, 1);
  assert.equal((await cli('retry', '--all')).stdout, '0 messages due now\n');
});

test('an unreadable state file holds its message back until `queue retry` starts it again', async () => {
  holding = true;
  const id = await s.send('me@origin.test', ['hold3@dest.test']);
  await s.nextAttempt((e) => e.id === id, { past: true });
  await writeFile(s.runtime.spool.statePath(id), '{ not json');
  await s.runtime.spool.requestRescan(); // the next scan reads every state again
  const noticed = (): boolean => s.logs.some((l) => l.id === id && l.msg === 'unreadable delivery state: not delivering it');
  await until('the runner reports the unreadable state', noticed);
  assert.match((await cli('show', id)).stderr, /JSON/);

  holding = false;
  const retry = await cli('retry', id);
  assert.equal(retry.code, 0, retry.stderr);
  const done = await s.nextAttempt((e) => e.id === id && e.removed, { past: true }); // may be over before the command returns
  assert.equal(done.attempt, 1, 'the state started again from the message as accepted');
  assert.deepEqual(sink.messages.at(-1)!.to, ['hold3@dest.test']);
});

test('show --json --message prints the message\'s bytes as spooled: 8-bit bytes that are not UTF-8 are not made U+FFFD', async () => {
  holding = true;
  const latin1 = Buffer.concat([Buffer.from('Subject: caf'), Buffer.from([0xe9]), Buffer.from('\r\n\r\nd'), Buffer.from([0xe9, 0xff, 0x00]), Buffer.from('j\r\n')]);
  const c = await SmtpTestClient.connect(s.port());
  await c.hello();
  assert.equal((await c.command('MAIL FROM:<me@origin.test>')).code, 250);
  assert.equal((await c.command('RCPT TO:<hold4@dest.test>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  c.socket.write(Buffer.concat([latin1, Buffer.from('.\r\n')]));
  const id = /queued as (\S+)/.exec((await c.read()).text)![1]!;
  await c.quit();
  const { message } = await s.runtime.spool.readForDelivery(id);
  assert.ok(message.subarray(message.length - latin1.length).equals(latin1));
  const out = await new Promise<Buffer>((resolve, reject) => {
    execFile(process.execPath, [MAIN, 'queue', 'show', id, '--json', '--message', '-c', join(s.dir, 'postern.yaml')], { encoding: 'buffer', timeout: 30_000 },
      (err, stdout) => (err ? reject(err) : resolve(stdout)));
  });
  assert.ok(out.subarray(out.length - message.length).equals(message), 'the message after the JSON, byte for byte');
  assert.equal(JSON.parse(out.subarray(0, out.length - message.length).toString()).id, id);
  assert.equal((await cli('delete', id)).code, 0);
});

test('delivery off: queue show says no attempt will come, not "as soon as the queue runner gets to it"', async () => {
  const off = await startTestServer({ config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: { mode: 'none' } })] }) });
  try {
    const id = await submitMessage(off.port('in'), 'a@example.net', ['b@example.test']);
    const shown = await runCli(['queue', 'show', id, '--envelope', '-c', join(off.dir, 'postern.yaml')]);
    assert.equal(shown.code, 0, shown.stderr);
    assert.match(shown.stdout, /^next_attempt: none: delivery is off \(no delivery section, or delivery\.enabled: false\)$/m);
  } finally {
    await off.stop();
  }
});
