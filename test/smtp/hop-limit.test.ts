// A message carrying 50 Received header fields (a mail loop, or a client that wrote them) was accepted with 250,
// and the queue, counting Postern's own Received field as the 51st, bounced it as a loop: to the envelope sender,
// which a spammer forges (backscatter). Now refused at the end of DATA with `554 5.4.6 Error: too many hops`, as
// Postfix's cleanup does; one hop fewer is accepted and delivered. Real client (Python's smtplib), real next hop.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { promisify } from 'node:util';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { startSink, type Sink } from '../helpers/sink.ts';
import { runCli } from '../helpers/cli.ts';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const run = promisify(execFile);
const pythonFound = spawnSync('python3', ['-c', 'import smtplib']).status === 0;
const needsPython = { skip: pythonFound || process.env.POSTERN_REQUIRE_CLIENTS ? false : 'python3 not installed' };

let server: TestServer;
let sink: Sink;

before(async () => {
  sink = await startSink();
  server = await startTestServer({
    config: `
localDomains: [example.com]
delivery: { route: { smarthost: { host: 127.0.0.1, port: ${sink.port} } }, tls: { mode: none }, scanIntervalMs: 200 }
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(async () => {
  await server.stop();
  await sink.close();
});

/** smtplib sends a message with `hops` Received fields (in mixed case, one folded) from a forged sender: the server's answer to its DATA. */
async function sendWithHops(hops: number): Promise<string> {
  const py = `
import smtplib, sys
hops = ${hops}
lines = ''.join('%s: from relay%d.example by relay%d.example;\\r\\n\\tSun, 6 Dec 2026 00:00:00 +0000\\r\\n' % ('RECEIVED' if i % 2 else 'Received', i, i + 1) for i in range(hops))
msg = lines + 'Subject: hops %d\\r\\nX-Received-Note: not a Received field\\r\\n\\r\\nbody\\r\\n' % hops
s = smtplib.SMTP('127.0.0.1', ${server.port('mx')})
s.ehlo('client.example')
try:
    s.sendmail('forged-victim@innocent.example', ['alice@example.com'], msg)
    print('250')
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
s.quit()
`;
  return (await run('python3', ['-c', py])).stdout.trim();
}

test('smtplib: 50 Received fields are refused at the end of DATA (554 5.4.6), not accepted and bounced; 49 are accepted and delivered', needsPython, async () => {
  const mark = server.logs.length;
  assert.equal(await sendWithHops(50), '554 5.4.6 Error: too many hops');
  const line = server.logs.slice(mark).find((l) => l.decision === 'reject');
  assert.ok(line, 'a decision line');
  assert.equal(line.stage, 'END-OF-MESSAGE');
  assert.match(String(line.reason), /50 Received header fields/);
  assert.equal(server.logs.slice(mark).filter((l) => String(l.msg).includes('accepted from=')).length, 0, 'nothing spooled');

  assert.equal(await sendWithHops(49), '250');
  const [delivered] = await sink.waitFor(1, 60_000);
  assert.match(delivered!.data.toString('latin1'), /^Subject: hops 49\r$/m, 'delivered, not bounced as a loop');
  assert.deepEqual(delivered!.to, ['alice@example.com']);
});

test('postern try data answers such a message as the server does', async () => {
  const eml = join(server.dir, 'loop.eml');
  await writeFile(eml, `${'Received: from a by b\r\n'.repeat(50)}Subject: loop\r\n\r\nbody\r\n`);
  const r = await runCli(['try', 'data', '-c', join(server.dir, 'postern.yaml'), '--from', 'a@x.example', '--to', 'alice@example.com', '--message', eml]);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(r.stdout, /^< 554 5\.4\.6 Error: too many hops$/m);
});
