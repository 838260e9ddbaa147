// A data script's `accept({ hold })` (Postfix's HOLD action, Halon's quarantine): the client gets its 250,
// the message waits in the queue, on hold, with the script's reason, until `postern queue release` delivers
// it. Real SMTP in, a real next hop on 127.0.0.1, the real command line; the hold is on disk before the 250.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { runCli, type CliResult } from '../helpers/cli.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';
import { checkVerdict } from '../../engine/policy/verdict.ts';
import { startCluster } from '../helpers/cluster.ts';
import { until } from '../helpers/wait.ts';

let sink: Sink;
let s: DeliveryServer;

before(async () => {
  sink = await startSink();
  s = await startDeliveryServer({
    config: configYaml({
      localDomains: ['dest.test'],
      listeners: [testListener('in')],
      delivery: smarthostDelivery(sink.port, { scanIntervalMs: 100 }),
    }),
    scripts: {
      'data.ts': `export default function (ctx) {
  const subject = ctx.data.headers.find(([n]) => n.toLowerCase() === 'subject')?.[1] ?? '';
  if (subject.includes('[review]')) return accept({ hold: 'subject asks for review' });
}`,
    },
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

const cli = (...args: string[]): Promise<CliResult> => runCli(['queue', ...args, '-c', join(s.dir, 'postern.yaml')]);
const subjects = (): string[] => sink.messages.map((m) => /^Subject: (.*)\r?$/m.exec(m.data.toString())?.[1] ?? '?');

test('accept({ hold }): 250, kept on hold with the reason, delivered only once released', async () => {
  const id = await submitMessage(s.port('in'), 'me@origin.test', ['you@dest.test'], 'Subject: please [review]\r\n\r\nhello\r\n');
  // On disk before the 250 reached the client (the queue may take a committed message at once).
  assert.ok(existsSync(join(s.dir, 'data', 'spool', 'queue', `${id}.held`)), 'held as soon as it was acknowledged');
  const accepted = s.logs.find((l) => l.id === id && String(l.msg).includes('accepted from='));
  assert.match(String(accepted?.msg), /\(message spooled, held by \S*\/data\.ts: subject asks for review\)$/);

  // Another message after it is delivered; the held one is not.
  await submitMessage(s.port('in'), 'me@origin.test', ['you@dest.test'], 'Subject: ordinary\r\n\r\nhello\r\n');
  await sink.waitFor(1);
  // The queue came to it and passed it over (its log line), rather than waiting some time and hoping it did.
  await until('the held message passed over', () => s.logs.some((l) => l.id === id && l.held === true));
  assert.deepEqual(subjects(), ['ordinary']);

  const show = await cli('show', id);
  assert.equal(show.code, 0, show.stderr);
  assert.match(show.stdout, new RegExp(`^held: yes, since \\S+ by script \\S*\\/data\\.ts: subject asks for review \\(postern queue release ${id}\\)$`, 'm'));
  const list = await cli();
  assert.match(list.stdout, new RegExp(`^${id}! +\\d+ `, 'm'));

  const release = await cli('release', id);
  assert.equal(release.code, 0, release.stderr);
  await sink.waitFor(2);
  assert.deepEqual(subjects().sort(), ['ordinary', 'please [review]']);
});

test('hold is for the data hook only, and its reason is checked', async () => {
  assert.throws(() => checkVerdict('rcptto', { verdict: 'accept', hold: 'x' }), /only a data hook can hold/);
  assert.throws(() => checkVerdict('data', { verdict: 'accept', hold: '' }), /1 to 200 characters/);
  assert.throws(() => checkVerdict('data', { verdict: 'accept', hold: 'a\r\nb' }), /without control characters/);
  assert.throws(() => checkVerdict('data', { verdict: 'accept', hold: 'x'.repeat(201) }), /1 to 200/);
  assert.deepEqual(checkVerdict('data', { verdict: 'accept', hold: 'review' }), { verdict: 'accept', hold: 'review' });
});

test('postern serve: a worker\'s hold is honoured by the queue process, and released from the command line', async () => {
  const next = await startSink();
  const c = await startCluster({
    config: `
workers: 1
localDomains: [dest.test]
listeners:
  - { name: in, listen: "127.0.0.1:{PORT:in}", reverseDns: false, limits: { greetingDelayMs: 0 } }
delivery:
  route: { smarthost: { host: 127.0.0.1, port: ${next.port} } }
  tls: { mode: none }
  scanIntervalMs: 100
`,
    scripts: { 'data.ts': `export default (ctx) => ctx.data.headers.some(([n, v]) => n === 'Subject' && v === 'hold me') ? accept({ hold: 'asked to' }) : undefined;` },
  });
  try {
    const id = await submitMessage(c.port('in'), 'me@origin.test', ['you@dest.test'], 'Subject: hold me\r\n\r\nhello\r\n');
    await submitMessage(c.port('in'), 'me@origin.test', ['you@dest.test'], 'Subject: go\r\n\r\nhello\r\n');
    await next.waitFor(1);
    await c.waitFor('the held message passed over', () => c.logs.some((l) => l.id === id && l.held === true));
    assert.equal(next.messages.length, 1);
    const show = await runCli(['queue', 'show', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.match(show.stdout, /^held: yes, since \S+ by script \S*\/data\.ts: asked to /m);
    const release = await runCli(['queue', 'release', id, '-c', join(c.dir, 'postern.yaml')]);
    assert.equal(release.code, 0, release.stderr);
    await next.waitFor(2);
  } finally {
    await c.stop();
    await next.close();
  }
});
