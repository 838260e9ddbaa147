// postern_tls_handshake_failures_total counts every inbound handshake that did not complete: one refused by
// TLS (a bad ClientHello), and one not completed within limits.tlsHandshakeTimeoutMs (a client that opens the
// handshake and stalls, on implicit TLS or after STARTTLS: the pattern of a slow handshake flood). Each once,
// and logged as what it is, a client's failure: one line at info with the client's address, no stack trace
// (on implicit TLS each was a `listener error` at error level with its stack, without the client).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { makeTestPki } from '../helpers/pki.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { closed, until } from '../helpers/wait.ts';
import { metrics } from '../../engine/metrics/metrics.ts';

let s: TestServer;
before(async () => {
  const pki = await makeTestPki();
  const limits = { tlsHandshakeTimeoutMs: 300 };
  s = await startTestServer({
    config: configYaml({
      listeners: [
        testListener('starttls', { tls: testServerTls(pki), limits }),
        testListener('implicit', { tls: { ...testServerTls(pki), mode: 'implicit' }, limits }),
      ],
    }),
  });
});
after(() => s?.stop());

/** Drive `run`; the listener's failures counted meanwhile, and the log lines it left at info or above. */
async function counted(listener: string, run: () => Promise<void>): Promise<{ failures: number; lines: Array<Record<string, unknown>> }> {
  const before = await failures(listener);
  const mark = s.logs.length;
  await run();
  // The close reaches the client as the server handles the failure: its line may follow in a later turn.
  await until('the failure\'s line', () => s.logs.slice(mark).some((l) => Number(l.level) >= 30));
  return { failures: (await failures(listener)) - before, lines: s.logs.slice(mark).filter((l) => Number(l.level) >= 30) };
}

function assertClientFailure(lines: Array<Record<string, unknown>>): void {
  assert.equal(lines.length, 1, JSON.stringify(lines));
  const line = lines[0]!;
  assert.equal(line.level, 30, JSON.stringify(line));
  assert.equal(line.client, '127.0.0.1');
  assert.doesNotMatch(JSON.stringify(line), /\\n\s+at /, 'no stack trace');
}

const failures = async (listener: string): Promise<number> =>
  (await metrics.tlsHandshakeFailures.get()).values.find((v) => v.labels.listener === listener)?.value ?? 0;

/** A raw connection that writes `first` (if any) and then nothing: resolves once the server closes it. */
async function stalled(port: number, first?: string): Promise<void> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => undefined);
  if (first !== undefined) socket.write(first);
  await closed(socket);
}

for (const [name, first] of [
  ['not a ClientHello', 'EHLO client.example\r\n'],
  // A TLS record header announcing a ClientHello of 512 bytes, then silence.
  ['a ClientHello begun and never finished', '\x16\x03\x01\x02\x00'],
  ['nothing sent', undefined],
] as const) {
  test(`implicit TLS, ${name}: one failed handshake, one line at info`, { timeout: 60_000 }, async () => {
    const { failures: n, lines } = await counted('implicit', () => stalled(s.port('implicit'), first));
    assert.equal(n, 1);
    assertClientFailure(lines);
  });
}

test('STARTTLS, a handshake begun and never finished: one failed handshake, one line at info', { timeout: 60_000 }, async () => {
  const { failures: n, lines } = await counted('starttls', async () => {
    const c = await SmtpTestClient.connect(s.port('starttls'));
    await c.read();
    await c.command('EHLO client.example');
    assert.equal((await c.command('STARTTLS')).code, 220);
    c.socket.write('\x16\x03\x01\x02\x00');
    await closed(c.socket);
  });
  assert.equal(n, 1);
  assertClientFailure(lines);
});

test('implicit TLS, a client that closes at once (a port check): no failed handshake, no warning or error', { timeout: 60_000 }, async () => {
  const before = await failures('implicit');
  const mark = s.logs.length;
  const socket = net.connect(s.port('implicit'), '127.0.0.1', () => socket.end());
  socket.on('error', () => undefined);
  await closed(socket);
  // The server handles the close after the client sees it: wait for the line it leaves, if any, by a connection after it.
  await stalled(s.port('implicit'));
  assert.equal(await failures('implicit') - before, 1, 'only the stalled one');
  const loud = s.logs.slice(mark).filter((l) => Number(l.level) >= 40);
  assert.deepEqual(loud.map((l) => l.msg), []);
});
