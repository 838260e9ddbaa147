// A refusal made within a mail transaction names whose mail it was: every decision line written while a
// transaction is open carries its queue id, sender and the recipients accepted so far (`from=<…> to=<…>
// nrcpt=N`), whoever refused — Postern's own refusals that are about no one address (a data timeout, too many
// errors, a command that is not UTF-8) and smtp-server's (an idle client, an over-long line, an unknown command). A
// refusal of one recipient (over maxRecipients, an invisible character) names that recipient instead, as Postfix does. Before, those lines read `NOQUEUE: defer: DATA from
// unknown[127.0.0.1]: 421 4.4.2 Timeout - closing connection; proto=ESMTP` and said nothing of the message lost.
// Real server, real sockets; the refusals counted in postern_smtp_refusals_total match the lines.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type Reply } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';
import { until } from '../helpers/wait.ts';
import { registry } from '../../engine/metrics/metrics.ts';

type Line = Record<string, unknown>;
let s: TestServer;
const LISTENERS = ['envmx', 'envslowdata', 'envidle', 'envmax'];

before(async () => {
  s = await startTestServer({
    config: configYaml({
      hostname: 'mx.test', localDomains: ['example.test'],
      listeners: [
        testListener('envmx', { tls: { mode: 'none' }, limits: { maxErrors: 2 } }),
        testListener('envslowdata', { tls: { mode: 'none' }, limits: { dataTimeoutMs: 300 } }),
        // 2 s, not 300 ms: this server and its clients share the test's process; descheduled that long between a reply and
        // the next command, it ran the idle timer before its client had sent that command (421 in place of a 250).
        testListener('envidle', { tls: { mode: 'none' }, limits: { socketTimeoutMs: 2000 } }),
        testListener('envmax', { tls: { mode: 'none' }, limits: { maxRecipients: 2 } }),
      ],
    }),
  });
});
after(() => s?.stop());

const isDecision = (l: Line): boolean => l.decision === 'reject' || l.decision === 'defer';

/** postern_smtp_refusals_total over this file's listeners. */
async function refusalsCounted(): Promise<number> {
  const values = (await registry.getSingleMetric('postern_smtp_refusals_total')!.get()).values;
  return values.filter((v) => LISTENERS.includes(String(v.labels.listener))).reduce((n, v) => n + v.value, 0);
}

/** A transaction from someone@example.net to two accepted recipients. */
async function transaction(listener: string): Promise<{ c: SmtpTestClient; seen: Reply[] }> {
  const c = await SmtpTestClient.connect(s.port(listener));
  const seen = [await c.read(), await c.command('EHLO client.example')];
  for (const line of ['MAIL FROM:<someone@example.net>', 'RCPT TO:<a@example.test>', 'RCPT TO:<b@example.test>']) {
    const r = await c.command(line);
    assert.equal(r.code, 250, r.text);
    seen.push(r);
  }
  return { c, seen };
}

const ROWS: Array<{ name: string; listener: string; stage: string; code: number; reason: RegExp; drive: (c: SmtpTestClient) => Promise<Reply[]> }> = [
  {
    name: 'the message not in within limits.dataTimeoutMs', listener: 'envslowdata', stage: 'DATA', code: 421, reason: /^limits\.dataTimeoutMs$/,
    async drive(c) {
      const seen = [await c.command('DATA')];
      c.socket.write('Subject: never ends\r\n');
      return [...seen, ...await c.repliesUntilClosed()];
    },
  },
  {
    name: 'an idle client (limits.socketTimeoutMs)', listener: 'envidle', stage: 'RCPT', code: 421, reason: /^limits\.socketTimeoutMs$/,
    drive: (c) => c.repliesUntilClosed(),
  },
  {
    name: 'too many errors (limits.maxErrors)', listener: 'envmx', stage: 'SMTP', code: 421, reason: /^limits\.maxErrors$/,
    async drive(c) {
      const seen = [await c.command('FOO')];
      c.socket.write('BAR\r\n');
      return [...seen, ...await c.repliesUntilClosed()];
    },
  },
  {
    name: 'an over-long command line', listener: 'envmx', stage: 'SMTP', code: 421, reason: /length limit/,
    async drive(c) {
      c.socket.write(`NOOP ${'x'.repeat(20_000)}\r\n`);
      return c.repliesUntilClosed();
    },
  },
  {
    name: 'a command that is not UTF-8', listener: 'envmx', stage: 'SMTP', code: 500, reason: /not UTF-8/,
    async drive(c) {
      c.socket.write(Buffer.from('NOOP \xff\xfe\r\n', 'latin1'));
      return [await c.read()];
    },
  },
];

let linesSent = 0;
let countedBefore = 0;
before(async () => { countedBefore = await refusalsCounted(); });

for (const row of ROWS) {
  test(`${row.name}: its line names the transaction's id, sender and recipients so far`, { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const { c, seen } = await transaction(row.listener);
    seen.push(...await row.drive(c));
    c.destroy();
    const last = seen.at(-1)!;
    assert.equal(last.code, row.code, last.text);
    const target = (l: Line): boolean => isDecision(l) && l.code === row.code && row.reason.test(String(l.reason));
    await until('its decision line', () => s.logs.slice(mark).some(target), { timeoutMs: 30_000 });
    const fresh = s.logs.slice(mark).filter(isDecision);
    assert.equal(fresh.length, seen.filter((r) => r.code >= 400).length, `one line per refusal: ${JSON.stringify(fresh.map((l) => l.msg))}`);
    linesSent += fresh.length;
    const line = fresh.find(target)!;
    assert.equal(line.stage, row.stage);
    assert.equal(line.from, 'someone@example.net', JSON.stringify(line));
    assert.equal(line.to, 'a@example.test,b@example.test', JSON.stringify(line));
    assert.equal(line.nrcpt, 2);
    assert.match(String(line.id), /^\w+$/, 'the transaction\'s queue id');
    assert.match(String(line.msg), new RegExp(`^${String(line.id)}: ${String(line.decision)}: ${row.stage} from unknown\\[127\\.0\\.0\\.1\\]: ${row.code} .*; from=<someone@example\\.net> to=<a@example\\.test,b@example\\.test> nrcpt=2 proto=ESMTP helo=<client\\.example>$`));
  });
}

test('smtp-server\'s own refusal of a RCPT names that recipient, not the ones accepted before it', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const { c } = await transaction('envmax');
  assert.equal((await c.command('RCPT TO:<c@example.test>')).text, '452 4.5.3 Error: too many recipients');
  await c.quit();
  const lines = s.logs.slice(mark).filter(isDecision);
  assert.equal(lines.length, 1);
  linesSent += 1;
  assert.deepEqual([lines[0]!.stage, lines[0]!.from, lines[0]!.to, lines[0]!.nrcpt], ['RCPT', 'someone@example.net', 'c@example.test', undefined]);
  assert.match(String(lines[0]!.msg), /: defer: RCPT from unknown\[127\.0\.0\.1\]: 452 4\.5\.3 <c@example\.test>: Error: too many recipients; from=<someone@example\.net> to=<c@example\.test> proto=ESMTP/);
});

test('Postern\'s refusal of a recipient with an invisible character names that recipient as written (escaped), with the transaction\'s id and sender', { timeout: 60_000 }, async () => {
  const mark = s.logs.length;
  const { c } = await transaction('envmx');
  assert.equal((await c.command('RCPT TO:<c\u00ad@example.test>')).code, 553);
  await c.quit();
  const lines = s.logs.slice(mark).filter(isDecision);
  assert.equal(lines.length, 1);
  linesSent += 1;
  assert.match(String(lines[0]!.reason), /invisible/);
  assert.deepEqual([lines[0]!.stage, lines[0]!.from, lines[0]!.to, lines[0]!.nrcpt], ['RCPT', 'someone@example.net', 'c\\u{ad}@example.test', undefined]);
  assert.match(String(lines[0]!.msg), new RegExp(`^${String(lines[0]!.id)}: reject: RCPT from unknown\\[127\\.0\\.0\\.1\\]: 553 5\\.1\\.3 <c\\\\u\\{ad\\}@example\\.test>: .*; from=<someone@example\\.net> to=<c\\\\u\\{ad\\}@example\\.test> proto=ESMTP`));
});

test('postern_smtp_refusals_total counted each refusal the lines above show', async () => {
  assert.equal(await refusalsCounted() - countedBefore, linesSent);
});
