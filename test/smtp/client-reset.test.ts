// A client that resets the connection: outside a transaction a normal end (debug), inside one an error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

const CONFIG = `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    tls: { mode: none }
    limits: { greetingDelayMs: 0 }
`;

const resetLines = (s: TestServer, level: number): Array<Record<string, unknown>> =>
  s.logs.filter((l) => l.level === level && /ECONNRESET/.test(JSON.stringify(l)));

async function resetAfter(s: TestServer, commands: string[]): Promise<void> {
  const c = await SmtpTestClient.connect(s.port('mx'));
  await c.hello();
  for (const command of commands) assert.equal((await c.command(command)).code, 250);
  c.socket.resetAndDestroy();
  await sleep(200);
}

test('a reset outside a transaction is logged at debug, not as an error; inside one it stays an error', async () => {
  const s = await startTestServer({ config: CONFIG });
  try {
    await resetAfter(s, []);
    assert.equal(resetLines(s, 50).length, 0, 'no error-level line for a client hanging up between transactions');
    assert.equal(resetLines(s, 20).length, 1, 'one debug line');
    await resetAfter(s, ['MAIL FROM:<a@example.com>']);
    assert.ok(resetLines(s, 50).length >= 1, 'a reset during a transaction is still reported');
  } finally {
    await s.stop();
  }
});
