/**
 * A candidate tried with shadowScripts on one listener while another listener already runs the same folder live
 * (trying on inbound the scripts submission runs, before adopting them there). A shadow script is fenced at its
 * first crash, as nothing is lost by not running it; but the fence named the script by hook, file and content only,
 * which the live copy on the other listener shares: one crash of the shadow run fenced the live one too, and
 * submission answered 451 4.3.0 to every RCPT (while the log said "live replies are unchanged"). The live copy must
 * keep answering, and be fenced only by crashes of its own (three).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';

// Hangs inside a builtin V8 cannot interrupt (its worker is replaced) for hang@, accepts anyone else.
const SCRIPT = "export default function (ctx) { if (ctx.address.localPart === 'hang') return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); return accept(); }\n";

async function rcpt(c: ClusterProcess, listener: string, to: string): Promise<string> {
  const client = await SmtpTestClient.connect(c.port(listener));
  try {
    assert.equal((await client.read(30_000)).code, 220);
    await client.command('EHLO client.test', 30_000);
    await client.command('MAIL FROM:<a@example.test>', 30_000);
    return (await client.command(`RCPT TO:<${to}>`, 60_000)).text;
  } finally {
    client.destroy();
  }
}

const restarts = async (c: ClusterProcess): Promise<number> => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);

// One worker: the one replaced after the crash starts with the fence list as the supervisor keeps it (fenced.json, the
// shadow flag with it), where the live copy must still answer; a second worker only idled (workerChoice fill).
test('a shadow script fenced at its first crash does not fence the same script running live on another listener', { timeout: 180_000 }, async () => {
  const candidate = await mkdtemp(join(tmpdir(), 'postern-shadow-twin-'));
  await writeFile(join(candidate, 'rcptto.js'), SCRIPT);
  const c = await startCluster({
    config: `${ONE_WORKER.replace('limits: { greetingDelayMs: 0 }', `limits: { greetingDelayMs: 0 }\n    shadowScripts: ${candidate}`)}`
      + `  - name: sub\n    listen: 127.0.0.1:{PORT:sub}\n    reverseDns: false\n    limits: { greetingDelayMs: 0 }\n    scripts: ${candidate}\n`,
    scripts: { 'rcptto.js': 'export default () => accept();' },
    scriptLimits: 'product', // the shadow call hangs in a builtin: its time limit is what gives up on it
  });
  try {
    assert.equal(await rcpt(c, 'sub', 'ok@example.test'), '250 2.1.5 Accepted', 'the live copy answers before');
    assert.equal(await rcpt(c, 'in', 'hang@example.test'), '250 2.1.5 Accepted', 'the live reply does not wait for the shadow');
    await c.waitFor('the worker replaced', async () => (await restarts(c)) === 1);
    await c.waitFor('the shadow script fenced', async () => (await c.cluster()).fences.length > 0);
    await c.waitFor('the worker ready', async () => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length === 1);
    // The replacement's answer: the live copy on sub is not fenced there.
    for (let i = 0; i < 2; i++) assert.equal(await rcpt(c, 'sub', 'ok@example.test'), '250 2.1.5 Accepted', `sub's live script still answers (connection ${i + 1})`);
  } finally {
    await c.stop();
    await rm(candidate, { recursive: true, force: true });
  }
});
