// limits.idleWhenFullMs is judged by the configuration in force when a newcomer finds the listener full. A session
// keeps the generation it last used until its next command outside a transaction, and an idle one sends none: a
// reload setting idleWhenFullMs to 0 ("never"), say because it closed clients it should not, went on closing every
// connection opened before it, for as long as they stayed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import type { ReloadOutcome } from '../../engine/reload/reloader.ts';

let server: TestServer;

before(async () => {
  server = await startTestServer({
    config: `
localDomains: [example.com]
listeners:
  - name: one
    listen: 127.0.0.1:0
    tls: { mode: none }
    reverseDns: false
    limits: { greetingDelayMs: 0, maxConnections: 1, maxConnectionsPerIp: 1, minDataRate: 0, idleWhenFullMs: 300 }
`,
  });
});
after(() => server.stop());

test('a reload setting idleWhenFullMs to 0 stops the closing of connections opened before it', { timeout: 60_000 }, async () => {
  const holder = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.2' });
  assert.equal((await holder.read()).code, 220, holder.transcript.join('\n'));
  assert.equal((await holder.command('EHLO holder.example')).code, 250);

  const reloaded = new Promise<ReloadOutcome>((resolve) => { const stop = server.reloader.onReload((o) => { if (o.changed) { stop(); resolve(o); } }); });
  const file = join(server.dir, 'postern.yaml');
  await writeFile(file, (await readFile(file, 'utf8')).replace('idleWhenFullMs: 300', 'idleWhenFullMs: 0'));
  const outcome = await reloaded;
  assert.equal(outcome.ok, true, JSON.stringify(outcome));
  await sleep(450); // past the old idleWhenFullMs since the EHLO was answered

  const newcomer = await SmtpTestClient.connect(server.port('one'), { localAddress: '127.0.0.3' });
  assert.match((await newcomer.read()).text, /^421 4\.7\.0 \S+ Too many connected clients, try again in a moment$/, newcomer.transcript.join('\n'));
  assert.equal(holder.closed, false, holder.transcript.join('\n'));
  assert.equal((await holder.command('MAIL FROM:<a@sender.example>')).code, 250, holder.transcript.join('\n'));
  for (const c of [holder, newcomer]) c.destroy();
});
