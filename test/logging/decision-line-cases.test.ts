// The decision lines and what they say: their size, a client that left first, a handshake, a lost transaction, a
// refusal's envelope, script text with control characters, and a connection that draws nothing. One file for what
// were several (one test process and one load of the engine instead of one each), each its own describe with its own
// servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { writeFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, PLAIN_MX_CONFIG, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient, type Reply, type TlsClientOptions } from '../helpers/smtp-client.ts';
import { configYaml, testListener, testServerTls, smarthostDelivery } from '../helpers/config.ts';
import { until, closed } from '../helpers/wait.ts';
import { registry } from '../../engine/metrics/metrics.ts';
import { makeTestPki, clientTlsOptions, type TestPki } from '../helpers/pki.ts';
import { clientText, scriptText, writtenLength } from '../../engine/logging/logger.ts';
import { accountName } from '../../engine/policy/certificate-identity.ts';
import { boundedName } from '../../engine/certificates/describe.ts';
import { loadLocalRecipients } from '../../engine/policy/local-recipients.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { parse, stringify } from 'yaml';
import { needsRedis, startRedis, type TestRedis } from '../helpers/redis-server.ts';
import { installFaultyDisk, type FaultyDisk } from '../spool/helpers/faulty-disk.ts';
import { needsTmpfs, remountReadOnly, testFilesystem, type SmallFilesystem } from '../helpers/tmpfs.ts';
import { PolicyClient, rcptRequest } from '../policy-service/helpers/policy-client.ts';
import { REPLIES, type ReplyName, type ReplySpec } from '../../engine/smtp/replies.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { createCrl, issueClientCertificate } from '../../engine/certificates/index.ts';
import { freePort } from '../helpers/free-port.ts';

describe('decision-line-size', () => {
  // A refusal at DATA names the transaction's recipients: all of them (up to maxRecipients, each twice) made a
  // line of tens of KB, past the 4096 bytes a pipe writes at once (the processes of `postern serve` share stdout).
  test('a DATA refusal of a 100-recipient message: the line names the first 5 and the count, under 4096 bytes', async () => {
    const s = await startTestServer({
      config: configYaml({ localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
      scripts: { 'data.ts': 'export default () => reject();' },
    });
    try {
      const to = Array.from({ length: 100 }, (_, i) => `${'r'.repeat(60)}${i}@example.test`);
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.hello();
      const r = await c.sendMail('a@example.net', to);
      assert.equal(r.code, 550, r.text);
      await c.quit();
      await until('the decision line', () => s.logs.some((l) => l.decision === 'reject'));
      const line = s.logs.find((l) => l.decision === 'reject')!;
      assert.equal(line.stage, 'END-OF-MESSAGE');
      assert.ok(Buffer.byteLength(JSON.stringify(line)) < 4096, `${Buffer.byteLength(JSON.stringify(line))} bytes`);
      assert.equal(line.nrcpt, 100);
      assert.equal(line.to, to.slice(0, 5).join(','));
      assert.match(String(line.msg), new RegExp(` to=<${to.slice(0, 5).join(',')}> nrcpt=100 `));
    } finally { await s.stop(); }
  });
});

describe('client-left-first', () => {
  // A client that leaves (resets) while Postern is still deciding about its command: the decision comes after the
  // client is gone. Its refusal reached nobody: the decision line says so and postern_smtp_refusals_total, which
  // counts what clients got, does not count it. A message whose client left before its end was answered is not
  // kept: no 250 reached the client, which will send it again (kept, it was delivered twice, and logged and
  // counted as accepted by a client that saw no acceptance).
  let s: TestServer;
  // The scripts take their time (on an isolate thread: the event loop reads the client's reset meanwhile).
  const SLOW = 'log("deciding"); const t = Date.now(); while (Date.now() - t < 1500) { /* deciding */ }';
  before(async () => {
    s = await startTestServer({
      config: `${PLAIN_MX_CONFIG}sandbox: { timeoutMs: 10000, fastPathMs: 0 }\n`,
      scripts: {
        'rcptto.ts': `export default (ctx: RcptToContext) => { if (ctx.address.localPart === 'slow-reject') { ${SLOW} return reject(); } };`,
        'data.ts': `export default (ctx: DataContext) => { if (ctx.data.headers.some(([n, v]) => n === 'Subject' && v === 'slow')) { ${SLOW} } };`,
      },
    });
  });
  after(() => s.stop());

  // The series with these labels among its own: the registry is the process's, and this file's other servers came
  // first, so the generation a verdict carries is not known (not 1, as in a process of its own).
  async function counter(name: string, labels: string): Promise<number> {
    const text = await registry.getSingleMetricAsString(name);
    const wanted = labels.split(',');
    return text.split('\n').filter((l) => l.startsWith(`${name}{`) && wanted.every((w) => l.slice(l.indexOf('{') + 1, l.lastIndexOf('}')).split(',').includes(w)))
      .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
  }

  /** The client resets its connection (RST: it can read no reply). */
  async function reset(c: SmtpTestClient): Promise<void> {
    c.socket.resetAndDestroy();
    await closed(c.socket);
  }

  test('a refusal decided after the client left: its line says it was not sent, and it is not counted as a refusal', { timeout: 60_000 }, async () => {
    const REFUSALS = ['postern_smtp_refusals_total', 'listener="mx",stage="RCPT",class="5xx",reason="script rcptto: reject"'] as const;
    const VERDICTS = ['postern_script_verdicts_total', 'listener="mx",hook="rcptto",verdict="reject",source="smtp"'] as const;
    const refusalsBefore = await counter(...REFUSALS);
    const verdictsBefore = await counter(...VERDICTS);
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
    c.write('RCPT TO:<slow-reject@example.com>');
    await until('the script deciding', () => s.logs.slice(mark).some((l) => l.msg === 'deciding'));
    await reset(c);
    await until('the script decided', async () => (await counter(...VERDICTS)) === verdictsBefore + 1, { timeoutMs: 30_000 });
    await until('the decision line', () => s.logs.slice(mark).some((l) => l.decision === 'reject'));
    const lines = s.logs.slice(mark).filter((l) => l.decision !== undefined);
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.equal(lines[0]!.sent, false, 'the line says the refusal was not sent');
    assert.match(String(lines[0]!.msg), /^\w+: reject: RCPT from .*: 550 5\.7\.1 .*\(not sent: the client had left\)$/);
    assert.equal(await counter(...REFUSALS), refusalsBefore, 'not a refusal any client got');
  });

  test('a message whose client left before its end was answered: not kept, not logged or counted as accepted', { timeout: 60_000 }, async () => {
    const ACCEPTED = ['postern_messages_accepted_total', 'listener="mx"'] as const;
    const acceptedBefore = await counter(...ACCEPTED);
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@sender.example>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    c.write('Subject: slow\r\n\r\nhello\r\n.');
    await until('the script deciding', () => s.logs.slice(mark).some((l) => l.msg === 'deciding'));
    await reset(c);
    await until('the intake gave up on the message', () => s.logs.slice(mark).some((l) => /the client left before its message was acknowledged: not kept/.test(String(l.msg))), { timeoutMs: 30_000 });
    assert.equal(s.logs.slice(mark).filter((l) => / accepted from=/.test(String(l.msg))).length, 0, 'no accepted line');
    assert.equal(await counter(...ACCEPTED), acceptedBefore, 'not counted as accepted');
    // The spool keeps no message: a client that sends it again gets it delivered once.
    const sent = await SmtpTestClient.connect(s.port('mx'));
    await sent.hello();
    assert.equal((await sent.sendMail('a@sender.example', ['b@example.com'])).code, 250);
    await sent.quit();
    assert.equal(await counter(...ACCEPTED), acceptedBefore + 1);
  });
});

describe('handshake-lines', () => {
  // A TLS handshake cut off by limits.tlsHandshakeTimeoutMs is the server closing a connection without a reply: its
  // line has the fields of such a decision (decision, stage, client, reason naming the setting, reply: null), after
  // STARTTLS (with the session id) and on implicit TLS, so `jq 'select(.decision)'` finds it. Before, the STARTTLS one
  // had neither decision nor reason nor listener, and the implicit one was a bare `client connection error`. A
  // handshake the client breaks is such a line too (every session that ends at a refusal or a failed step has one): it
  // was a bare `client connection error`, after STARTTLS without the session's id at first.
  // Real server, real sockets.
  type Line = Record<string, unknown>;
  let s: TestServer;
  before(async () => {
    const pki = await makeTestPki();
    s = await startTestServer({
      config: configYaml({
        hostname: 'mx.test', localDomains: ['example.test'],
        listeners: [
          testListener('hsstarttls', { tls: testServerTls(pki), limits: { tlsHandshakeTimeoutMs: 300 } }),
          testListener('hsimplicit', { tls: { ...testServerTls(pki), mode: 'implicit' }, limits: { tlsHandshakeTimeoutMs: 300 } }),
        ],
      }),
    });
  });
  after(() => s?.stop());

  const atInfo = (from: number): Line[] => s.logs.slice(from).filter((l) => Number(l.level) >= 30);

  test('STARTTLS, then no handshake: one line with the session id, decision, stage, reason and no reply', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('hsstarttls'));
    await c.read();
    await c.command('EHLO client.example');
    assert.equal((await c.command('STARTTLS')).code, 220);
    assert.ok(await c.waitClosed(60_000));
    await until('its line', () => atInfo(mark).some((l) => l.decision !== undefined), { timeoutMs: 30_000 });
    const lines = atInfo(mark);
    assert.equal(lines.length, 1, JSON.stringify(lines));
    const line = lines[0]!;
    assert.deepEqual([line.decision, line.stage, line.client, line.listener, line.reply], ['reject', 'STARTTLS', '127.0.0.1', 'hsstarttls', null]);
    assert.match(String(line.reason), /^limits\.tlsHandshakeTimeoutMs/);
    assert.match(String(line.cid), /^\w+$/);
  });

  test('implicit TLS, no ClientHello: one line with decision, stage, reason and no reply', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const raw = net.connect(s.port('hsimplicit'), '127.0.0.1');
    raw.on('error', () => undefined);
    raw.write(Buffer.from([0x16, 0x03, 0x01])); // the start of a record, then nothing
    await new Promise((r) => raw.once('close', r));
    await until('its line', () => atInfo(mark).length > 0, { timeoutMs: 30_000 });
    const lines = atInfo(mark);
    assert.equal(lines.length, 1, JSON.stringify(lines));
    const line = lines[0]!;
    assert.deepEqual([line.decision, line.stage, line.client, line.listener, line.reply], ['reject', 'CONNECT', '127.0.0.1', 'hsimplicit', null]);
    assert.match(String(line.reason), /^limits\.tlsHandshakeTimeoutMs/);
  });

  test('a handshake the client breaks after STARTTLS: one decision line of stage STARTTLS, with the session\'s id', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await SmtpTestClient.connect(s.port('hsstarttls'));
    await c.read();
    await c.command('EHLO client.example');
    assert.equal((await c.command('FOO')).code, 500); // a refusal: its line gives the session id
    assert.equal((await c.command('STARTTLS')).code, 220);
    c.socket.write('this is not TLS\r\n');
    assert.ok(await c.waitClosed(60_000));
    await until('its line', () => atInfo(mark).some((l) => l.msg === 'client connection error'), { timeoutMs: 30_000 });
    const [refusal, failed, ...more] = atInfo(mark).filter((l) => l.decision !== undefined);
    assert.equal(refusal!.stage, 'UNKNOWN');
    assert.deepEqual(more, [], 'one line for the handshake');
    assert.deepEqual([failed!.msg, failed!.decision, failed!.stage, failed!.client, failed!.listener, failed!.reply, failed!.reason],
      ['client connection error', 'reject', 'STARTTLS', '127.0.0.1', 'hsstarttls', null, 'the TLS handshake after STARTTLS failed (closed)']);
    assert.equal(failed!.cid, refusal!.cid, 'the session\'s id');
    assert.match(String((failed!.clientError as { code?: string }).code), /^ERR_SSL_/, 'what failed, for the operator');
    assert.equal(atInfo(mark).filter((l) => l.msg === 'client connection error').length, 1);
  });

  test('an implicit-TLS handshake the client breaks: one decision line of stage CONNECT', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const raw = net.connect(s.port('hsimplicit'), '127.0.0.1');
    raw.on('error', () => undefined);
    raw.write('EHLO this is not TLS\r\n');
    await new Promise((r) => raw.once('close', r));
    await until('its line', () => atInfo(mark).length > 0, { timeoutMs: 30_000 });
    const lines = atInfo(mark);
    assert.equal(lines.length, 1, JSON.stringify(lines));
    assert.deepEqual([lines[0]!.decision, lines[0]!.stage, lines[0]!.client, lines[0]!.listener, lines[0]!.reply, lines[0]!.reason],
      ['reject', 'CONNECT', '127.0.0.1', 'hsimplicit', null, 'the TLS handshake failed (closed)']);
  });
});

describe('lost-transaction', () => {
  // A session that ends with a mail transaction open — the client closes (FIN) or resets (RST) the connection after
  // MAIL and RCPT, or in the middle of its message — leaves one info line naming the transaction, as Postfix's
  // `lost connection after DATA from host[ip]`: queue id, session id, client, stage, sender and recipients. Before,
  // a FIN left nothing at info at all, and a reset only `client connection error` with neither session id nor
  // envelope: a message lost that way could not be found in the log. Not when the server itself closed with a reply
  // (its decision line has the envelope), after QUIT, or once the message was received in full (its own line).
  // Real server, real sockets.
  type Line = Record<string, unknown>;
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: configYaml({
        hostname: 'mx.test', localDomains: ['example.test'],
        listeners: [
          testListener('lostmx', { tls: { mode: 'none' } }),
          // 2 s, not 300 ms: this server and its clients share the test's process; descheduled that long between a reply and
          // the next command, it ran the idle timer before its client had sent that command (421 in place of a 250).
          testListener('lostidle', { tls: { mode: 'none' }, limits: { socketTimeoutMs: 2000 } }),
        ],
      }),
    });
  });
  after(() => s?.stop());

  const lostLines = (from: number): Line[] => s.logs.slice(from).filter((l) => l.lost === true);
  const connectionErrors = (from: number): Line[] => s.logs.slice(from).filter((l) => l.msg === 'client connection error');
  const closedLines = (from: number): Line[] => s.logs.slice(from).filter((l) => typeof l.msg === 'string' && /Connection closed to/.test(l.msg));

  /** MAIL from someone@example.net, RCPT to a@ and b@example.test. */
  async function transaction(listener = 'lostmx'): Promise<SmtpTestClient> {
    const c = await SmtpTestClient.connect(s.port(listener));
    await c.read();
    await c.command('EHLO client.example');
    for (const line of ['MAIL FROM:<someone@example.net>', 'RCPT TO:<a@example.test>', 'RCPT TO:<b@example.test>']) assert.equal((await c.command(line)).code, 250);
    return c;
  }

  /** Waits until the server has closed its side of each session begun since `from` (smtp-server's debug line). */
  async function sessionsClosed(from: number, count: number): Promise<void> {
    await until('the sessions closed', () => closedLines(from).length >= count, { timeoutMs: 30_000 });
  }

  function checkLost(line: Line, stage: string, clientError: string | undefined): void {
    assert.equal(line.level, 30);
    assert.equal(line.stage, stage);
    assert.equal(line.client, '127.0.0.1');
    assert.equal(line.listener, 'lostmx');
    assert.equal(line.from, 'someone@example.net');
    assert.equal(line.to, 'a@example.test,b@example.test');
    assert.equal(line.nrcpt, 2);
    assert.equal(line.clientError, clientError);
    assert.equal(line.decision, undefined, 'not a refusal: no decision line');
    assert.match(String(line.cid), /^\w+$/);
    assert.match(String(line.msg), new RegExp(`^${String(line.id)}: lost connection after ${stage}.* from unknown\\[127\\.0\\.0\\.1\\]${clientError ? ` \\(${clientError}\\)` : ''}: transaction not completed; from=<someone@example\\.net> to=<a@example\\.test,b@example\\.test> nrcpt=2$`));
  }

  test('the client closes after its RCPTs: one lost-connection line', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await transaction();
    c.socket.end();
    await until('the lost-connection line', () => lostLines(mark).length > 0, { timeoutMs: 30_000 });
    await sessionsClosed(mark, 1);
    assert.equal(lostLines(mark).length, 1);
    checkLost(lostLines(mark)[0]!, 'RCPT', undefined);
    assert.deepEqual(connectionErrors(mark), []);
  });

  test('the client resets in the middle of its message: one lost-connection line with the reset, no separate connection error', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const c = await transaction();
    assert.equal((await c.command('DATA')).code, 354);
    c.socket.write('Subject: half\r\n\r\nhalf a message');
    await new Promise((r) => setImmediate(r));
    c.socket.resetAndDestroy();
    await until('the lost-connection line', () => lostLines(mark).length > 0, { timeoutMs: 30_000 });
    await sessionsClosed(mark, 1);
    assert.equal(lostLines(mark).length, 1);
    checkLost(lostLines(mark)[0]!, 'DATA', 'ECONNRESET');
    assert.match(String(lostLines(mark)[0]!.msg), /after DATA \(message not received in full\)/);
    assert.deepEqual(connectionErrors(mark), [], 'one line for one lost session');
  });

  test('no lost-connection line after QUIT, after a message received in full, or when the server closed with a reply', { timeout: 60_000 }, async () => {
    const mark = s.logs.length;
    const quitting = await transaction();
    await quitting.quit();

    const full = await transaction();
    assert.equal((await full.command('DATA')).code, 354);
    full.socket.write('Subject: whole\r\n\r\nbody\r\n.\r\n');
    assert.equal((await full.read()).code, 250);
    await full.command('MAIL FROM:<someone@example.net>');
    full.socket.end(); // a transaction open again, but the session's message was taken: this one is lost
    const idle = await transaction('lostidle');
    assert.equal((await idle.read(60_000)).code, 421);
    await until('the idle session\'s decision line', () => s.logs.slice(mark).some((l) => l.decision === 'defer' && l.reason === 'limits.socketTimeoutMs'), { timeoutMs: 30_000 });
    await sessionsClosed(mark, 3);
    // Only the second session's second transaction (MAIL, no recipient) was cut off.
    assert.deepEqual(lostLines(mark).map((l) => [l.stage, l.nrcpt]), [['MAIL', 0]]);
  });
});

describe('refusal-envelope', () => {
  // A refusal made within a mail transaction names whose mail it was: every decision line written while a
  // transaction is open carries its queue id, sender and the recipients accepted so far (`from=<…> to=<…>
  // nrcpt=N`), whoever refused — Postern's own refusals that are about no one address (a data timeout, too many
  // errors, a command that is not UTF-8) and smtp-server's (an idle client, an over-long line, an unknown command). A
  // refusal of one recipient (over maxRecipients, an invisible character) names that recipient instead, as Postfix does. Before, those lines read `NOQUEUE: defer: DATA from
  // unknown[127.0.0.1]: 421 4.4.2 Timeout - closing connection; proto=ESMTP` and said nothing of the message lost.
  // Real server, real sockets; the refusals counted in postern_smtp_refusals_total match the lines.
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
});

describe('script-text-controls', () => {
  // A script may log (or throw with) what a client sent: a Subject with U+009B (a terminal's CSI when it takes C1
  // controls in UTF-8, as xterm does under `tail -f`) or a bidi override. JSON escapes C0 controls only: such
  // characters are written as \u{…} in the script's log line and in the line of its failure.
  const HOSTILE = 'hi \u009b2J \u0085 \u202Eevil\u2028next';
  const UNSHOWABLE = /[\u0080-\u009f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;

  test('a script logging and throwing a client\'s Subject: no C1 control, bidi override or line separator in the lines', async () => {
    const s = await startTestServer({
      config: configYaml({ localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }),
      scripts: {
        'data.ts': `export default (ctx: DataContext) => {
  const subject = ctx.data.headers.find(([n]) => n.toLowerCase() === 'subject')?.[1] ?? '';
  log('subject:', subject);
  if (subject.startsWith('throw')) throw new Error('bad subject ' + subject);
};`,
      },
    });
    try {
      for (const subject of [HOSTILE, `throw ${HOSTILE}`]) {
        const c = await SmtpTestClient.connect(s.port('mx'));
        await c.hello();
        assert.equal((await c.command('MAIL FROM:<a@example.net> SMTPUTF8')).code, 250);
        assert.equal((await c.command('RCPT TO:<b@example.test>')).code, 250);
        assert.equal((await c.command('DATA')).code, 354);
        const r = await c.command(`Subject: ${subject}\r\n\r\nhi\r\n.`);
        assert.equal(r.code, subject.startsWith('throw') ? 451 : 250, r.text);
        await c.quit();
      }
      await until('the script\'s failure line', () => s.logs.some((l) => String(l.msg).startsWith('policy script data failed')));
      const lines = s.logs.filter((l) => String(l.msg).startsWith('subject:') || String(l.msg).startsWith('policy script data failed'));
      assert.equal(lines.length, 3, JSON.stringify(lines));
      for (const l of lines) {
        assert.doesNotMatch(JSON.stringify(l), UNSHOWABLE, JSON.stringify(l));
        assert.match(String(l.msg), /hi \\u\{9b\}2J \\u\{85\} \\u\{202e\}evil\\u\{2028\}next/);
      }
      const failure = lines.find((l) => String(l.msg).startsWith('policy script'))!;
      assert.match(String(failure.err), /\\u\{9b\}2J/);
    } finally { await s.stop(); }
  });
});

describe('draws-nothing', () => {
  // Characters that draw nothing beyond the format characters (the other default-ignorable code points: Hangul fillers,
  // the combining grapheme joiner, Khmer's inherent vowels, variation selectors that select nothing) are one rule
  // (engine/text/draws-nothing.ts) for the envelope, account names and logged client text. The log's escapes and
  // certificate account names missed them: a HELO name `c<U+3164>eo.example` was logged as it reads, ceo.example,
  // and a certificate naming `c<U+3164>eo@example.test` named an account no person can tell from ceo@.
  // Real server, real sockets for the decision line.
  const DRAW_NOTHING = ['\u3164', '\u115f', '\u1160', '\uffa0', '\u034f', '\u17b4', '\u180b', '\ufe0f', '\ufe00', '\u{e0100}'];
  const hex = (ch: string): string => ch.codePointAt(0)!.toString(16);
  const scratch = useScratchDir('postern-draws-nothing-');

  test('logged client and script text write each character that draws nothing as \\u{…}; an emoji keeps its presentation selector', () => {
    for (const ch of DRAW_NOTHING) {
      assert.equal(clientText(`c${ch}eo`), `c\\u{${hex(ch)}}eo`, `U+${hex(ch)}`);
      assert.equal(scriptText(`c${ch}eo`), `c\\u{${hex(ch)}}eo`, `U+${hex(ch)}`);
      assert.equal(writtenLength(`c${ch}eo`), JSON.stringify(scriptText(`c${ch}eo`)).length - 2, `U+${hex(ch)}`);
    }
    for (const drawn of ['\u2764\ufe0f', 'room1\ufe0f\u20e3', '\u0645\u06cc\u0627']) {
      assert.equal(scriptText(drawn), drawn);
      assert.equal(writtenLength(drawn), drawn.length);
    }
    assert.equal(clientText('\u2764\ufe0f'), '\u2764\ufe0f');
  });

  test('a certificate field with a character that draws nothing names no account', () => {
    assert.equal(accountName('ceo@example.test'), 'ceo@example.test');
    for (const ch of DRAW_NOTHING) assert.equal(accountName(`c${ch}eo@example.test`), null, `U+${hex(ch)}`);
    assert.equal(accountName('\u2764\ufe0f@example.test'), '\u2764\ufe0f@example.test');
  });

  test('a client certificate\'s name in a log line: a character that draws nothing is written as the RFC 4514 escapes of its bytes', () => {
    assert.equal(boundedName('CN=c\u3164eo'), 'CN=c\\E3\\85\\A4eo');
    for (const ch of DRAW_NOTHING) assert.doesNotMatch(boundedName(`CN=c${ch}eo`), new RegExp(ch, 'u'), `U+${hex(ch)}`);
    assert.equal(boundedName('CN=\u2764\ufe0f'), 'CN=\u2764\ufe0f');
  });

  test('a local recipient table listing a local part with a character that draws nothing is refused: no client can send it', async () => {
    const dir = scratch.path;
    for (const ch of DRAW_NOTHING) {
      const file = join(dir, 'recipients');
      await writeFile(file, `ok@example.test\nc${ch}eo@example.test\n`);
      await assert.rejects(loadLocalRecipients(file), /recipients:2: .*control, format or quote characters/, `U+${hex(ch)}`);
    }
    const file = join(dir, 'recipients');
    await writeFile(file, 'ok@example.test\n\u2764\ufe0f@example.test\n');
    await loadLocalRecipients(file);
  });

  test('a HELO name with a Hangul filler is escaped in the decision line, its field and its message', async () => {
    const s = await startTestServer({ config: configYaml({ localDomains: ['example.test'], listeners: [testListener('mx', { tls: { mode: 'none' } })] }) });
    try {
      const c = await SmtpTestClient.connect(s.port('mx'));
      await c.read();
      assert.equal((await c.command('EHLO c\u3164eo.example')).code, 250);
      assert.equal((await c.command('RCPT TO:<a@example.test>')).code, 503); // a refusal: its line names the HELO name
      await c.quit();
      const line = s.logs.find((l) => l.decision === 'reject' && l.stage === 'RCPT');
      assert.equal(line?.helo, 'c\\u{3164}eo.example');
      assert.match(String(line?.msg), /helo=<c\\u\{3164\}eo\.example>/);
      assert.doesNotMatch(JSON.stringify(s.logs), /\u3164/);
    } finally { await s.stop(); }
  });
});

describe('decision-lines', () => {
  // "Why was my mail refused?", answered for every refusal Postern can send: one row per refusal of the reply
  // catalogue (engine/smtp/replies.ts), each driven by a real client against a real server, and the one info
  // line it leaves checked — client host[ip], stage, code, enhanced code, reply text, the reason (rule,
  // limit, script and verdict), the certificate and identity fields — with no stack trace at info. A catalogue
  // entry added without a row here fails (the ROWS type and the first test), so a new refusal cannot go unlogged.
  type Line = Record<string, unknown>;
  type ServerName = 'main' | 'redis' | 'full' | 'inodes' | 'readonly' | 'deferring';
  /** Catalogue replies that are not refusals: no decision line. */
  type Accepting = 'authSucceeded' | 'senderAccepted' | 'recipientAccepted' | 'queued';
  type RefusalName = Exclude<ReplyName, Accepting>;

  interface Row {
    server: ServerName;
    stage: string;
    /** Values of the entry's `{placeholders}`, for the expected text and reason. */
    values?: Record<string, string>;
    /** The text when a value in it cannot be known in advance. */
    text?: RegExp;
    /** The client's address (default 127.0.0.1). */
    ip?: string;
    /** The connection is closed without the reply (a strict listener), so the client sees none. */
    unsent?: boolean;
    /**
     * The refusal is about the server (a store, the disk, a script), not the client: the warning or error lines
     * it may leave besides its decision line (once per outage, or one per failure with file and line).
     */
    serverFault?: RegExp;
    /** What else the line must carry (certificate, identity, user). */
    check?: (line: Line) => void;
    /** Drive the refusal; returns every reply the client got. */
    drive: () => Promise<Reply[]>;
  }

  let pki: TestPki;
  let faultyDisk: FaultyDisk;
  let redis: TestRedis | null = null;
  /** The read-only server's own filesystem (root only: else why not, and its row is skipped). */
  const readOnlySkip = needsTmpfs();
  let readOnlyFs: SmallFilesystem | null = null;
  let readOnlyAgain: { writable(): void } | null = null;
  const servers: Partial<Record<ServerName, TestServer>> = {};
  let alice: TlsClientOptions;
  let stranger: TlsClientOptions;
  const PASSWORD = 'alice-Secret-1';
  const plainLogin = (user: string, password = PASSWORD): string => `AUTH PLAIN ${Buffer.from(`\0${user}\0${password}`).toString('base64')}`;

  const SCRIPTS = {
    'connect.ts': `export default (ctx: ConnectContext) => ctx.connection.remoteAddress === '127.0.0.9' ? reject() : undefined;`,
    'helo.ts': `export default (ctx: HeloContext) => {
  if (ctx.helo.name === 'reject.example') return reject();
  if (ctx.helo.name === 'deferclose.example') return defer(undefined, { disconnect: true });
};`,
    'auth.ts': `export default (ctx: AuthContext) => {
  if (ctx.auth.username === 'scripted-reject') return reject();
  if (ctx.auth.username === 'scripted-defer') return defer();
  if (ctx.auth.username === 'scripted-throw') throw new Error('a bug in the auth script');
};`,
    'mailfrom.ts': `export default (ctx: MailFromContext) => {
  if (ctx.address.address === 'reject@sender.example') return reject();
  if (ctx.address.address === 'defer@sender.example') return defer();
  if (ctx.address.address === 'throw@sender.example') throw new Error('a bug in the script');
  if (ctx.address.address === 'spin@sender.example') for (;;) { /* never returns: the time limit */ }
};`,
    'rcptto.ts': `export default (ctx: RcptToContext) => ctx.address.localPart === 'script-reject' ? reject() : undefined;`,
    'data.ts': `export default (ctx: DataContext) => ctx.data.headers.some(([n, v]) => n.toLowerCase() === 'subject' && v === 'refuse me') ? reject() : undefined;`,
    'predelivery.ts': `export default (ctx: PredeliveryContext) => ctx.message.recipients[0]!.startsWith('refuse-delivery') ? reject() : defer();`,
  };

  const NO_AUTH_SLOWDOWN = { authFailuresPerIp: 1000, authFailuresBeforeDelay: 1000 };

  before(async () => {
    pki = await makeTestPki();
    alice = await clientTlsOptions(pki, 'alice');
    stranger = await clientTlsOptions(pki, 'stranger');
    faultyDisk = installFaultyDisk(); // before the servers open their journal segments (tracks them; fails only when asked)
    const users = `alice@example.com:${await hashPassword(PASSWORD)}\n`;
    const crl = await createCrl(pki.authorities.ca, []);
    const pinOfStranger = pki.clients.stranger.pinSha256;
    const closedPort = await freePort();
    servers.main = await startTestServer({
      // Its mailfrom script spins for the test of a script that times out: the product's own 100 ms limit.
      scriptLimits: 'product',
      files: { users, recipients: '@example.test\nknown@mailboxes.example\n', 'ca.crl': crl, pins: `${pinOfStranger} carol@example.com\n`, 'trusted-ca.crt': await readFile(pki.ca.cert, 'utf8') },
      scripts: SCRIPTS,
      config: configYaml({
        hostname: 'mx.test',
        localDomains: ['example.test', 'mailboxes.example'],
        localRecipients: './recipients',
        users: './users',
        tables: { pins: './pins' },
        delivery: smarthostDelivery(closedPort),
        policyServices: [{ name: 'postfix', listen: '127.0.0.1:0', relayRule: true }],
        listeners: [
          testListener('mx', {
            tls: testServerTls(pki, { clientCertificates: 'request' }),
            auth: { mechanisms: ['PLAIN', 'EXTERNAL'] },
            limits: { maxMessageSize: 2000, maxHeaderBytes: 200, maxHeaderFields: 3, maxErrors: 3, ...NO_AUTH_SLOWDOWN },
          }),
          testListener('plain', {
            tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] },
            limits: { messagesPerIdentity: { count: 1, windowSeconds: 3600 }, ...NO_AUTH_SLOWDOWN },
          }),
          testListener('owned', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] }, senderLogin: { enforce: true }, limits: NO_AUTH_SLOWDOWN }),
          testListener('sub', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN', 'LOGIN'], required: true } }),
          testListener('reqtls', { tls: testServerTls(pki), requireTls: true }),
          testListener('authlimit', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] }, limits: { authFailuresPerIp: 1, authFailuresBeforeDelay: 1000 } }),
          testListener('accountlimit', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] }, limits: { authFailuresPerAccount: 1, ...NO_AUTH_SLOWDOWN } }),
          testListener('cap', { limits: { maxConnections: 1 } }),
          testListener('shared', { limits: { maxConnections: 2 } }),
          testListener('proto', { tls: { mode: 'none' }, limits: { maxMessageSize: 2000, maxRecipients: 1 } }),
          testListener('early', { tls: { mode: 'none' }, limits: { greetingDelayMs: 60_000 } }),
          testListener('idle', { tls: { mode: 'none' }, limits: { socketTimeoutMs: 500 } }),
          testListener('onemessage', { tls: { mode: 'none' }, limits: { maxMessagesPerConnection: 1 } }),
          testListener('doomed', { tls: { mode: 'none' } }),
          testListener('slowdata', { tls: { mode: 'none' }, limits: { dataTimeoutMs: 500 } }),
          testListener('dripfull', { tls: { mode: 'none' }, limits: { maxConnections: 1, minDataRate: 1000, dataRateWindowMs: 1000 } }),
          testListener('idlefull', { tls: { mode: 'none' }, limits: { maxConnections: 1, idleWhenFullMs: 300 } }),
          testListener('perip', { limits: { maxConnectionsPerIp: 1 } }),
          testListener('rate', { limits: { connectionRatePerIp: { count: 1, windowSeconds: 3600 } } }),
          testListener('strict', { tls: testServerTls(pki, { clientCertificates: 'request', strict: true }) }),
          testListener('require', { tls: testServerTls(pki, { clientCertificates: 'require' }) }),
          testListener('crl', { tls: { ...testServerTls(pki, { clientCertificates: 'request' }), crlFiles: ['./ca.crl'] }, certificateIdentity: { field: 'emailAddress', autoLogin: true } }),
          testListener('pinned', { tls: testServerTls(pki, { clientCertificates: 'request' }), certificateIdentity: { pins: 'pins', autoLogin: true } }),
          testListener('catrust', { tls: { ...testServerTls(pki, { clientCertificates: 'request' }), caFiles: ['./trusted-ca.crt'] }, certificateIdentity: { field: 'emailAddress', autoLogin: true } }),
        ],
      }),
    });
    if (!readOnlySkip) {
      readOnlyFs = testFilesystem(16);
      servers.readonly = await startTestServer({ dataDir: join(readOnlyFs.dir, 'data'), config: configYaml({ spool: { minFreeBytes: 0, minFreeInodes: 0 }, listeners: [testListener('mx')] }) });
    }
    servers.full = await startTestServer({
      config: configYaml({ spool: { minFreeBytes: Number.MAX_SAFE_INTEGER }, listeners: [testListener('mx')] }),
    });
    servers.deferring = await startTestServer({
      files: { recipients: 'known@example.test\n' },
      config: configYaml({ localDomains: ['example.test'], localRecipients: './recipients', unknownRecipientReply: 'defer', listeners: [testListener('mx')] }),
    });
    servers.inodes = await startTestServer({
      config: configYaml({ spool: { minFreeBytes: 0, minFreeInodes: Number.MAX_SAFE_INTEGER }, listeners: [testListener('mx')] }),
    });
    if (!needsRedis().skip) {
      redis = await startRedis();
      servers.redis = await startTestServer({
        files: { users },
        config: configYaml({
          store: { redis: { url: redis.url, timeoutMs: 2000 } },
          sandbox: { timeoutMs: 5000 },
          listeners: [
            testListener('r', { tls: { mode: 'none' }, auth: { mechanisms: ['PLAIN'] }, limits: { messagesPerIdentity: { count: 100, windowSeconds: 3600 } } }),
            testListener('slots', { limits: { connectionsPerIpInStore: true } }),
            testListener('rate', { limits: { connectionRatePerIp: { count: 100, windowSeconds: 3600 } } }),
          ],
          users: './users',
        }),
      });
    }
  });

  /**
   * `text`, with empty lines added so that it is no shorter than `file` is now: a file cut short is taken only once
   * unchanged for 2 s (SHRUNK_SETTLE_MS, tested in test/reload/half-written.test.ts), idle time in each row that edits one.
   */
  async function noShorter(file: string, text: string): Promise<string> {
    const short = (await readFile(file)).length - Buffer.byteLength(text);
    return short > 0 ? text + '\n'.repeat(short) : text;
  }

  after(async () => {
    for (const c of clients) c.destroy();
    readOnlyAgain?.writable();
    for (const s of Object.values(servers)) await s?.stop().catch(() => undefined);
    await redis?.stop();
    faultyDisk?.restore();
    readOnlyFs?.unmount();
  });


  /** Redis gone (killed): what needs the store fails closed from now on. */
  async function redisDown(): Promise<void> {
    if (redis!.pid !== null) await redis!.stop();
  }

  const port = (server: ServerName, listener: string): number => servers[server]!.port(listener);

  /** Connect, read the greeting (which may be the refusal). */
  /** Every client opened, closed at the end: one a row leaves open (its refusal seen) held its server's stop 5 s. */
  const clients: SmtpTestClient[] = [];

  async function open(server: ServerName, listener: string, opts: Parameters<typeof SmtpTestClient.connect>[1] = {}): Promise<{ c: SmtpTestClient; seen: Reply[] }> {
    const c = await SmtpTestClient.connect(port(server, listener), opts);
    clients.push(c);
    return { c, seen: [await c.read()] };
  }

  /** Connect, EHLO (and STARTTLS + EHLO with `tls`); `seen` collects every reply. */
  async function session(server: ServerName, listener: string, tls?: TlsClientOptions, helo = 'client.example'): Promise<{ c: SmtpTestClient; seen: Reply[]; say(line: string): Promise<Reply> }> {
    const { c, seen } = await open(server, listener);
    const say = async (line: string): Promise<Reply> => {
      const r = await c.command(line);
      seen.push(r);
      return r;
    };
    await say(`EHLO ${helo}`);
    if (tls) {
      await c.starttls(tls);
      await say(`EHLO ${helo}`);
    }
    return { c, seen, say };
  }

  /** A session that ends with `lines`; the replies to them all. */
  async function ending(server: ServerName, listener: string, lines: string[], tls?: TlsClientOptions): Promise<Reply[]> {
    const s = await session(server, listener, tls);
    for (const l of lines) {
      if (s.c.closed) break;
      await s.say(l);
    }
    await s.c.quit();
    return s.seen;
  }

  /** A session on main's mx that sends `raw` in one write after EHLO, which the server answers and closes. */
  async function closedAfter(raw: string): Promise<Reply[]> {
    const s = await session('main', 'mx');
    s.c.socket.write(raw);
    return [...s.seen, ...await s.c.repliesUntilClosed()];
  }

  /** MAIL, RCPT, DATA and a message; every reply. */
  async function message(s: Awaited<ReturnType<typeof session>>, body: string, from = 'someone@example.net', to = 'user@example.test'): Promise<void> {
    if ((await s.say(`MAIL FROM:<${from}>`)).code !== 250) return;
    if ((await s.say(`RCPT TO:<${to}>`)).code !== 250) return;
    if ((await s.say('DATA')).code !== 354) return;
    s.c.socket.write(`${body}\r\n.\r\n`);
    s.seen.push(await s.c.read());
  }

  /** A message from alice@example.com, logged in on the listener that binds senders. */
  async function loggedInMessage(body: string): Promise<Reply[]> {
    const s = await session('main', 'owned');
    await s.say(plainLogin('alice@example.com'));
    await message(s, body, 'alice@example.com', 'bob@example.com');
    await s.c.quit();
    return s.seen;
  }

  const expectCertificate = (client: keyof TestPki['clients']) => (line: Line): void => {
    const cert = line.certificate as { sha256?: string } | null;
    assert.equal(cert?.sha256, pki.clients[client].fingerprintSha256, 'the certificate\'s SHA-256 is on the line');
  };
  const expectUser = (user: string) => (line: Line): void => assert.equal(line.user, user);

  const ROWS = {
    // Before the greeting.
    tooManyClients: {
      server: 'main', stage: 'CONNECT', values: { hostname: 'mx.test' },
      async drive() {
        const held = await open('main', 'cap');
        assert.equal(held.seen[0]!.code, 220);
        const { c, seen } = await open('main', 'cap');
        held.c.destroy();
        c.destroy();
        return seen;
      },
    },
    closedForAnotherClient: {
      // Both places of the listener held from 127.0.0.1: the one idle longest is closed for a client of another address.
      server: 'main', stage: 'SMTP', values: { hostname: 'mx.test' },
      async drive() {
        const stale = await session('main', 'shared');
        const held = await session('main', 'shared');
        const other = await open('main', 'shared', { localAddress: '127.0.0.2' });
        assert.equal(other.seen[0]!.code, 220);
        const seen = [...stale.seen, ...await stale.c.repliesUntilClosed()];
        for (const c of [held.c, other.c]) c.destroy();
        return seen;
      },
    },
    closedIdleForAnotherClient: {
      // The only place of the listener held by a client idle since its EHLO: closed for a client of another address.
      server: 'main', stage: 'SMTP', values: { hostname: 'mx.test', mail: 'never a MAIL FROM', min: '300' },
      text: /^mx\.test Too many connected clients, this connection idle for [\d.]+ s is closed for another client$/,
      async drive() {
        const idle = await session('main', 'idlefull');
        await sleep(450); // past idleWhenFullMs since the EHLO was answered
        const other = await open('main', 'idlefull', { localAddress: '127.0.0.2' });
        assert.equal(other.seen[0]!.code, 220);
        const seen = [...idle.seen, ...await idle.c.repliesUntilClosed()];
        other.c.destroy();
        return seen;
      },
    },
    tooManyConnectionsFromAddress: {
      server: 'main', stage: 'CONNECT',
      async drive() {
        const held = await open('main', 'perip');
        assert.equal(held.seen[0]!.code, 220);
        const { c, seen } = await open('main', 'perip');
        held.c.destroy();
        c.destroy();
        return seen;
      },
    },
    connectionRateFromAddress: {
      server: 'main', stage: 'CONNECT', values: { ip: '127.0.0.1' },
      async drive() {
        const first = await open('main', 'rate');
        assert.equal(first.seen[0]!.code, 220);
        first.c.destroy(); // closed: the limit counts connections made, not open ones
        const { c, seen } = await open('main', 'rate');
        c.destroy();
        return seen;
      },
    },
    tooManyErrors: {
      server: 'main', stage: 'SMTP', values: { hostname: 'mx.test' },
      async drive() {
        const s = await session('main', 'mx');
        for (const l of ['FOO', 'BAR', 'BAZ']) await s.say(l);
        s.seen.push(await s.c.read()); // the third refusal reached maxErrors: 421, closed
        assert.ok(await s.c.waitClosed());
        return s.seen;
      },
    },
    tooManyAuthFailures: {
      server: 'main', stage: 'CONNECT', ip: '127.0.0.5',
      async drive() {
        const first = await SmtpTestClient.connect(port('main', 'authlimit'), { localAddress: '127.0.0.5' });
        const seen = [await first.read(), await first.command('EHLO client.example'), await first.command(plainLogin('alice@example.com', 'wrong'))];
        await first.quit();
        const again = await SmtpTestClient.connect(port('main', 'authlimit'), { localAddress: '127.0.0.5' });
        seen.push(await again.read());
        again.destroy();
        return seen;
      },
    },
    accountAuthDeferred: {
      server: 'main', stage: 'AUTH', ip: '127.0.0.7', serverFault: /^account reached limits\.authFailuresPerAccount/,
      async drive() {
        const seen: Reply[] = [];
        // One wrong guess locks the account (limit 1); the next login from an address it never logged in from is deferred.
        for (const password of ['wrong', PASSWORD]) {
          const c = await SmtpTestClient.connect(port('main', 'accountlimit'), { localAddress: '127.0.0.7' });
          seen.push(await c.read(), await c.command('EHLO client.example'), await c.command(plainLogin('dave@example.com', password)));
          await c.quit();
        }
        return seen;
      },
    },
    certificateNotTrustedStrict: {
      server: 'main', stage: 'STARTTLS', unsent: true,
      check(line) {
        expectCertificate('stranger')(line);
        // No reply went out (the connection is closed): the line says so, as for a client that had left.
        assert.equal(line.sent, false);
        assert.match(String(line.msg), /: 421 4\.7\.1 Client certificate not trusted; .*\(not sent: the connection was closed without a reply \(tls\.strict\)\)$/);
      },
      async drive() {
        const { c, seen } = await open('main', 'strict');
        seen.push(await c.command('EHLO client.example'));
        await c.starttls(stranger).catch(() => undefined);
        await c.waitClosed();
        return seen;
      },
    },
    certificateRequiredNotTrusted: {
      server: 'main', stage: 'STARTTLS', text: /^Client certificate not trusted \(.+\)$/, check: expectCertificate('stranger'),
      async drive() {
        const { c, seen } = await open('main', 'require');
        seen.push(await c.command('EHLO client.example'));
        await c.starttls(stranger);
        seen.push(await c.read());
        c.destroy();
        return seen;
      },
    },
    certificateRequiredMissing: {
      server: 'main', stage: 'STARTTLS',
      async drive() {
        const { c, seen } = await open('main', 'require');
        seen.push(await c.command('EHLO client.example'));
        await c.starttls({});
        seen.push(await c.read());
        c.destroy();
        return seen;
      },
    },

    badUtf8: {
      server: 'main', stage: 'SMTP',
      async drive() {
        const s = await session('main', 'mx');
        s.c.socket.write(Buffer.from('NOOP \xff\xfe\r\n', 'latin1'));
        s.seen.push(await s.c.read());
        await s.c.quit();
        return s.seen;
      },
    },

    pipelinedAfterRefusedData: { server: 'main', stage: 'DATA', drive: () => closedAfter('DATA\r\nSubject: sent before the reply\r\n\r\nhi\r\n.\r\n') },
    chunkingNotOffered: { server: 'main', stage: 'BDAT', drive: () => closedAfter('BDAT 12 LAST\r\nRSET\r\nNOOP\r\n') },
    dataSyntax: { server: 'main', stage: 'DATA', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:<user@example.test>', 'DATA x']) },
    rsetSyntax: { server: 'main', stage: 'RSET', drive: () => ending('main', 'mx', ['RSET x']) },
    starttlsNotOffered: { server: 'main', stage: 'STARTTLS', drive: () => ending('main', 'proto', ['STARTTLS']) },
    // smtp-server's own refusals, sent as the catalogue has them (smtp-server-replies.ts); sendmail's WIZ <password>
    // got `200 Please pass, oh mighty wizard` (no line, no refusal counted).
    commandNotRecognized: { server: 'main', stage: 'UNKNOWN', drive: () => ending('main', 'mx', ['WIZ secret']) },
    heloFirst: {
      server: 'main', stage: 'MAIL',
      async drive() {
        const { c, seen } = await open('main', 'mx');
        seen.push(await c.command('MAIL FROM:<someone@example.net>'));
        await c.quit();
        return seen;
      },
    },
    needMail: { server: 'main', stage: 'RCPT', drive: () => ending('main', 'mx', ['RCPT TO:<user@example.test>']) },
    needRcpt: { server: 'main', stage: 'DATA', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'DATA']) },
    senderSyntax: { server: 'main', stage: 'MAIL', drive: () => ending('main', 'mx', ['MAIL FROM:no-brackets']) },
    recipientSyntax: { server: 'main', stage: 'RCPT', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:no-brackets']) },
    starttlsSyntax: { server: 'main', stage: 'STARTTLS', drive: () => ending('main', 'mx', ['STARTTLS now']) },
    tlsAlreadyActive: { server: 'main', stage: 'STARTTLS', check: expectCertificate('alice'), drive: () => ending('main', 'mx', ['STARTTLS'], alice) },
    vrfySyntax: { server: 'main', stage: 'VRFY', drive: () => ending('main', 'mx', ['VRFY']) },
    parameterSyntax: { server: 'main', stage: 'RCPT', values: { parameter: 'ORCPT' }, drive: () => ending('main', 'proto', ['MAIL FROM:<a@example.net>', 'RCPT TO:<user@example.test> ORCPT=rfc822;a+0D+0Ab@example.test']) },
    heloSyntax: { server: 'main', stage: 'HELO', drive: () => ending('main', 'proto', ['HELO two names.example']) },
    ehloSyntax: { server: 'main', stage: 'EHLO', drive: () => ending('main', 'proto', ['EHLO']) },
    heloNameSyntax: { server: 'main', stage: 'EHLO', drive: () => ending('main', 'proto', ['EHLO bad\u0001name.example']) },
    // During the greeting delay (talking during the checks of the connection instead: test/smtp/listener-slots.test.ts, early-talker).
    talkedTooSoon: {
      server: 'main', stage: 'CONNECT', values: { hostname: 'mx.test', heldBy: 'limits.greetingDelayMs' },
      async drive() {
        const c = await SmtpTestClient.connect(port('main', 'early'));
        clients.push(c);
        c.socket.write('EHLO early.example\r\n');
        return [await c.read(60_000)];
      },
    },
    nestedMail: { server: 'main', stage: 'MAIL', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'MAIL FROM:<someone@example.net>']) },

    authAlreadyDone: { server: 'main', stage: 'AUTH', check: expectUser('alice@example.com'), drive: () => ending('main', 'plain', [plainLogin('alice@example.com'), plainLogin('alice@example.com')]) },
    authInTransaction: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'plain', ['MAIL FROM:<someone@example.net>', plainLogin('alice@example.com')]) },
    authNeedsTls: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'mx', [plainLogin('alice@example.com')]) },
    authMechanismUnknown: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'plain', ['AUTH CRAM-MD5']) },
    authSyntax: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'plain', ['AUTH']) },
    authExternalSyntax: { server: 'main', stage: 'AUTH', check: expectCertificate('alice'), drive: () => ending('main', 'mx', ['AUTH EXTERNAL a b'], alice) },
    authAborted: { server: 'main', stage: 'AUTH', check: expectCertificate('alice'), drive: () => ending('main', 'mx', ['AUTH EXTERNAL', '*'], alice) },
    authBadBase64: { server: 'main', stage: 'AUTH', check: expectCertificate('alice'), drive: () => ending('main', 'mx', ['AUTH EXTERNAL !!!'], alice) },
    authPlainSyntax: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'plain', ['AUTH PLAIN a b']) },
    authLoginSyntax: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'sub', ['AUTH LOGIN a b']) },
    proxyCommandNotAllowed: { server: 'main', stage: 'XCLIENT', drive: () => ending('main', 'mx', ['XCLIENT ADDR=192.0.2.1']) },
    authMalformed: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'plain', [`AUTH PLAIN ${Buffer.from('alice@example.com\0x').toString('base64')}`]) },
    authInvalid: { server: 'main', stage: 'AUTH', drive: () => ending('main', 'plain', [plainLogin('alice@example.com', 'wrong')]) },

    parameterUnsupported: { server: 'main', stage: 'MAIL', values: { parameter: 'FOO' }, drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net> FOO=BAR']) },
    parameterTooLong: { server: 'main', stage: 'MAIL', values: { parameter: 'ENVID', n: '100' }, drive: () => ending('main', 'mx', [`MAIL FROM:<someone@example.net> ENVID=${'e'.repeat(101)}`]) },
    envidSyntax: { server: 'main', stage: 'MAIL', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net> ENVID=a+E9b']) },
    utf8AddressUndeclared: { server: 'main', stage: 'MAIL', drive: () => ending('main', 'mx', ['MAIL FROM:<jürgen@example.net>']) },
    tlsRequired: { server: 'main', stage: 'MAIL', drive: () => ending('main', 'reqtls', ['MAIL FROM:<someone@example.net>']) },
    authRequired: { server: 'main', stage: 'MAIL', drive: () => ending('main', 'sub', ['MAIL FROM:<someone@example.net>']) },
    certificateRevoked: {
      server: 'main', stage: 'MAIL', check: (line) => { expectCertificate('alice')(line); expectUser('alice@example.com')(line); },
      async drive() {
        const s = await session('main', 'crl', alice);
        const main = servers.main!;
        const generation = main.runtime.generation;
        await writeFile(join(main.dir, 'ca.crl'), await createCrl(pki.authorities.ca, [pki.clients.alice.serial]));
        await until('the CRL that revokes alice is reloaded', () => main.runtime.generation !== generation, { timeoutMs: 60_000 });
        await s.say('MAIL FROM:<alice@example.com>');
        await s.c.quit();
        return s.seen;
      },
    },
    certificateCaWithdrawn: {
      server: 'main', stage: 'MAIL', check: (line) => { expectCertificate('alice')(line); expectUser('alice@example.com')(line); },
      async drive() {
        const s = await session('main', 'catrust', alice);
        const main = servers.main!;
        const generation = main.runtime.generation;
        await writeFile(join(main.dir, 'trusted-ca.crt'), await noShorter(join(main.dir, 'trusted-ca.crt'), await readFile(pki.otherCa.cert, 'utf8')));
        await until('the CA file without alice\'s CA is reloaded', () => main.runtime.generation !== generation, { timeoutMs: 60_000 });
        await s.say('MAIL FROM:<alice@example.com>');
        await s.c.quit();
        return s.seen;
      },
    },
    certificatePinRemoved: {
      server: 'main', stage: 'MAIL', check: (line) => { expectCertificate('stranger')(line); expectUser('carol@example.com')(line); assert.equal(line.identity, 'carol@example.com'); },
      async drive() {
        const s = await session('main', 'pinned', stranger);
        const main = servers.main!;
        const generation = main.runtime.generation;
        await writeFile(join(main.dir, 'pins'), await noShorter(join(main.dir, 'pins'), '# no pins\n'));
        await until('the pin table without the pin is reloaded', () => main.runtime.generation !== generation, { timeoutMs: 60_000 });
        await s.say('MAIL FROM:<carol@example.com>');
        await s.c.quit();
        return s.seen;
      },
    },
    certificateExpired: {
      server: 'main', stage: 'MAIL', check: (line) => { expectUser('temp@example.com')(line); },
      async drive() {
        // Verified at the handshake (autoLogin by emailAddress), expired a few seconds later, under the open session.
        const notAfter = new Date(Math.ceil(Date.now() / 1000) * 1000 + 5000);
        const temp = await issueClientCertificate(pki.authorities.ca, { commonName: 'temp', emailAddress: 'temp@example.com', keyType: 'ecdsa', notAfter });
        const s = await session('main', 'crl', { ca: alice.ca, cert: temp.cert, key: temp.key });
        await until('the certificate expired', () => Date.now() > notAfter.getTime() + 1000, { timeoutMs: 30_000, intervalMs: 100 });
        await s.say('MAIL FROM:<temp@example.com>');
        return s.seen;
      },
    },
    tooManyMessages: {
      // The accepted message is refused by the predelivery script, from the null sender: no bounce, nothing left
      // queued for a later row's reload to retry. Its delivery lines are its own, not this refusal's.
      server: 'main', stage: 'MAIL', serverFault: /(status=bounced \(550 5\.7\.1 Delivery refused by policy\)|^undeliverable bounce \(null sender\): discarded)$/,
      async drive() {
        const logs = servers.main!.logs;
        const mark = logs.length;
        const s = await session('main', 'onemessage');
        await message(s, 'Subject: one\r\n\r\nhi', '', 'refuse-delivery@example.test');
        await s.say('MAIL FROM:<someone@example.net>');
        assert.ok(await s.c.waitClosed());
        await until('the message delivered (refused)', () => logs.slice(mark).some((l) => l.msg === 'undeliverable bounce (null sender): discarded'), { timeoutMs: 60_000 });
        return s.seen;
      },
    },
    listenerRemoved: {
      // The reloads that remove the listener and put it back each warn that only a restart applies them.
      server: 'main', stage: 'MAIL', serverFault: /^configuration change needs a restart: (listener doomed removed|new listener doomed )/,
      async drive() {
        const s = await session('main', 'doomed');
        const main = servers.main!;
        const file = join(main.dir, 'postern.yaml');
        const before = await readFile(file, 'utf8');
        const config = parse(before) as { listeners: Array<{ name: string }> };
        config.listeners = config.listeners.filter((l) => l.name !== 'doomed');
        const reloaded = async (text: string, what: string): Promise<void> => {
          const generation = main.runtime.generation;
          await writeFile(file, await noShorter(file, text));
          await until(what, () => main.runtime.generation !== generation, { timeoutMs: 60_000 });
          await main.reloader.whenIdle(); // no build left running into the rows after this one
        };
        await reloaded(stringify(config), 'the configuration without the listener is reloaded');
        await s.say('MAIL FROM:<someone@example.net>');
        assert.ok(await s.c.waitClosed());
        // A new connection to its port (bound until a restart) gets the same reply at once, and its own line.
        const late = await SmtpTestClient.connect(port('main', 'doomed'));
        const refused = await late.read();
        assert.equal(refused.text, '421 4.3.2 Service not available, closing transmission channel');
        assert.ok(await late.waitClosed());
        await until('the late connection\'s decision line', () => main.logs.some((l) => isDecision(l) && l.stage === 'CONNECT' && l.reason === REPLIES.listenerRemoved.reason));
        const lateLines = main.logs.filter((l) => isDecision(l) && l.stage === 'CONNECT' && l.reason === REPLIES.listenerRemoved.reason);
        assert.equal(lateLines.length, 1, JSON.stringify(lateLines));
        assert.equal(`${lateLines[0]!.code} ${lateLines[0]!.enhanced} ${lateLines[0]!.reply}`, refused.text, 'the line has the reply the client got');
        assert.match(String(lateLines[0]!.msg), /^NOQUEUE: defer: CONNECT from unknown\[127\.0\.0\.1\]: 421 4\.3\.2 /);
        main.logs.splice(main.logs.indexOf(lateLines[0]!), 1); // checked here: the row's checks that follow are of the session's one line
        await reloaded(before, 'the listener is back');
        return s.seen;
      },
    },
    loginWithdrawn: {
      server: 'main', stage: 'MAIL', check: expectUser('alice@example.com'),
      async drive() {
        const s = await session('main', 'plain');
        await s.say(plainLogin('alice@example.com'));
        const main = servers.main!;
        const usersFile = join(main.dir, 'users');
        const before = await readFile(usersFile, 'utf8');
        const reloaded = async (text: string, what: string): Promise<void> => {
          const generation = main.runtime.generation;
          await writeFile(usersFile, await noShorter(usersFile, text));
          await until(what, () => main.runtime.generation !== generation, { timeoutMs: 60_000 });
          await main.reloader.whenIdle(); // no build left running into the rows after this one
        };
        await reloaded(`alice@example.com:${await hashPassword('alice-Secret-2')}\n`, 'the users file with alice\'s new password is reloaded');
        await s.say('MAIL FROM:<alice@example.com>');
        await s.c.quit();
        await reloaded(before, 'the users file is back');
        return s.seen;
      },
    },
    storageFull: { server: 'full', stage: 'MAIL', drive: () => ending('full', 'mx', ['MAIL FROM:<someone@example.net>']) },
    inodesFull: { server: 'inodes', stage: 'MAIL', drive: () => ending('inodes', 'mx', ['MAIL FROM:<someone@example.net>']) },
    spoolReadOnly: {
      server: 'readonly', stage: 'MAIL', serverFault: /^spool: the filesystem of .* is read-only \(EROFS/,
      async drive() {
        readOnlyAgain = remountReadOnly(readOnlyFs!);
        const freeSpace = servers.readonly!.runtime.spool.freeSpace;
        await until('the server sees the read-only filesystem', () => freeSpace.short(0) === 'readOnly'); // looks once a second
        return ending('readonly', 'mx', ['MAIL FROM:<someone@example.net>']);
      },
    },
    spoolNotConfirming: {
      server: 'main', stage: 'MAIL', serverFault: /^the spool cannot confirm writes/,
      async drive() {
        // A sync the disk does not answer, past a deadline made short for it (the disk-fault preload does this to a
        // real journal in test/spool/hung-disk-early-refusal.test.ts; here the line is what is looked at).
        const spool = servers.main!.runtime.spool;
        const deadline = spool.syncDeadline.ms;
        let answer: () => void = () => undefined;
        spool.syncDeadline.ms = 1;
        try {
          await spool.syncs.within('a write the disk does not answer', () => new Promise<void>((resolve) => { answer = resolve; })).catch(() => undefined);
          return await ending('main', 'mx', ['MAIL FROM:<someone@example.net>']);
        } finally {
          answer();
          spool.syncDeadline.ms = deadline;
          await until('the spool confirms writes again', () => spool.unconfirmedFor() === null);
        }
      },
    },
    tooMuchMailFromIdentity: {
      server: 'main', stage: 'MAIL', values: { identity: 'alice@example.com' }, check: expectUser('alice@example.com'),
      drive: () => ending('main', 'plain', [plainLogin('alice@example.com'), 'MAIL FROM:<alice@example.com>', 'RSET', 'MAIL FROM:<alice@example.com>']),
    },
    limitStoreUnavailable: {
      server: 'redis', stage: 'MAIL', serverFault: /^store: Redis unreachable/, check: expectUser('alice@example.com'),
      async drive() {
        const s = await session('redis', 'r');
        assert.equal((await s.say(plainLogin('alice@example.com'))).code, 235);
        await redisDown();
        await s.say('MAIL FROM:<alice@example.com>');
        await s.c.quit();
        return s.seen;
      },
    },
    // After the one above, which stops Redis.
    connectionLimitStoreUnavailable: {
      server: 'redis', stage: 'CONNECT', serverFault: /^store: Redis unreachable/,
      async drive() {
        await redisDown();
        const { c, seen } = await open('redis', 'slots');
        c.destroy();
        return seen;
      },
    },
    connectionRateStoreUnavailable: {
      server: 'redis', stage: 'CONNECT', serverFault: /^store: Redis unreachable/,
      async drive() {
        await redisDown();
        const { c, seen } = await open('redis', 'rate');
        c.destroy();
        return seen;
      },
    },
    authStoreUnavailable: { server: 'redis', stage: 'AUTH', serverFault: /^store: Redis unreachable/, drive: async () => { await redisDown(); return ending('redis', 'r', [plainLogin('alice@example.com')]); } },
    senderNotOwned: {
      server: 'main', stage: 'MAIL', values: { sender: 'bob@example.com', login: 'alice@example.com', rule: String.raw`[\w-]+` }, check: expectUser('alice@example.com'),
      drive: () => ending('main', 'owned', [plainLogin('alice@example.com'), 'MAIL FROM:<bob@example.com>']),
    },
    nullSenderRefused: {
      server: 'main', stage: 'MAIL', values: { login: 'alice@example.com', rule: 'null-sender' }, check: expectUser('alice@example.com'),
      drive: () => ending('main', 'owned', [plainLogin('alice@example.com'), 'MAIL FROM:<>']),
    },

    invisibleInAddress: { server: 'main', stage: 'RCPT', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net> SMTPUTF8', 'RCPT TO:<ce\u00ado@example.com>']) },
    quotedLocalPart: { server: 'main', stage: 'RCPT', drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:<"a b"@example.com>']) },
    unknownLocalRecipient: { server: 'main', stage: 'RCPT', values: { rcpt: 'nobody@mailboxes.example' }, drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:<nobody@mailboxes.example>']) },
    unknownLocalRecipientDeferred: { server: 'deferring', stage: 'RCPT', values: { rcpt: 'nobody@example.test' }, drive: () => ending('deferring', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:<nobody@example.test>']) },
    relayDenied: { server: 'main', stage: 'RCPT', values: { rcpt: 'victim@elsewhere.example' }, drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:<victim@elsewhere.example>']) },

    messageTooBig: {
      server: 'main', stage: 'END-OF-MESSAGE',
      async drive() {
        const s = await session('main', 'mx');
        await message(s, `Subject: big\r\n\r\n${'x'.repeat(3000)}`);
        await s.c.quit();
        return s.seen;
      },
    },
    dataTimeout: {
      server: 'main', stage: 'DATA',
      async drive() {
        const s = await session('main', 'slowdata');
        await s.say('MAIL FROM:<someone@example.net>');
        await s.say('RCPT TO:<user@example.test>');
        await s.say('DATA');
        s.c.socket.write('Subject: never ends\r\n'); // and no more: the 421 comes at dataTimeoutMs
        s.seen.push(await s.c.read());
        await s.c.waitClosed();
        return s.seen;
      },
    },
    dataTooSlowForAnotherClient: {
      // The only place of the listener held by a message that stopped arriving: closed for a client of another address.
      server: 'main', stage: 'DATA', values: { hostname: 'mx.test', min: '1000' },
      async drive() {
        const s = await session('main', 'dripfull');
        await s.say('MAIL FROM:<someone@example.net>');
        await s.say('RCPT TO:<user@example.test>');
        await s.say('DATA');
        s.c.socket.write('Subject: a drip\r\n');
        await sleep(1500); // past dataRateWindowMs since the 354 (the server's window began before the client read it)
        const other = await open('main', 'dripfull', { localAddress: '127.0.0.2' });
        assert.equal(other.seen[0]!.code, 220);
        const seen = [...s.seen, ...await s.c.repliesUntilClosed()];
        other.c.destroy();
        return seen;
      },
    },
    tooManyHeaderFields: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { n: '3' },
      async drive() {
        const s = await session('main', 'mx');
        await message(s, 'Subject: a\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\nbody');
        await s.c.quit();
        return s.seen;
      },
    },
    headerTooBig: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { n: '200' },
      async drive() {
        const s = await session('main', 'mx');
        await message(s, `Subject: ${'h'.repeat(300)}\r\n\r\nbody`);
        await s.c.quit();
        return s.seen;
      },
    },
    bareCrInHeader: {
      server: 'main', stage: 'END-OF-MESSAGE',
      async drive() {
        const s = await session('main', 'mx');
        await message(s, 'Subject: a\rX-B: 2\r\n\r\nbody');
        await s.c.quit();
        return s.seen;
      },
    },
    fromHeaderCount: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { n: '2' }, check: expectUser('alice@example.com'),
      drive: () => loggedInMessage('From: alice@example.com\r\nFrom: alice@example.com\r\n\r\nbody'),
    },
    fromHeaderNoAddress: {
      server: 'main', stage: 'END-OF-MESSAGE', check: expectUser('alice@example.com'),
      drive: () => loggedInMessage('From: undisclosed:;\r\n\r\nbody'),
    },
    fromHeaderNotOwned: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { address: 'ceo@example.com', login: 'alice@example.com' }, check: expectUser('alice@example.com'),
      drive: () => loggedInMessage('From: The CEO <ceo@example.com>\r\n\r\nbody'),
    },
    senderHeaderNotOwned: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { address: 'ceo@example.com', login: 'alice@example.com' }, check: expectUser('alice@example.com'),
      drive: () => loggedInMessage('From: alice@example.com\r\nSender: ceo@example.com\r\n\r\nbody'),
    },
    tooManyHops: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { hops: '50' },
      async drive() {
        const s = await session('main', 'proto');
        await message(s, `${'Received: from a by b\r\n'.repeat(50)}Subject: loop\r\n\r\nbody`);
        await s.c.quit();
        return s.seen;
      },
    },
    nulInHeader: {
      server: 'main', stage: 'END-OF-MESSAGE',
      async drive() {
        const s = await session('main', 'mx');
        await message(s, 'From: <ceo@example.com\u0000@evil.test>\r\n\r\nbody');
        await s.c.quit();
        return s.seen;
      },
    },

    // Script verdicts without their own text.
    connectRefused: {
      server: 'main', stage: 'CONNECT', values: { hook: 'connect' }, ip: '127.0.0.9',
      async drive() {
        const c = await SmtpTestClient.connect(port('main', 'mx'), { localAddress: '127.0.0.9' });
        const seen = [await c.read()];
        c.destroy();
        return seen;
      },
    },
    heloRefused: { server: 'main', stage: 'HELO', values: { hook: 'helo' }, drive: async () => (await session('main', 'mx', undefined, 'reject.example')).seen },
    authRefused: { server: 'main', stage: 'AUTH', values: { hook: 'auth' }, drive: () => ending('main', 'plain', [plainLogin('scripted-reject')]) },
    senderRefused: { server: 'main', stage: 'MAIL', values: { hook: 'mailfrom' }, drive: () => ending('main', 'mx', ['MAIL FROM:<reject@sender.example>']) },
    recipientRefused: { server: 'main', stage: 'RCPT', values: { hook: 'rcptto' }, drive: () => ending('main', 'mx', ['MAIL FROM:<someone@example.net>', 'RCPT TO:<script-reject@example.test>']) },
    messageRefused: {
      server: 'main', stage: 'END-OF-MESSAGE', values: { hook: 'data' },
      async drive() {
        const s = await session('main', 'mx');
        await message(s, 'Subject: refuse me\r\n\r\nbody');
        await s.c.quit();
        return s.seen;
      },
    },
    policyDeferred: { server: 'main', stage: 'MAIL', values: { hook: 'mailfrom' }, drive: () => ending('main', 'mx', ['MAIL FROM:<defer@sender.example>']) },
    authDeferred: { server: 'main', stage: 'AUTH', values: { hook: 'auth' }, drive: () => ending('main', 'plain', [plainLogin('scripted-defer')]) },
    authPolicyFailed: { server: 'main', stage: 'AUTH', serverFault: /^policy script auth failed: .*auth\.ts:\d+:\d+: Error: a bug in the auth script$/, values: { hook: 'auth' }, drive: () => ending('main', 'plain', [plainLogin('scripted-throw')]) },
    deferredDisconnect: { server: 'main', stage: 'HELO', values: { hook: 'helo' }, drive: async () => (await session('main', 'mx', undefined, 'deferclose.example')).seen },
    policyFailed: { server: 'main', stage: 'MAIL', serverFault: /^policy script mailfrom failed: .*mailfrom\.ts:\d+:\d+: Error: a bug in the script$/, values: { hook: 'mailfrom' }, drive: () => ending('main', 'mx', ['MAIL FROM:<throw@sender.example>']) },
    spoolWriteFull: {
      server: 'main', stage: 'END-OF-MESSAGE', serverFault: /^spooling failed$/,
      async drive() {
        const s = await session('main', 'mx');
        faultyDisk.failWrite();
        await message(s, 'Subject: full disk\r\n\r\nbody');
        await s.c.quit();
        return s.seen;
      },
    },
    localError: {
      server: 'main', stage: 'END-OF-MESSAGE', serverFault: /^spooling failed$/, text: /^Temporary local problem, try again later \([\w-]+\)$/,
      async drive() {
        const s = await session('main', 'mx');
        faultyDisk.failSync();
        await message(s, 'Subject: disk fault\r\n\r\nbody');
        await s.c.quit();
        return s.seen;
      },
    },

    // predelivery: no SMTP reply; the delivery line of the recipient (relay=none) carries the reason.
    deliveryRefused: { server: 'main', stage: 'DELIVERY', drive: () => spoolFor('refuse-delivery@example.test') },
    deliveryDeferred: { server: 'main', stage: 'DELIVERY', drive: () => spoolFor('defer-delivery@example.test') },

    // Last on its server: the server stops.
    shuttingDown: {
      server: 'full', stage: 'NOOP',
      async drive() {
        const s = await session('full', 'mx');
        const closing = servers.full!.close();
        await s.say('NOOP');
        await closing;
        s.c.destroy();
        return s.seen;
      },
    },
  } satisfies Record<RefusalName, Row>;

  /** A message for `to`, accepted (null sender: a refused delivery makes no bounce). */
  async function spoolFor(to: string): Promise<Reply[]> {
    const s = await session('main', 'mx');
    await message(s, 'Subject: for delivery\r\n\r\nbody', '', to);
    assert.equal(s.seen.at(-1)!.code, 250, 'accepted');
    await s.c.quit();
    return s.seen;
  }

  /** `{name}` → value; in a reason the values of `rule` may be patterns. */
  function filled(template: string, values: Record<string, string> = {}): string {
    return template.replace(/\{(\w+)\}/g, (_, k: string) => values[k] ?? `{${k}}`);
  }
  const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  /** A pattern for a template whose values may be patterns themselves (`rule`). */
  function pattern(template: string, values: Record<string, string> = {}): RegExp {
    let out = '';
    let from = 0;
    for (const m of template.matchAll(/\{(\w+)\}/g)) {
      out += escape(template.slice(from, m.index));
      const v = values[m[1]!];
      out += v === undefined ? '.*' : m[1] === 'rule' ? v : escape(v);
      from = m.index! + m[0].length;
    }
    return new RegExp(`^${out}${escape(template.slice(from))}$`);
  }

  const isDecision = (l: Line): boolean => l.decision === 'reject' || l.decision === 'defer';

  test('every refusal in the reply catalogue has a row here', () => {
    const refusals = (Object.entries(REPLIES) as Array<[string, ReplySpec]>).filter(([, s]) => s.code >= 400).map(([n]) => n).sort();
    assert.deepEqual(Object.keys(ROWS).sort(), refusals);
  });

  for (const [name, row] of Object.entries(ROWS) as Array<[RefusalName, Row]>) {
    const spec: ReplySpec = REPLIES[name];
    test(`${name} (${spec.code} ${spec.enhanced}): one line with client, stage, reply and reason`, { timeout: 90_000, skip: row.server === 'redis' ? needsRedis().skip : row.server === 'readonly' ? readOnlySkip : false }, async () => {
      const server = servers[row.server]!;
      const logs = server.logs;
      const mark = logs.length;
      const seen = await row.drive();
      const reason = pattern(spec.reason!, row.values);
      const ip = row.ip ?? '127.0.0.1';

      if (row.stage === 'DELIVERY') {
        await until(`the delivery line for ${name}`, () => logs.slice(mark).some((l) => typeof l.reason === 'string' && reason.test(l.reason)), { timeoutMs: 60_000 });
        const lines = logs.slice(mark).filter((l) => typeof l.reason === 'string' && reason.test(l.reason));
        assert.equal(lines.length, 1, JSON.stringify(lines));
        const line = lines[0]!;
        assert.equal(line.relay, 'none');
        assert.equal(line.status, spec.code >= 500 ? 'bounced' : 'deferred');
        assert.equal(line.reply, `${spec.code} ${spec.enhanced} ${spec.text}`);
        assert.match(String(line.msg), new RegExp(`^\\w+: to=<[^>]+>, relay=none, delay=[\\d.]+, attempt=1, .*status=${line.status} \\(${escape(String(line.reply))}\\)$`));
        return;
      }

      const target = (l: Line): boolean => isDecision(l) && l.code === spec.code && typeof l.reason === 'string' && reason.test(l.reason);
      // Written before the reply leaves (or, unsent, before the connection closes).
      await until(`the decision line of ${name}`, () => logs.slice(mark).some(target), { timeoutMs: 30_000 });
      const fresh = logs.slice(mark);
      const lines = fresh.filter(target);
      assert.equal(lines.length, 1, `exactly one line for ${name}: ${JSON.stringify(lines)}`);
      const line = lines[0]!;
      const refusalsSeen = seen.filter((r) => r.code >= 400).length + (row.unsent ? 1 : 0);
      assert.equal(fresh.filter(isDecision).length, refusalsSeen, `one decision line per refusal the client got: ${JSON.stringify(fresh.filter(isDecision).map((l) => l.msg))}`);
      if (!row.unsent) {
        const wire = seen.find((r) => r.code === spec.code);
        assert.ok(wire, `the client got ${spec.code}: ${JSON.stringify(seen.map((r) => r.text))}`);
        assert.equal(wire.text, `${spec.code} ${line.enhanced} ${line.reply}`, 'the line has the reply the client got');
      }

      assert.equal(line.level, 30, 'info');
      assert.equal(line.decision, spec.code >= 500 ? 'reject' : 'defer');
      assert.equal(line.stage, row.stage);
      assert.equal(line.client, ip);
      assert.equal(line.enhanced, spec.enhanced);
      if (row.text) assert.match(String(line.reply), row.text);
      else assert.equal(line.reply, filled(spec.text, row.values));
      assert.ok(typeof line.listener === 'string');
      assert.ok('certificate' in line && 'identity' in line, 'certificate and identity fields');
      assert.match(String(line.msg), new RegExp(`^\\w+: ${line.decision}: ${escape(row.stage)} from [^\\s\\[]+\\[${escape(ip)}\\]: ${spec.code} ${escape(spec.enhanced)} `));
      // A refusal of MAIL FROM names the sender, whoever refused it (smtp-server's 530 before AUTH too), as Postfix logs it.
      // (Not for a sender that does not parse: there is none to name.)
      if (row.stage === 'MAIL' && line.from === undefined && name !== 'senderSyntax') assert.fail(`${name}: no from on a MAIL line: ${String(line.msg)}`);
      if (row.stage === 'MAIL' && name !== 'senderSyntax') assert.match(String(line.msg), new RegExp(`; from=<${escape(String(line.from))}> `));
      const hook = row.values?.hook;
      if (hook) assert.equal(line.script, join(server.dir, 'scripts', `${hook}.ts`), 'the script that decided');
      else assert.equal(line.script, undefined);
      row.check?.(line);
      // A client's fault never puts a stack trace in the log at info or below.
      const traced = fresh.filter((l) => Number(l.level) <= 30 && /\n\s+at /.test(JSON.stringify(l).replace(/\\n/g, '\n')));
      assert.deepEqual(traced.map((l) => l.msg), [], 'no stack trace at info');
      // (The expiry watch's warnings about the short-lived certificate certificateExpired's row made, at any later row:
      // the server's own schedule, not a refusal's.)
      const expiryWatch = /^client certificate (expires soon|has expired)$/;
      assert.deepEqual(fresh.filter((l) => Number(l.level) >= 40 && !row.serverFault?.test(String(l.msg)) && !expiryWatch.test(String(l.msg))).map((l) => l.msg), [],
        row.serverFault ? 'only the fault\'s own line, not one per refusal' : 'a client\'s doing is not a warning or an error');
    });
  }

  /** smtp-server's own refusals (not in the catalogue): each is logged the same way, with the setting behind it. */
  const OWN: Array<{ name: string; listener: string; lines: string[]; code: number; stage: string; reason: string | RegExp; closes?: boolean; raw?: string }> = [
    { name: 'too many recipients', listener: 'proto', lines: ['MAIL FROM:<a@example.net>', 'RCPT TO:<a@example.test>', 'RCPT TO:<b@example.test>'], code: 452, stage: 'RCPT', reason: 'limits.maxRecipients' },
    { name: 'SIZE over the limit', listener: 'proto', lines: ['MAIL FROM:<a@example.net> SIZE=999999'], code: 552, stage: 'MAIL', reason: 'limits.maxMessageSize' },
    { name: 'AUTH where none is offered', listener: 'proto', lines: ['AUTH PLAIN AGFAAGI='], code: 500, stage: 'AUTH', reason: REPLIES.commandNotRecognized.reason },
    { name: 'a command line over the length limit', listener: 'proto', lines: [`NOOP ${'x'.repeat(20_000)}`], code: 421, stage: 'SMTP', reason: /^a command line over smtp-server's length limit/ },
    { name: 'an idle client', listener: 'idle', lines: [], code: 421, stage: 'CONNECT', reason: 'limits.socketTimeoutMs', closes: true },
    // smtp-server's fixed limits and checks, which no Postern setting moves: the reason says what tripped them.
    { name: 'ten commands before AUTH where it is required', listener: 'sub', lines: Array.from({ length: 9 }, () => 'NOOP'), code: 421, stage: 'NOOP', reason: /^auth\.required: 10 commands before AUTH/ },
    { name: 'a MAIL parameter given twice', listener: 'proto', lines: ['MAIL FROM:<a@example.net> BODY=7BIT BODY=8BITMIME'], code: 501, stage: 'MAIL', reason: /^a MAIL or RCPT parameter given twice/ },
    { name: 'a BODY value not allowed', listener: 'proto', lines: ['MAIL FROM:<a@example.net> BODY=9BIT'], code: 501, stage: 'MAIL', reason: /^a MAIL or RCPT parameter given twice, without its value or with one/ },
    { name: 'a NOTIFY value not allowed', listener: 'proto', lines: ['MAIL FROM:<a@example.net>', 'RCPT TO:<user@example.test> NOTIFY=SOMETIMES'], code: 501, stage: 'RCPT', reason: /^a MAIL or RCPT parameter/ },
    { name: 'an HTTP request', listener: 'proto', lines: ['POST / HTTP/1.1'], code: 421, stage: 'UNKNOWN', reason: /^an HTTP request/ },
  ];

  for (const row of OWN) {
    test(`smtp-server's own refusal, ${row.name}: one line with its stage and reason`, { timeout: 90_000 }, async () => {
      const logs = servers.main!.logs;
      const mark = logs.length;
      const c = await SmtpTestClient.connect(port('main', row.listener));
      const seen: Reply[] = [];
      if (row.raw !== undefined) c.socket.write(row.raw);
      else {
        seen.push(await c.read());
        if (row.lines.length) seen.push(await c.command('EHLO client.example'));
      }
      for (const l of row.lines) seen.push(await c.command(l));
      if (row.closes) {
        seen.push(await c.read(60_000));
        assert.ok(await c.waitClosed(60_000));
      }
      c.destroy();
      const wire = seen.at(-1)!;
      assert.equal(wire.code, row.code, wire.text);
      await until('its line', () => logs.slice(mark).some((l) => isDecision(l) && l.code === row.code), { timeoutMs: 30_000 });
      const lines = logs.slice(mark).filter(isDecision);
      assert.equal(lines.length, seen.filter((r) => r.code >= 400).length, JSON.stringify(lines.map((l) => l.msg)));
      const line = lines.at(-1)!;
      assert.equal(line.level, 30);
      assert.equal(line.stage, row.stage);
      assert.equal(line.client, '127.0.0.1');
      if (typeof row.reason === 'string') assert.equal(line.reason, row.reason);
      else assert.match(String(line.reason), row.reason);
      assert.equal([row.code, line.enhanced, line.reply].filter(Boolean).join(' '), wire.text.split('\n').at(-1), 'the line has the reply the client got');
      assert.match(String(line.msg), new RegExp(`: ${line.decision}: ${escape(row.stage)} from [^\\s\\[]+\\[127\\.0\\.0\\.1\\]: ${row.code} `));
      assert.deepEqual(logs.slice(mark).filter((l) => Number(l.level) >= 40 || /\n\s+at /.test(JSON.stringify(l).replace(/\\n/g, '\n'))).map((l) => l.msg), [],
        'a client\'s fault: no warning, no error, no stack trace');
    });
  }

  test('a Postfix policy service\'s refusals are decision lines too: client, stage, reason, script, action', { timeout: 90_000 }, async () => {
    const main = servers.main!;
    const logs = main.logs;
    const mark = logs.length;
    const client = await PolicyClient.connect({ port: Number(main.policyAddresses.get('postfix')!.split(':').pop()) });
    const answers = [
      await client.ask(rcptRequest({ recipient: 'script-reject@example.test' })),
      await client.ask(rcptRequest({ recipient: 'bob@elsewhere.example' })),
      await client.ask(rcptRequest({ protocol_state: 'MAIL', sender: 'throw@sender.example', recipient: '' })),
      await client.ask(rcptRequest({ recipient: 'user@example.test' })),
    ];
    client.close();
    assert.deepEqual(answers, [
      'action=550 5.7.1 Recipient refused by policy',
      'action=554 5.7.1 <bob@elsewhere.example>: Relay access denied',
      'action=DEFER_IF_PERMIT Service temporarily unavailable',
      'action=DUNNO',
    ]);
    await until('the three refusals\' lines', () => logs.slice(mark).filter(isDecision).length >= 3, { timeoutMs: 30_000 });
    const lines = logs.slice(mark).filter(isDecision);
    assert.deepEqual(lines.map((l) => [l.msg, l.level, l.decision, l.stage, l.client, l.clientName, l.reason, l.script, l.action]), [
      ['policy answer', 30, 'reject', 'RCPT', '192.0.2.10', 'laptop.example.org', 'script rcptto: reject', join(main.dir, 'scripts', 'rcptto.ts'), answers[0]!.slice(7)],
      ['policy answer', 30, 'reject', 'RCPT', '192.0.2.10', 'laptop.example.org', REPLIES.relayDenied.reason, undefined, answers[1]!.slice(7)],
      ['policy answer', 30, 'defer', 'MAIL', '192.0.2.10', 'laptop.example.org', 'script mailfrom failed (fail closed)', join(main.dir, 'scripts', 'mailfrom.ts'), answers[2]!.slice(7)],
    ]);
  });

  test('an accepted message: one line with queue id, from, size, nrcpt and client in the text, and the same as fields', { timeout: 60_000 }, async () => {
    const main = servers.main!;
    const mark = main.logs.length;
    const s = await session('main', 'mx', alice);
    await message(s, 'Subject: fine\r\n\r\nbody', 'someone@example.net', 'user@example.test');
    await s.c.quit();
    const id = /queued as (\w+)/.exec(s.seen.at(-1)!.text)?.[1];
    assert.ok(id, s.seen.at(-1)!.text);
    const lines = main.logs.slice(mark).filter((l) => l.id === id && String(l.msg).includes('accepted from='));
    assert.equal(lines.length, 1);
    const line = lines[0]!;
    assert.match(String(line.msg), new RegExp(`^${id}: accepted from=<someone@example\\.net>, size=${line.size}, nrcpt=1, client=[^\\s\\[]+\\[127\\.0\\.0\\.1\\] \\(message spooled\\)$`));
    assert.deepEqual([line.level, line.client, line.from, typeof line.size, line.to, line.certificate], [30, '127.0.0.1', 'someone@example.net', 'number', ['user@example.test'], pki.clients.alice.fingerprintSha256]);
  });

  test('a script that times out: the decision line (fail closed) and, under the same cid, the error line with the kind and file', { timeout: 60_000 }, async () => {
    const main = servers.main!;
    const mark = main.logs.length;
    const seen = await ending('main', 'mx', ['MAIL FROM:<spin@sender.example>']);
    assert.equal(seen.at(-1)!.text, '451 4.3.0 Temporary policy failure, try again later');
    await until('the decision line', () => main.logs.slice(mark).some(isDecision), { timeoutMs: 30_000 });
    const fresh = main.logs.slice(mark);
    const decisions = fresh.filter(isDecision);
    assert.equal(decisions.length, 1);
    const line = decisions[0]!;
    assert.deepEqual([line.stage, line.code, line.reason, line.script], ['MAIL', 451, 'script mailfrom failed (fail closed)', join(main.dir, 'scripts', 'mailfrom.ts')]);
    const failure = fresh.filter((l) => l.cid === line.cid && l.kind !== undefined);
    // (Its `line` too, where the script was stopped; none when the deadline came before it ran, on a loaded machine.)
    assert.deepEqual(failure.map((l) => [l.level, l.hook, l.kind, l.script]), [[50, 'mailfrom', 'timeout', join(main.dir, 'scripts', 'mailfrom.ts')]]);
  });
});
