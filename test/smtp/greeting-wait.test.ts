// The idle timeout (limits.socketTimeoutMs) counts only while the client owes us input. smtp-server arms it when the
// connection starts, so while the greeting was still ours to send (the greeting delay, reverse DNS, the connect
// script, the limits' checks) a short timeout answered `421 4.4.2 Timeout` in place of the greeting: seen on a
// loaded machine with a 500 ms timeout, and every time with a greeting delay longer than the timeout.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const server = await startTestServer({
  config: configYaml({ localDomains: ['example.com'], listeners: [
    testListener('slow', { reverseDns: false, tls: { mode: 'none' }, limits: { greetingDelayMs: 1500, socketTimeoutMs: 500 } }),
  ] }),
});
after(() => server.stop());

test('the greeting comes after a greeting delay longer than the idle timeout; the idle timeout runs from it', async () => {
  const c = await SmtpTestClient.connect(server.port('slow'));
  try {
    const greeting = await c.read(30_000);
    assert.equal(greeting.code, 220, greeting.text);
    // Then the client owes us a command: idle, it is timed out.
    assert.equal((await c.read(30_000)).text, '421 4.4.2 Timeout - closing connection');
    assert.ok(await c.waitClosed(30_000));
  } finally {
    c.destroy();
  }
});
