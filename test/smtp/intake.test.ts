// A message's intake in one server process: what it holds in memory, spooling at the descriptor limit, the decision
// and log lines, edits on a failing disk, reverse DNS confirmed, sender-specified routing, the message stream, local
// recipients with a delimiter, replies left unread, long sessions and huge client certificates. One file for what
// were several (one test process and one load of the engine instead of one each), each its own describe with its own
// servers, as before.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, stat, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fs, { readdirSync, readlinkSync } from 'node:fs';
import net from 'node:net';
import { Worker } from 'node:worker_threads';
import tls from 'node:tls';
import { Writable } from 'node:stream';
import { syncBuiltinESMExports } from 'node:module';
import dns from 'node:dns';
import { execFile, spawnSync, spawn } from 'node:child_process';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';
import { startTestServer, type TestServer, PLAIN_MX_CONFIG } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until, closed } from '../helpers/wait.ts';
import type { SpoolWriter } from '../../engine/spool/spool.ts';
import { exhaustDescriptors } from '../helpers/process-resources.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { registry, metrics } from '../../engine/metrics/metrics.ts';
import { REPLIES, reply } from '../../engine/smtp/replies.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createLogger } from '../../engine/logging/logger.ts';
import { startDnsServer, ptrName, type TestDnsServer } from '../helpers/dns-server.ts';
import { SMTPStream } from 'smtp-server/lib/smtp-stream.js';
import { MessageStream, useMessageStream } from '../../engine/smtp/message-stream.ts';
import type { PosternConnection } from '../../engine/smtp/postern-connection.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { INVALID, plain, submissionConfig } from '../auth/helpers/submission.ts';
import { createCertificateAuthority, issueClientCertificate, type Authority } from '../../engine/certificates/index.ts';

describe('receiving-memory', () => {
  // Many clients each in the middle of a large message at once: every message up to 1 MiB used to be held in
  // memory until its end (for one journal write), so a worker's memory grew by ~1 MB per sending client, up
  // to maxConnections of them (measured: 400 clients × 960 KB, peak RSS 577 MB; an OOM ends every session of the
  // process). spool.receivingMemoryBytes bounds what the messages being received hold together: past it, each
  // message's further bytes go to its own file in incoming/. Nothing is refused, nothing is lost.
  const BUDGET = 256 * 1024;
  const CLIENTS = 8;
  const MESSAGE_LINES = 2000; // ~200 KB each, under the journal's 1 MiB: each alone would stay in memory
  let server: TestServer;
  const writers: SpoolWriter[] = [];

  before(async () => {
    server = await startTestServer({
      config: `
localDomains: [example.com]
spool: { receivingMemoryBytes: ${BUDGET} }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
      scripts: {
        // The data hook reads the header fields back from the spool (the header reader keeps no copy).
        'data.ts': `export default (ctx) => { const s = ctx.data.headers.find(([k]) => k === 'Subject');
        if (!s || !s[1].startsWith('client ') || ctx.data.headers.length !== 3) return reject('fields: ' + JSON.stringify(ctx.data.headers.slice(0, 5)), { code: 550 }); };`,
      },
    });
    const spool = server.runtime.spool;
    const create = spool.create.bind(spool);
    spool.create = (id: string, maxHeld?: number) => {
      const w = create(id, maxHeld);
      writers.push(w);
      return w;
    };
  });
  after(() => server.stop());

  async function incomingBytes(): Promise<number> {
    const dir = server.runtime.spool.incomingDir;
    let total = 0;
    for (const name of await readdir(dir)) total += await stat(join(dir, name)).then((s) => s.size, () => 0);
    return total;
  }

  function body(i: number): string {
    const lines = Array.from({ length: MESSAGE_LINES }, (_, n) => `client ${i} line ${n} ${'z'.repeat(80)}`);
    return `Subject: client ${i}\r\nFrom: <a@example.com>\r\nX-Folded: a\r\n b\r\n\r\n${lines.join('\r\n')}\r\n`;
  }

  test(`${CLIENTS} clients in the middle of ~200 KB messages hold at most spool.receivingMemoryBytes; all are accepted intact`, async () => {
    const clients: SmtpTestClient[] = [];
    for (let i = 0; i < CLIENTS; i++) {
      const c = await SmtpTestClient.connect(server.port('mx'));
      await c.hello();
      assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
      assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
      assert.equal((await c.command('DATA')).code, 354);
      clients.push(c);
    }
    // Every message but its final dot: all are in flight at once.
    for (const [i, c] of clients.entries()) c.socket.write(body(i));
    const expected = clients.map((_, i) => Buffer.byteLength(body(i)));
    const received = (): number => writers.reduce((n, w) => n + w.bytes, 0);
    const client = expected.reduce((a, b) => a + b, 0);
    await until('every message byte received', () => received() >= client, { timeoutMs: 60_000 });
    const held = server.runtime.spool.heldBytes;
    assert.ok(held <= BUDGET + 64 * 1024, `the messages being received hold ${held} bytes in memory (budget ${BUDGET})`);
    assert.ok(client > 4 * BUDGET, 'the test sends far more than the budget');
    // What is not in memory is in the messages' files.
    assert.ok(await incomingBytes() >= client - BUDGET - 64 * 1024, `incoming/ holds ${await incomingBytes()} bytes`);

    const ids: string[] = [];
    for (const c of clients) {
      c.socket.write('.\r\n');
      const reply = await c.read(60_000);
      assert.equal(reply.code, 250, reply.text);
      ids.push(/queued as (\S+)/.exec(reply.text)![1]!);
    }
    for (const [i, id] of ids.entries()) {
      const message = (await server.runtime.spool.readMessage(id)).toString();
      assert.ok(message.endsWith(body(i)), `message ${i} spooled intact`);
    }
    assert.equal(server.runtime.spool.heldBytes, 0, 'nothing counted as held once every message was committed');
    assert.equal(await incomingBytes(), 0);
    for (const c of clients) await c.quit();
  });

  test('a message refused at its end (and one whose client left mid-DATA) gives its held bytes back', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const refused = await c.sendMail('a@example.com', ['b@example.com'], 'Subject: nope\r\n\r\nbody\r\n');
    assert.equal(refused.code, 550, refused.text);
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    const before = writers.length;
    assert.equal((await c.command('DATA')).code, 354);
    c.socket.write('Subject: client 0\r\n\r\n' + 'x'.repeat(10_000) + '\r\n');
    await until('the message is being received', () => (writers[before]?.bytes ?? 0) > 10_000);
    c.destroy();
    await until('nothing held once the client is gone', () => server.runtime.spool.heldBytes === 0);
    assert.equal(await incomingBytes(), 0);
  });
});

describe('spooling-at-fd-limit', () => {
  // A server at its open-file limit spools nothing: each message's file cannot be opened, and the client gets 451 and
  // sends it again later, as it should. But each refusal also logged 'spooling failed' at error with its stack, so a
  // busy server logged one per message for as long as the shortage lasted, burying the first. Now the first failure
  // of a kind is logged at error, the repeats at debug (each message's decision line still says it was refused), and
  // the first message spooled again says so once, with how many failed.
  /**
   * Descriptors of this process into the spool's message folders (a message file, a `.committing` marker, a folder
   * opened to be synced). The server closes those of a message after its 250 has left: filling the descriptors
   * before then lets the next message take the ones closed meanwhile (seen once on a loaded machine: 250, not 451).
   */
  const spoolFilesOpen = (dataDir: string): string[] => readdirSync('/proc/self/fd').flatMap((fd) => {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      return target.startsWith(dataDir) && /\/(incoming|queue)(\/|$)/.test(target.slice(dataDir.length)) ? [target] : [];
    } catch {
      return []; // closed while listed
    }
  });

  test('messages refused at the open-file limit log the failure once per episode, and the recovery once', async () => {
    const s = await startTestServer({ config: PLAIN_MX_CONFIG, scripts: { 'rcptto.ts': 'export default () => accept();' } });
    const client = await SmtpTestClient.connect(s.port('mx'));
    try {
      await client.hello();
      // Larger than what is kept in memory (1 MiB): each message has a file of its own, opened as it is spooled.
      const large = `Subject: large\r\n\r\n${`${'x'.repeat(998)}\r\n`.repeat(1600)}`;
      assert.equal((await client.sendMail('a@example.com', ['b@example.com'], large)).code, 250, 'warm');
      const failed = (): Array<Record<string, unknown>> => s.logs.filter((l) => /spooling failed/.test(String(l.msg)) && Number(l.level) >= 50);
      for (let episode = 1; episode <= 2; episode++) {
        await until('the last message spooled has closed its files', () => spoolFilesOpen(join(s.dir, 'data')).length === 0);
        const full = exhaustDescriptors();
        const codes: number[] = [];
        try {
          for (let i = 0; i < 10; i++) {
            full.topUp();
            codes.push((await client.sendMail('a@example.com', ['b@example.com'], large)).code);
          }
        } finally {
          full.release();
        }
        assert.deepEqual(codes, Array(10).fill(451), 'each refused, to be sent again');
        assert.equal(failed().length, episode, `10 refused in episode ${episode}: logged at error once, not per message`);
        assert.match(JSON.stringify(failed().at(-1)), /EMFILE/);
        assert.equal((await client.sendMail('a@example.com', ['b@example.com'], large)).code, 250);
        const recovered = s.logs.filter((l) => /spooling works again/.test(String(l.msg)));
        assert.equal(recovered.length, episode, 'the first message spooled again says so once');
        assert.equal(recovered.at(-1)!.failures, 10);
      }
      await client.quit();
    } finally {
      client.destroy();
      await s.stop();
    }
  });
});

describe('decision-log', () => {
  // "Why was my mail refused?": every refusal path of the lifecycle leaves one info line with the client
  // address, the stage, the reply and the reason (built-in rule, limit or script), Postfix-style.
  let s: TestServer;
  before(async () => {
    s = await startTestServer({
      config: configYaml({
        hostname: 'mx.test',
        localDomains: ['example.test'],
        listeners: [
          testListener('mx', { limits: { maxMessageSize: 200, maxConnectionsPerIp: 3, maxRecipients: 2 } }),
          testListener('sub', { auth: { mechanisms: ['PLAIN'], required: true } }),
        ],
      }),
      scripts: {
        'mailfrom.ts': `export default function mailfrom(ctx: MailFromContext): Verdict | void {
  if (ctx.address.address === 'spammer@bad.example') return reject('Go away');
  if (ctx.address.address === 'later@slow.example') return defer('Try later');
  if (ctx.address.address === 'bug@example.net') throw new Error('oops');
}`,
      },
    });
  });
  after(() => s?.stop());

  function refusals(): Array<Record<string, unknown>> {
    return s.logs.filter((l) => l.decision === 'reject' || l.decision === 'defer');
  }

  async function lastRefusal(count: number): Promise<Record<string, unknown>> {
    // The line is written before the reply leaves, so it is there once the client has the reply.
    const lines = refusals();
    assert.equal(lines.length, count, JSON.stringify(lines.at(-1)));
    return lines.at(-1)!;
  }

  test('relay denied, script reject/defer/failure, auth required, size limit and per-IP limit each log one line with client, stage, reply and reason', async () => {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello({ name: 'client.example' });
    assert.equal((await c.command('MAIL FROM:<someone@example.net>')).code, 250);
    assert.equal((await c.command('RCPT TO:<victim@elsewhere.example>')).code, 554);
    let line = await lastRefusal(1);
    assert.equal(line.stage, 'RCPT');
    assert.equal(line.client, '127.0.0.1');
    assert.equal(line.code, 554);
    assert.match(String(line.reason), /relay rule/);
    assert.equal(line.to, 'victim@elsewhere.example');
    assert.equal(line.from, 'someone@example.net');
    assert.match(String(line.msg), /^\w+: reject: RCPT from [\w.-]+\[127\.0\.0\.1\]: 554 5\.7\.1 <victim@elsewhere\.example>: Relay access denied; from=<someone@example\.net> to=<victim@elsewhere\.example> proto=ESMTP helo=<client\.example>$/);
    assert.equal((await c.command('RSET')).code, 250);

    assert.equal((await c.command('MAIL FROM:<spammer@bad.example>')).code, 550);
    line = await lastRefusal(2);
    assert.equal(line.stage, 'MAIL');
    assert.equal(line.reason, 'script mailfrom: reject');
    assert.equal(line.reply, 'Go away');

    assert.equal((await c.command('MAIL FROM:<later@slow.example>')).code, 451);
    line = await lastRefusal(3);
    assert.equal(line.decision, 'defer');
    assert.equal(line.reason, 'script mailfrom: defer');

    assert.equal((await c.command('MAIL FROM:<bug@example.net>')).code, 451);
    line = await lastRefusal(4);
    assert.match(String(line.reason), /script mailfrom failed \(fail closed\)/);

    const big = await c.sendMail('someone@example.net', ['user@example.test'], `Subject: big\r\n\r\n${'x'.repeat(500)}\r\n`);
    assert.equal(big.code, 552);
    line = await lastRefusal(5);
    assert.equal(line.stage, 'END-OF-MESSAGE');
    assert.equal(line.reason, 'limits.maxMessageSize');
    assert.deepEqual([line.from, line.to], ['someone@example.net', 'user@example.test']);
    await c.quit();

    const sub = await SmtpTestClient.connect(s.port('sub'));
    await sub.hello();
    assert.equal((await sub.command('MAIL FROM:<someone@example.net>')).code, 530);
    line = await lastRefusal(6);
    assert.equal(line.reason, 'auth.required');
    assert.equal(line.listener, 'sub');
    await sub.quit();

    const held = await Promise.all([1, 2, 3].map(() => SmtpTestClient.connect(s.port('mx'))));
    for (const h of held) assert.equal((await h.read()).code, 220);
    const fourth = await SmtpTestClient.connect(s.port('mx'));
    assert.equal((await fourth.read()).code, 421);
    line = await lastRefusal(7);
    assert.equal(line.stage, 'CONNECT');
    assert.equal(line.reason, 'limits.maxConnectionsPerIp');
    for (const h of [...held, fourth]) h.destroy();
  });

  test("smtp-server's own refusals are logged like Postern's: the command as stage, the enhanced code the client saw, the setting behind them; and counted", async () => {
    // The connections the test before held must have left the per-IP count first.
    let c!: SmtpTestClient;
    await until('a connection under the per-IP limit again', async () => {
      c = await SmtpTestClient.connect(s.port('mx'));
      if ((await c.read()).code === 220) return true;
      c.destroy();
      return false;
    });
    const before = refusals().length;
    const counted = async (): Promise<number> => (await registry.getSingleMetric('postern_smtp_refusals_total')!.get()).values.reduce((n, v) => n + v.value, 0);
    const countedBefore = await counted();
    assert.equal((await c.command('EHLO client.example')).code, 250);
    assert.equal((await c.command('FOO bar')).text, '500 5.5.2 Error: command not recognized');
    assert.equal((await c.command('MAIL FROM:<someone@example.net>')).code, 250);
    for (const r of ['a', 'b']) assert.equal((await c.command(`RCPT TO:<${r}@example.test>`)).code, 250);
    assert.equal((await c.command('RCPT TO:<c@example.test>')).text, '452 4.5.3 Error: too many recipients');
    await c.quit();
    const sub = await SmtpTestClient.connect(s.port('sub'));
    await sub.hello();
    assert.equal((await sub.command('MAIL FROM:<someone@example.net>')).text, '530 5.7.0 Authentication required');
    await sub.quit();

    const lines = refusals().slice(before);
    assert.deepEqual(lines.map((l) => [l.stage, l.code, l.enhanced, l.reply, l.reason]), [
      ['UNKNOWN', 500, '5.5.2', 'Error: command not recognized', REPLIES.commandNotRecognized.reason],
      ['RCPT', 452, '4.5.3', 'Error: too many recipients', 'limits.maxRecipients'],
      ['MAIL', 530, '5.7.0', 'Authentication required', 'auth.required'],
    ]);
    // The recipient refused, as Postfix names it (not the two accepted before it).
    assert.match(String(lines[1]!.msg), /: defer: RCPT from [\w.-]+\[127\.0\.0\.1\]: 452 4\.5\.3 <c@example\.test>: Error: too many recipients; from=<someone@example\.net> to=<c@example\.test> proto=ESMTP helo=<client\.example> over_limit=1$/);
    assert.equal(await counted() - countedBefore, 3, 'postern_smtp_refusals_total counts them');
  });

  test('a MAIL or RCPT refused for its path (it does not parse, a quoted local part, a character no address carries, a bad parameter) names the path the client wrote, not the recipients accepted before it', async () => {
    let c!: SmtpTestClient;
    await until('a connection under the per-IP limit again', async () => {
      c = await SmtpTestClient.connect(s.port('mx'));
      if ((await c.read()).code === 220) return true;
      c.destroy();
      return false;
    });
    assert.equal((await c.command('EHLO client.example')).code, 250);
    const before = refusals().length;
    assert.equal((await c.command('MAIL FROM:<someone@example.net> SMTPUTF8')).code, 250);
    assert.equal((await c.command('RCPT TO:<accepted@example.test>')).code, 250);
    const long = `${'x'.repeat(3000)}@example.test`;
    const refused: Array<[string, number, string]> = [
      ['RCPT TO:<a@b@example.test>', 501, 'a@b@example.test'],
      ['RCPT TO:<"a b"@example.test>', 553, '"a\\u{20}b"@example.test'],
      // A path that never parsed writes no field of its own into the line's text: its blanks and brackets escaped.
      ['RCPT TO:<x@y;\tto=<ceo@example.test> nrcpt=1>', 501, 'x@y;\\u{9}to=\\u{3c}ceo@example.test'],
      ['RCPT TO:<c\u00adeo@example.test>', 553, 'c\\u{ad}eo@example.test'],
      ['RCPT TO:<d@example.test> ORCPT=rfc822;a+0Ab', 501, 'd@example.test'],
      ['RCPT TO:e@example.test', 501, 'e@example.test'],
      [`RCPT TO:<${long}>`, 501, `${long.slice(0, 256)}...`],
    ];
    for (const [command, code] of refused) assert.equal((await c.command(command)).code, code, command);
    assert.equal((await c.command('RSET')).code, 250);
    assert.equal((await c.command('MAIL FROM:<x@y@example.net>')).code, 501);
    await c.quit();

    const lines = refusals().slice(before);
    assert.equal(lines.length, refused.length + 1, JSON.stringify(lines.map((l) => l.msg)));
    refused.forEach(([command, code, written], i) => {
      const line = lines[i]!;
      assert.deepEqual([line.stage, line.code, line.to, line.nrcpt, line.from], ['RCPT', code, written, undefined, 'someone@example.net'], command);
      assert.ok(String(line.msg).endsWith(`; from=<someone@example.net> to=<${written}> proto=ESMTP helo=<client.example>`), `${command}: ${String(line.msg)}`);
    });
    const mail = lines.at(-1)!;
    assert.deepEqual([mail.stage, mail.code, mail.from], ['MAIL', 501, 'x@y@example.net']);
    assert.match(String(mail.msg), /: reject: MAIL from [\w.-]+\[127\.0\.0\.1\]: 501 5\.1\.7 <x@y@example\.net>: Error: Bad sender address syntax; from=<x@y@example\.net> proto=ESMTP helo=<client\.example>$/);
  });
});

describe('log-format', () => {
  // Log lines as an administrator reads them: ISO-8601 times; smtp-server's own per-connection lines below
  // info (Postern logs the facts itself); a client's failed TLS handshake at info with its reason and no
  // stack trace; `log.format: pretty` for a terminal.
  let pki: TestPki;
  let s: TestServer;
  before(async () => {
    pki = await makeTestPki();
    s = await startTestServer({
      config: configYaml({ listeners: [
        testListener('mx', { tls: testServerTls(pki) }),
        testListener('smtps', { tls: testServerTls(pki, { mode: 'implicit', clientCertificates: 'request' }) }),
      ] }),
    });
  });
  after(() => s?.stop());

  test('times are ISO-8601; smtp-server lines are below info', async () => {
    const c = await SmtpTestClient.connect(s.port('mx'));
    await c.hello();
    await c.quit();
    assert.ok(s.logs.length > 0);
    for (const line of s.logs) assert.match(String(line.time), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    const smtpAtInfo = s.logs.filter((l) => l.component === 'smtp' && Number(l.level) >= 30);
    assert.deepEqual(smtpAtInfo.map((l) => l.msg), []);
    assert.ok(s.logs.some((l) => l.component === 'smtp' && l.level === 20), 'they are still there at debug');
  });

  test('a client that fails the TLS handshake is logged at info with the reason, without a stack trace, and counted', async () => {
    const failures = async (): Promise<number> => (await metrics.tlsHandshakeFailures.get()).values.find((v) => v.labels.listener === 'mx')?.value ?? 0;
    const before = await failures();
    const socket = net.connect(s.port('mx'), '127.0.0.1');
    let received = '';
    socket.setEncoding('utf8').on('data', (d: string) => {
      received += d;
      if (received.startsWith('220 ') && !received.includes('EHLO sent')) { received += 'EHLO sent'; socket.write('EHLO client.example\r\n'); }
      if (received.includes('250 ') && !received.includes('STARTTLS sent')) { received += 'STARTTLS sent'; socket.write('STARTTLS\r\n'); }
      if (received.includes('220 2.0.0')) socket.write('this is not a TLS ClientHello\r\n\r\n');
    });
    await new Promise((resolve) => socket.once('close', resolve));
    const lines = s.logs.filter((l) => (l.clientError || l.err) && Number(l.level) >= 30);
    assert.equal(lines.length, 1, 'the failure is logged once at info or above');
    for (const l of lines) {
      assert.equal(l.level, 30, JSON.stringify(l));
      assert.equal(l.err, undefined, 'no error object (pino would print its stack)');
      assert.match(String((l.clientError as { message: string }).message), /wrong version|SSL|TLS|packet/i);
    }
    assert.equal(await failures(), before + 1);
  });

  // smtp-server reports an implicit TLS listener's failed handshake with the client's address in err.meta only
  // (STARTTLS's in err.remoteAddress): each one was logged as a server fault, `listener error` at error level
  // with a stack trace, and not counted. A client offering TLS 1.1, or a client-certificate chain over
  // OpenSSL's 100 KB, could write error lines at will.
  test('implicit TLS: a client that fails the handshake is logged at info with its address, without a stack trace, and counted', async () => {
    const failures = async (): Promise<number> => (await metrics.tlsHandshakeFailures.get()).values.find((v) => v.labels.listener === 'smtps')?.value ?? 0;
    const before = await failures();
    const logged = s.logs.length;
    const client = tls.connect({ port: s.port('smtps'), host: '127.0.0.1', maxVersion: 'TLSv1.1', minVersion: 'TLSv1', ciphers: 'DEFAULT:@SECLEVEL=0', rejectUnauthorized: false });
    client.on('error', () => undefined); // the server's protocol_version alert
    await closed(client);
    await until('the failure is logged', () => s.logs.slice(logged).some((l) => (l.clientError || l.err) && Number(l.level) >= 30));
    const lines = s.logs.slice(logged).filter((l) => (l.clientError || l.err) && Number(l.level) >= 30);
    assert.equal(lines.length, 1, 'the failure is logged once at info or above');
    const [line] = lines;
    assert.equal(line!.level, 30, JSON.stringify(line));
    assert.equal(line!.err, undefined, 'no error object (pino would print its stack)');
    assert.equal(line!.client, '127.0.0.1');
    assert.match(String((line!.clientError as { message: string }).message), /unsupported protocol/i);
    assert.equal(await failures(), before + 1);
  });

  const asleep = new Int32Array(new SharedArrayBuffer(4));

  /**
   * A client on its own thread that connects and resets (RST) at once, `first` written before the reset, while this
   * thread's event loop (the server's) is held: the server accepts a connection already reset, whose address the
   * kernel no longer gives (getpeername: ENOTCONN), as a loaded server accepts a scanner that came and went.
   */
  async function resetWhileHeld(port: number, first: string): Promise<void> {
    const done = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(`
    const net = require('node:net');
    const { workerData: { port, first, done } } = require('node:worker_threads');
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.on('connect', () => { if (first) socket.write(first); setTimeout(() => socket.resetAndDestroy(), 50); });
    socket.on('close', () => { Atomics.store(done, 0, 1); Atomics.notify(done, 0); });
  `, { eval: true, workerData: { port, first, done } });
    // Held (blocked, not spinning) until the client has reset: no socket of the server is read meanwhile. The thread
    // starts, connects (the kernel completes the handshake) and resets without this one.
    assert.notEqual(Atomics.wait(done, 0, 0, 60_000), 'timed-out', 'the client thread connected and reset');
    Atomics.wait(asleep, 0, 0, 100); // the RST in before the server reads
    await worker.terminate();
  }

  test('implicit TLS: a client that resets before its handshake, its address gone with it, is logged at info as the client\'s, not as a listener error', async () => {
    const logged = s.logs.length;
    for (const first of ['', 'EHLO plaintext.example\r\n']) await resetWhileHeld(s.port('smtps'), first);
    const clientLines = (): Array<Record<string, unknown>> => s.logs.slice(logged).filter((l) => l.msg === 'client connection error');
    await until('both resets are logged', () => clientLines().length === 2);
    const errors = s.logs.slice(logged).filter((l) => Number(l.level) >= 50);
    assert.deepEqual(errors.map((l) => l.msg), [], 'no error-level line (no "listener error" with a stack trace)');
    for (const line of clientLines()) {
      assert.equal(line.level, 30, JSON.stringify(line));
      assert.equal(line.err, undefined, 'no error object (pino would print its stack)');
      assert.deepEqual([line.decision, line.stage, line.listener, line.client], ['reject', 'CONNECT', 'smtps', null]);
    }
  });

  test('log.format pretty writes readable lines, not JSON', () => {
    let out = '';
    const sink = new Writable({ write(chunk: Buffer, _e, cb) { out += chunk.toString(); cb(); } });
    const log = createLogger('info', sink, 'pretty');
    log.info({ cid: 'abc' }, 'message spooled');
    assert.match(out, /INFO.*message spooled/);
    assert.match(out, /cid: "abc"/);
    assert.throws(() => JSON.parse(out));
  });
});

describe('edit-disk-faults', () => {
  // Disk faults while a data hook's header edits are applied: a message over 1 MiB has its own spool file
  // and is copied once more, edited, into incoming/; a journal-sized one is edited in memory (failed journal
  // syncs are covered by test/spool/journal-faults.test.ts). A write that
  // fails (a full disk) or a sync that fails (EIO) during that must give the client a 4xx, spool nothing
  // (no half-edited message, no file left in incoming/ or queue/), and the same message sent again once the
  // disk is well is spooled whole and edited. node:fs is patched in this process for the spool's files only
  // (as test/spool/helpers/faulty-disk.ts does for journal segments); the server and its client are real.
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
});

describe('reverse-dns-confirmed', () => {
  // The client's host name (listeners' reverseDns) is forward-confirmed, as Postfix's verified client name:
  // a PTR name counts only when its A records give the client's address back. Whoever controls an address's
  // reverse zone can make it name anyone: unconfirmed, "bank.example" went into the Received header (which
  // downstream filters read as the relay's verified name, e.g. SpamAssassin's whitelist_from_rcvd), the log
  // lines and the EHLO reply. Real DNS (a test server on loopback, as the process's resolver), real clients
  // from three loopback addresses.
  let server: TestServer;
  let zone: TestDnsServer;

  before(async () => {
    zone = await startDnsServer({
      [ptrName('127.0.6.1')]: [{ type: 'PTR', value: 'mail.good.example' }],
      'mail.good.example': [{ type: 'A', value: '127.0.6.1' }],
      // Its owner names it as the bank; the bank's name does not lead back to it.
      [ptrName('127.0.6.2')]: [{ type: 'PTR', value: 'mail.bank.example' }],
      'mail.bank.example': [{ type: 'A', value: '192.0.2.25' }],
      // A name with no address at all.
      [ptrName('127.0.6.3')]: [{ type: 'PTR', value: 'nowhere.example' }],
      // Control characters, a space and non-ASCII in a PTR name whose forward record does lead back: node:dns
      // hands the name out escaped (\\013) and will not ask for it, so it is never the client's name.
      [ptrName('127.0.6.4')]: [{ type: 'PTR', value: 'mail\r\nX-Injected: yes\u00e9.evil.example' }],
      'mail\r\nx-injected: yes\u00e9.evil.example': [{ type: 'A', value: '127.0.6.4' }],
    });
    dns.setServers([zone.address]);
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: true
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(async () => {
    await server?.stop();
    await zone?.stop();
  });

  /** One message from `localAddress`: the EHLO reply's first line and the Received header's first line. */
  async function from(localAddress: string): Promise<{ ehlo: string; received: string }> {
    const c = await SmtpTestClient.connect(server.port('mx'), { localAddress });
    const ehlo = (await c.hello()).lines[0]!;
    const r = await c.sendMail('someone@elsewhere.example', ['rcpt@example.com']);
    await c.quit();
    const id = /queued as (\S+)/.exec(r.text)![1]!;
    const message = (await server.runtime.spool.readMessage(id)).toString('utf8');
    return { ehlo, received: message.split('\r\n')[0]! };
  }

  test('a confirmed PTR name is the client\'s name; one whose forward records do not lead back is "unknown"', async () => {
    const good = await from('127.0.6.1');
    assert.match(good.received, /^Received: from client\.example \(mail\.good\.example \[127\.0\.6\.1\]\)$/);
    assert.match(good.ehlo, /Nice to meet you, mail\.good\.example/);

    const liar = await from('127.0.6.2');
    assert.match(liar.received, /^Received: from client\.example \(unknown \[127\.0\.6\.2\]\)$/);
    assert.doesNotMatch(liar.ehlo, /bank/);
    assert.ok(!server.logs.some((l) => JSON.stringify(l).includes('mail.bank.example') && /accepted from/.test(String(l.msg))), 'not in the accepted line either');

    const nowhere = await from('127.0.6.3');
    assert.match(nowhere.received, /^Received: from client\.example \(unknown \[127\.0\.6\.3\]\)$/);
    assert.ok((zone.queries.get('A mail.bank.example') ?? 0) >= 1, 'the forward lookup was made');

    const hostile = await from('127.0.6.4');
    assert.match(hostile.received, /^Received: from client\.example \(unknown \[127\.0\.6\.4\]\)$/);
    assert.doesNotMatch(hostile.ehlo, /evil|Injected/);
    assert.ok(!server.logs.some((l) => /Injected/.test(JSON.stringify(l))), 'nor in a log line');
  });
});

describe('sender-specified-routing', () => {
  // The built-in relay rule takes a recipient in a local domain as local only when its local part routes
  // nowhere else: `victim%elsewhere@local`, `elsewhere!victim@local` and `"victim@elsewhere"@local` would be
  // relayed on to `elsewhere` by a next hop that still honours the percent hack or bang paths (sendmail,
  // Exchange, old Postfix with allow_percent_hack), making Postern the open door of an open relay. Refused
  // with "Relay access denied" as Postfix's reject_unauth_destination does; a client that may relay anyway
  // (logged in, or a relay certificate) may still use them. With swaks, a real client.
  const run = promisify(execFile);
  let pki: TestPki;
  let server: TestServer;

  const swaksFound = spawnSync('sh', ['-c', 'command -v swaks']).status === 0;
  const needsSwaks = { skip: swaksFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'swaks not installed' };

  before(async () => {
    pki = await makeTestPki();
    server = await startTestServer({
      config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [${pki.ca.cert}] }
    relayClientCertificates: true
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  /** swaks up to RCPT TO for `to`: its exit status (0 accepted, 24 RCPT refused) and the transcript. */
  async function swaksRcpt(to: string, extra: string[] = []): Promise<{ code: number; out: string }> {
    const args = ['--server', '127.0.0.1', '--port', String(server.port('mx')), '--ehlo', 'client.example',
      '--from', 'sender@elsewhere.example', '--to', to, '--quit-after', 'RCPT', ...extra];
    return run('swaks', args).then((r) => ({ code: 0, out: r.stdout }), (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, out: e.stdout + e.stderr }));
  }

  for (const routed of ['victim%elsewhere.example@example.com', 'elsewhere.example!victim@example.com', 'victim%elsewhere.example@EXAMPLE.com']) {
    test(`swaks: RCPT TO:<${routed}> (sender-specified routing in a local domain) is not local: 554 Relay access denied`, needsSwaks, async () => {
      const r = await swaksRcpt(routed);
      assert.equal(r.code, 24, `swaks exit 24 (RCPT refused):\n${r.out}`);
      assert.match(r.out, /<~?\*+ +554 5\.7\.1 <[^>]+>: Relay access denied/);
    });
  }

  test('swaks: a plain local recipient is still accepted; a relay certificate may use a routed one', needsSwaks, async () => {
    const plain = await swaksRcpt('victim@example.com');
    assert.equal(plain.code, 0, plain.out);
    const withCert = await swaksRcpt('victim%elsewhere.example@example.com', ['--tls', '--tls-cert', pki.clients.alice.cert, '--tls-key', pki.clients.alice.key]);
    assert.equal(withCert.code, 0, withCert.out);
  });

  test('a quoted local part naming another domain is refused too (a raw client: swaks quotes nothing)', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<sender@elsewhere.example>')).code, 250);
    const quoted = await c.command('RCPT TO:<"victim%elsewhere.example"@example.com>');
    assert.match(quoted.text, /^554 5\.7\.1 .*Relay access denied/, 'not local');
    assert.equal((await c.command('RCPT TO:<victim@example.com>')).code, 250);
    await c.quit();
  });
});

describe('message-stream', () => {
  // DATA on a MessageStream (engine/smtp/message-stream.ts) instead of smtp-server's PassThrough: the parser
  // still switches to data mode as smtp-server's own does, and a message arrives whole, unescaped, on a real
  // socket, whether the intake reads it or refuses it before reading.
  let server: TestServer;
  let failCreate = 0;

  before(async () => {
    server = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [testListener('mx', { tls: { mode: 'none' } })] } as never),
    });
    // The intake can be made to fail before it reads the message: smtp-server must then drain it itself.
    const spool = server.runtime.spool;
    const create = spool.create.bind(spool);
    spool.create = (id: string) => {
      if (failCreate > 0) {
        failCreate--;
        throw reply('localError', { id: 'test' });
      }
      return create(id);
    };
  });
  after(() => server.stop());

  /** The parser's own plain fields (its mode, counters and limits), not the stream or Node's stream state. */
  function ownFields(o: object): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(o)) if (typeof v !== 'object' && typeof v !== 'function') out[k] = v;
    return out;
  }

  test('the parser switches to data mode as smtp-server\'s own does, with a MessageStream', () => {
    const theirs = new SMTPStream();
    const ours = new SMTPStream();
    useMessageStream(ours);
    const theirStream = theirs.startDataMode(1000) as unknown as { byteLength: number; sizeExceeded: boolean };
    const ourStream = ours.startDataMode(1000);
    assert.ok(ourStream instanceof MessageStream, 'this smtp-server version gets the MessageStream');
    assert.deepEqual(ownFields(ours), ownFields(theirs));
    assert.equal((ours as unknown as { _dataStream: unknown })._dataStream, ourStream);
    assert.equal(ourStream.byteLength, theirStream.byteLength);
    assert.equal(ourStream.sizeExceeded, theirStream.sizeExceeded);
  });

  test('a stream nobody reads holds what is written, then on resume() gives it out, drains, ends and closes in order', async () => {
    const s = new MessageStream();
    const events: string[] = [];
    assert.equal(s.write(Buffer.from('a')), false, 'held: the writer must wait for drain');
    s.end(Buffer.from('b'));
    s.on('end', () => events.push('end'));
    s.on('drain', () => events.push('drain'));
    await new Promise<void>((resolve) => {
      s.on('close', () => { events.push('close'); resolve(); });
      s.on('data', (c: Buffer) => events.push(`data ${c.toString()}`));
    });
    assert.deepEqual(events, ['data a', 'data b', 'drain', 'end', 'close']);
    assert.equal(s.readable, false);
    assert.equal(s.readableEnded, true);
  });

  test('a destroyed stream tells its error listener, then closes; without one it only closes', async () => {
    const s = new MessageStream();
    const events: string[] = [];
    s.on('data', () => events.push('data'));
    s.on('error', (err: Error) => events.push(`error ${err.message}`));
    await new Promise<void>((resolve) => {
      s.on('close', () => { events.push('close'); resolve(); });
      s.destroy(new Error('gone'));
    });
    assert.deepEqual(events, ['error gone', 'close']);
    assert.equal(s.write(Buffer.from('late')), false);
    const quiet = new MessageStream();
    await new Promise<void>((resolve) => { quiet.on('close', resolve); quiet.destroy(new Error('nobody listens')); });
  });

  test('a dot-stuffed message pipelined with the next command is spooled unescaped, and the command is answered', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.com>')).code, 250);
    assert.equal((await c.command('RCPT TO:<b@example.com>')).code, 250);
    assert.equal((await c.command('DATA')).code, 354);
    // Every escaped dot splits the message into another write to the stream.
    c.socket.write('Subject: dots\r\n\r\n..leading\r\nplain\r\n...\r\n..\r\nend\r\n.\r\nNOOP\r\n');
    const queued = await c.read();
    assert.equal(queued.code, 250, queued.text);
    assert.equal((await c.read()).code, 250, 'the NOOP after the message');
    const id = /queued as (\S+)/.exec(queued.text)![1]!;
    const message = (await server.runtime.spool.readMessage(id)).toString();
    assert.ok(message.endsWith('Subject: dots\r\n\r\n.leading\r\nplain\r\n..\r\n.\r\nend\r\n'), message);
    await c.quit();
  });

  test('a message the intake refuses before reading it is read to its end by smtp-server; the next one is spooled', async () => {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    const before = (await server.runtime.spool.list()).length;
    failCreate = 1;
    const refused = await c.sendMail('a@example.com', ['b@example.com'], `Subject: refused\r\n\r\n${'x'.repeat(200_000)}\r\n`);
    assert.equal(refused.code, 451, refused.text);
    const next = await c.sendMail('a@example.com', ['b@example.com']);
    assert.equal(next.code, 250, next.text);
    assert.equal((await server.runtime.spool.list()).length, before + 1);
    await c.quit();
  });
});

describe('local-recipients-delimiter', () => {
  // recipientDelimiter is Postfix's recipient_delimiter, and Postfix (split_addr) never splits some local parts: with
  // `-` among the delimiters, `owner-foo` and `foo-request` (mailing-list conventions), and never `postmaster`,
  // `MAILER-DAEMON` or `double-bounce`. Postern split them all: `alice-request@` was accepted as alice's, and a Postfix
  // next hop with the same delimiter looked up `alice-request`, found no one, and bounced to the forged sender. Real
  // SMTP client, real server.
  let server: TestServer;
  before(async () => {
    server = await startTestServer({
      files: { recipients: 'alice@example.com\nowner@example.com\nmailer@example.com\nlist-request@example.com\n' },
      config: `
localDomains: [example.com]
localRecipients: ./recipients
recipientDelimiter: "+-"
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`,
    });
  });
  after(() => server.stop());

  async function rcpt(to: string): Promise<number> {
    const c = await SmtpTestClient.connect(server.port('mx'));
    await c.hello();
    await c.command('MAIL FROM:<forged-victim@innocent.example>');
    const r = await c.command(`RCPT TO:<${to}>`);
    await c.quit();
    return r.code;
  }

  test('owner-foo, foo-request and MAILER-DAEMON are not split at a `-` delimiter, as Postfix does not; other subaddresses are', async () => {
    for (const to of ['alice-request@example.com', 'ALICE-REQUEST@example.com', 'owner-alice@example.com', 'MAILER-DAEMON@example.com']) {
      assert.equal(await rcpt(to), 550, `${to} refused (unsplit, unlisted)`);
    }
    for (const to of ['alice-lists@example.com', 'alice+request@example.com', 'list-request@example.com', 'alice-request-x@example.com', 'mailer-x@example.com']) {
      assert.equal(await rcpt(to), 250, `${to} accepted`);
    }
  });
});

describe('unread-replies', () => {
  // A client that pipelines commands and never reads a reply: the server must stop reading from it once its
  // replies pile up (smtp-server waits for 'drain' before the next command), so its memory stays bounded and
  // other clients are served meanwhile. Over plaintext and after STARTTLS (where replies are corked per turn).
  let server: TestServer;

  before(async () => {
    const pki = await makeTestPki();
    // Junk limits raised far out of the way: this exercises the write backpressure itself, not the limits.
    server = await startTestServer({
      config: configYaml({ localDomains: ['example.com'], listeners: [
        testListener('mx', { reverseDns: false, tls: testServerTls(pki), limits: { maxJunkCommands: 100000000, maxErrors: 100000000 } }),
      ] }),
    });
  });
  after(() => server.stop());

  const PUSH_BYTES = 200 * 1024 * 1024;

  /**
   * A Python client that sends EHLO / MAIL / RCPT / RSET / NOOP cycles (EHLO's reply is the large one) and
   * never reads: it stops when it has pushed PUSH_BYTES or when the server has not taken a byte for 5 s
   * (the server stopped reading). Prints the bytes it got through.
   */
  const FLOODER = String.raw`
import socket, ssl, sys
port, starttls, total = int(sys.argv[1]), sys.argv[2] == '1', int(sys.argv[3])
s = socket.create_connection(('127.0.0.1', port))
f = s.makefile('rb')
def reply():
    while True:
        line = f.readline()
        if line[3:4] != b'-': return line
reply()
if starttls:
    s.sendall(b'EHLO flood.example\r\n'); reply()
    s.sendall(b'STARTTLS\r\n'); reply()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(s)
block = b'EHLO flood.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\nRSET\r\nNOOP\r\n' * 200
s.settimeout(5)
sent = 0
try:
    while sent < total:
        s.sendall(block); sent += len(block)
        if sent % (len(block) * 100) < len(block): print(sent, flush=True)
except (socket.timeout, TimeoutError):
    pass
print('done', sent, flush=True)
`;

  interface Flood { firstProgress: Promise<void>; done: Promise<number>; stop(): void }

  function flood(port: number, starttls: boolean): Flood {
    const child = spawn('/usr/bin/python3', ['-c', FLOODER, String(port), starttls ? '1' : '0', String(PUSH_BYTES)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let progressed: () => void = () => undefined;
    const firstProgress = new Promise<void>((r) => { progressed = r; });
    const done = new Promise<number>((resolve, reject) => {
      child.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        progressed();
        const m = /done (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      child.once('exit', (code) => { if (!/done/.test(out)) reject(new Error(`flooder exited ${code}: ${out}`)); });
    });
    return { firstProgress, done, stop: () => { child.kill(); } };
  }

  // A full collection before each reading, so the figure is what the server holds, not garbage awaiting collection.
  v8.setFlagsFromString('--expose-gc');
  const collect = runInNewContext('gc') as () => void;

  function serverMemory(): number {
    collect();
    const m = process.memoryUsage();
    return m.heapUsed + m.arrayBuffers;
  }

  for (const starttls of [false, true]) {
    test(`a client that never reads its replies (${starttls ? 'STARTTLS' : 'plaintext'}) is stopped, not buffered; others are served`, { timeout: 180_000 }, async () => {
      const base = serverMemory();
      const f = flood(server.port('mx'), starttls);
      try {
        await f.firstProgress;
        const other = await SmtpTestClient.connect(server.port('mx'));
        await other.hello();
        const r = await other.sendMail('x@example.org', ['y@example.com']);
        assert.equal(r.code, 250, r.text);
        await other.quit();
        const pushed = await f.done;
        // The flooder is still connected, its replies unread: what the server holds for it now is the bound.
        const growthMb = (serverMemory() - base) / 2 ** 20;
        console.log(`pushed ${(pushed / 2 ** 20).toFixed(1)} MB; server heap+buffers held ${growthMb.toFixed(1)} MB`);
        assert.ok(pushed < PUSH_BYTES, `the server read all ${PUSH_BYTES} bytes without the client reading a reply`);
        assert.ok(growthMb < 50, `server holds ${growthMb.toFixed(1)} MB`);
      } finally {
        f.stop();
      }
    });
  }
});

describe('long-session', () => {
  // One SMTP session that outlives reloads: what it does after the configuration changed under it must be
  // decided by the configuration in force, not the one it connected under (a connection may stay open for
  // hours, kept alive by its transactions).
  const OK = '235 2.7.0 Authentication successful';

  let pki: TestPki;
  let ca: string;
  let server: TestServer;

  const users = async (password: string): Promise<string> => `alice@example.com:${await hashPassword(password)}\n`;

  before(async () => {
    pki = await makeTestPki();
    ca = await readFile(pki.ca.cert, 'utf8');
    server = await startTestServer({
      config: `${submissionConfig(pki, '{ greetingDelayMs: 0, authFailuresPerIp: 1000, authFailuresBeforeDelay: 100 }')}
  - name: capped
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: none }
    limits: { greetingDelayMs: 0, maxMessagesPerConnection: 3 }
`,
      files: { users: await users('old-Secret-1') },
      scripts: { 'helo.ts': `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('old helo script') : undefined;` },
    });
  });
  after(() => server.stop());

  /** `file` (in the server's folder) written, and the generation built from it in force. */
  async function reloadedWith(file: string, text: string): Promise<void> {
    const before = server.runtime.generation;
    await writeFile(join(server.dir, file), text);
    await server.reloader.reload('SIGHUP');
    await server.reloader.whenIdle();
    assert.notEqual(server.runtime.generation, before, `${file}: a new generation`);
  }

  test('a password changed and reloaded while a session stays open: its AUTH is checked against the new users file', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    await reloadedWith('users', await users('new-Secret-2'));
    assert.equal((await c.command(plain('alice@example.com', 'old-Secret-1'))).text, INVALID, 'the old password no longer logs in');
    assert.equal((await c.command(plain('alice@example.com', 'new-Secret-2'))).text, OK);
    await c.quit();
    await reloadedWith('users', await users('old-Secret-1'));
  });

  test('a helo script replaced while a session stays open: its next EHLO runs the new one; one mid-transaction keeps the old', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 old helo script');
    await reloadedWith('scripts/helo.ts', `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('new helo script') : undefined;`);
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    await reloadedWith('scripts/helo.ts', `export default (ctx) => ctx.helo.name === 'blocked.example' ? reject('third helo script') : undefined;`);
    assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 new helo script', 'the transaction\'s generation');
    assert.equal((await c.command('RSET')).code, 250);
    assert.equal((await c.command('EHLO blocked.example')).text, '550 5.7.1 third helo script');
    await c.quit();
  });

  test('a session kept open with NOOPs across reloads holds no retired generation: its next command lets go of it', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    const conn = [...server.servers.get('sub')!.connections][0] as unknown as PosternConnection;
    const held = [conn.state.generation];
    for (let i = 0; i < 5; i++) {
      await reloadedWith('users', await users(`pass-${i}-Secret`));
      assert.equal((await c.command('NOOP')).code, 250);
      assert.equal(conn.state.generation, server.runtime.generation, 'the session is on the generation in force');
      held.push(conn.state.generation);
    }
    // Each retired generation (and its isolates) was let go as soon as the session moved on.
    assert.deepEqual(held.slice(0, -1).map((g) => g.disposed), [true, true, true, true, true]);
    await c.quit();
    await reloadedWith('users', await users('old-Secret-1'));
  });

  test('a password changed after the login: the session\'s next MAIL FROM gets 421 and the close; the new password logs in on a new one', async () => {
    const c = await SmtpTestClient.connect(server.port('sub'));
    await c.hello({ starttls: { ca } });
    assert.equal((await c.command(plain('alice@example.com', 'old-Secret-1'))).text, OK);
    assert.equal((await c.sendMail('alice@example.com', ['friend@elsewhere.example'])).code, 250, 'logged in: may relay');
    await reloadedWith('users', await users('leaked-then-reset-3'));
    assert.equal((await c.command('MAIL FROM:<alice@example.com>')).text, '421 4.7.0 Login no longer valid, log in again');
    assert.ok(await c.waitClosed());
    assert.ok(server.logs.some((l) => l.msg === 'password changed or user removed since the login: MAIL FROM refused' && l.user === 'alice@example.com'));
    const again = await SmtpTestClient.connect(server.port('sub'));
    await again.hello({ starttls: { ca } });
    assert.equal((await again.command(plain('alice@example.com', 'leaked-then-reset-3'))).text, OK);
    assert.equal((await again.sendMail('alice@example.com', ['friend@elsewhere.example'])).code, 250);
    // A reload that leaves the entry as it was (another file changed) keeps the login.
    await reloadedWith('scripts/helo.ts', 'export default () => undefined;');
    assert.equal((await again.sendMail('alice@example.com', ['friend@elsewhere.example'])).code, 250);
    await again.quit();
    await reloadedWith('users', await users('old-Secret-1'));
  });

  test('limits.maxMessagesPerConnection: after its 3rd message a session\'s MAIL FROM gets 421 and the close; refusals and RSETs do not count', async () => {
    const c = await SmtpTestClient.connect(server.port('capped'));
    await c.hello();
    for (let i = 0; i < 3; i++) {
      assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
      assert.equal((await c.command('RSET')).code, 250);
      assert.equal((await c.sendMail('a@example.org', ['b@example.com'])).code, 250);
    }
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).text, '421 4.7.0 Error: too many messages in this connection, reconnect');
    assert.ok(await c.waitClosed());
    const next = await SmtpTestClient.connect(server.port('capped'));
    await next.hello();
    assert.equal((await next.sendMail('a@example.org', ['b@example.com'])).code, 250, 'a new connection starts again');
    await next.quit();
  });
});

describe('huge-client-certificates', () => {
  // Client certificates built to cost: a chain of many intermediates, a leaf too large for OpenSSL's certificate
  // list (max_cert_list, 100 KB), a subject of tens of kilobytes. A chain within OpenSSL's verify depth (100)
  // works; a list over 100 KB ends the handshake; a huge subject reaches scripts whole, the log and the
  // sightings file cut (boundedName).
  let server: TestServer;
  let serverCa = '';
  let root: Authority;

  before(async () => {
    const pki = await makeTestPki();
    serverCa = await readFile(pki.ca.cert, 'utf8');
    root = await createCertificateAuthority({ commonName: 'Deep Root', keyType: 'ecdsa' });
    const tls = (cc: string) => `{ mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: ${cc}, caFiles: [deep-root.crt] }`;
    server = await startTestServer({
      files: { 'deep-root.crt': root.cert },
      config: `
localDomains: [example.com]
listeners:
  - { name: request, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('request')}, limits: { greetingDelayMs: 0 } }
  - { name: require, listen: "127.0.0.1:0", reverseDns: false, tls: ${tls('require')}, limits: { greetingDelayMs: 0 } }
`,
      scripts: {
        'mailfrom.ts': `export default (ctx) => { const c = ctx.connection.clientCertificate;
        return reject(c ? [String(c.verified), c.san.dns.length, c.subject.dn.length].join(' ') : 'none', { code: 550 }); };`,
      },
    });
  });
  after(() => server.stop());

  /** STARTTLS with `cert`, then what the mailfrom script saw, or 'closed' when the server ended the handshake. */
  async function session(listener: string, cert: string, key: string): Promise<string> {
    const c = await SmtpTestClient.connect(server.port(listener));
    try {
      await c.read();
      await c.command('EHLO x.example');
      await c.starttls({ ca: serverCa, cert, key });
      // TLS 1.3: the client's handshake is done before the server has read its certificate; a refusal
      // shows as the connection closing at the next command.
      const ehlo = await c.command('EHLO x.example').catch(() => null);
      if (ehlo === null) return 'closed';
      return (await c.command('MAIL FROM:<a@x.example>')).text.replace(/^550 5\.7\.1 /, '');
    } finally {
      c.socket.destroy();
    }
  }

  test('a chain of 50 intermediates is verified and works, on request and on require listeners', { timeout: 120_000 }, async () => {
    const chain = [root];
    for (let i = 1; i <= 50; i++) chain.push(await createCertificateAuthority({ commonName: `Deep ${i}`, keyType: 'ecdsa', issuer: chain[i - 1] }));
    const leaf = await issueClientCertificate(chain.at(-1)!, { commonName: 'deep-leaf', keyType: 'ecdsa' });
    const pem = leaf.cert + chain.slice(1).reverse().map((a) => a.cert).join('');
    for (const listener of ['request', 'require']) assert.equal(await session(listener, pem, leaf.key), 'true 0 12', listener);
  });

  test('a certificate over OpenSSL\'s 100 KB certificate list ends the handshake; one under it works whole', { timeout: 120_000 }, async () => {
    const sans = (n: number) => Array.from({ length: n }, (_, i) => `host${i}.example.org`);
    const big = await issueClientCertificate(root, { commonName: 'big', keyType: 'ecdsa', dnsNames: sans(3000) }); // ~65 KB DER
    const huge = await issueClientCertificate(root, { commonName: 'huge', keyType: 'ecdsa', dnsNames: sans(6000) }); // ~130 KB DER
    for (const listener of ['request', 'require']) {
      assert.equal(await session(listener, big.cert, big.key), 'true 3000 6', listener);
      assert.equal(await session(listener, huge.cert, huge.key), 'closed', listener);
    }
  });

  test('a 60 KB subject reaches scripts whole; log lines and the sightings file keep a bounded name', { timeout: 120_000 }, async () => {
    const leaf = await issueClientCertificate(root, { commonName: 'x'.repeat(60_000), keyType: 'ecdsa' });
    const logged = server.logs.length;
    for (const listener of ['request', 'require']) assert.equal(await session(listener, leaf.cert, leaf.key), 'true 0 60003', listener);
    const lines = server.logs.slice(logged).map((l) => JSON.stringify(l));
    assert.ok(lines.some((l) => l.includes('TLS established')) && lines.some((l) => l.includes('NOQUEUE')));
    const longest = Math.max(...lines.map((l) => l.length));
    assert.ok(longest < 4096, `a log line of ${longest} characters`);
    const sightings = server.certificates.sightings!;
    await sightings.flush();
    const file = await readFile(sightings.file, 'utf8');
    // "CN=" and 509 of the name's characters: 512 in all.
    assert.ok(file.includes(`"CN=${'x'.repeat(509)}..."`) && !file.includes('x'.repeat(510)), 'the sighting keeps the subject cut at 512 characters');
  });

  test('large certificates are described on each connection but not kept: 1000 of 100 KB held 600 MB of heap for good', { timeout: 120_000 }, async () => {
    const { describedCertificatesCached } = await import('../../engine/certificates/describe.ts');
    const small = await issueClientCertificate(root, { commonName: 'small', keyType: 'ecdsa' });
    const before = describedCertificatesCached();
    assert.equal(await session('request', small.cert, small.key), 'true 0 8');
    const afterSmall = describedCertificatesCached();
    assert.equal(afterSmall.entries, before.entries + 1, 'a device certificate is kept (the check can fail)');
    for (let i = 0; i < 3; i++) {
      const large = await issueClientCertificate(root, { commonName: `large-${i}`, keyType: 'ecdsa', dnsNames: Array.from({ length: 1000 }, (_, n) => `host${n}.example.org`) }); // ~21 KB DER
      assert.equal(await session('request', large.cert, large.key), `true 1000 ${`CN=large-${i}`.length}`);
    }
    assert.deepEqual(describedCertificatesCached(), afterSmall);
  });
});
