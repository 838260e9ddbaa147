/**
 * Trying a candidate with shadowScripts under `postern serve`: a candidate that hangs inside a builtin V8 cannot
 * interrupt leaves an isolate that will not stop, and its worker must be replaced, ending every live session on
 * it (421 4.4.2 in the middle of a transaction). A shadow script decides no reply, so nothing is lost by fencing
 * it at once; it was counted as a live script is, and so let take the live sessions down three times before its
 * fence. Now fenced at its first crash: the calls after it are counted as fenced, and no worker dies again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, ONE_WORKER, type ClusterProcess } from '../helpers/cluster.ts';

const HANG = "export default function (ctx) { if (ctx.address.localPart === 'hang') return reject('r=' + Array(2 ** 32 - 1).lastIndexOf(1)); }\n";

async function rcptHang(c: ClusterProcess): Promise<string> {
  const client = await SmtpTestClient.connect(c.port('in'));
  try {
    assert.equal((await client.read(30_000)).code, 220);
    await client.command('EHLO client.test', 30_000);
    await client.command('MAIL FROM:<a@example.test>', 30_000);
    return (await client.command('RCPT TO:<hang@example.test>', 60_000)).text;
  } finally {
    client.destroy();
  }
}

const restarts = async (c: ClusterProcess): Promise<number> => (await c.cluster()).processes.reduce((n, p) => n + p.restarts, 0);

test('a shadow script that crashes its worker is fenced at its first crash; the live script is not, and no worker dies again', { timeout: 180_000 }, async () => {
  const shadow = await mkdtemp(join(tmpdir(), 'postern-shadow-crash-'));
  await writeFile(join(shadow, 'rcptto.js'), HANG);
  const c = await startCluster({
    // One worker: the claim is about the worker the shadow call crashed and its replacement, not about several.
    config: ONE_WORKER.replace('limits: { greetingDelayMs: 0 }', `limits: { greetingDelayMs: 0 }\n    shadowScripts: ${shadow}`),
    scripts: { 'rcptto.js': 'export default () => accept();' },
    scriptLimits: 'product', // the shadow call hangs in a builtin: its time limit is what gives up on it
  });
  try {
    assert.equal(await rcptHang(c), '250 2.1.5 Accepted', 'the live reply does not wait for the shadow');
    await c.waitFor('the worker replaced', async () => (await restarts(c)) === 1);
    const status = await c.waitFor('the shadow script fenced', async () => (await c.cluster()).fences.length > 0 && (await c.cluster()));
    assert.deepEqual(status.fences.map((f) => f.file), [join(shadow, 'rcptto.js')], 'the shadow script, not the live one');
    const logged = await c.waitFor('the fence logged', () => c.logs.find((l) => /^fenced /.test(String(l.msg))));
    assert.match(String(logged.msg), /^fenced shadow rcptto script .*; it no longer runs \(live replies are unchanged\)/, `not "its hook answers 451": ${String(logged.msg)}`);
    await c.waitFor('the worker ready', async () => (await c.cluster()).processes.filter((p) => p.role === 'worker' && p.ready).length === 1);
    for (let i = 1; i <= 3; i++) {
      assert.equal(await rcptHang(c), '250 2.1.5 Accepted');
      await c.waitFor(`shadow call ${i} after the fence counted as fenced`, () =>
        c.logs.filter((l) => l.msg === 'shadow script rcptto failed (not fatal)' && l.kind === 'fenced').length >= i);
    }
    assert.equal(await restarts(c), 1, 'no worker died again');
  } finally {
    await c.stop();
    await rm(shadow, { recursive: true, force: true });
  }
});
