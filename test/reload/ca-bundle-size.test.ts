// A CA bundle of many certificates (bundles concatenated by mistake, `cat /etc/ssl/certs/* > ca.crt`): each
// certificate is parsed in JavaScript (about a millisecond each) and the whole bundle was read in one stretch, at a
// reload in every process at once. 5,000 of them held each event loop for several seconds, past the worker's 1 s
// watchdog, which killed every worker with its connections. A bundle is now read giving way between certificates,
// and one of more than MAX_BUNDLE_CERTIFICATES is refused before any is parsed: the error names the file, and the
// running generation stays, in the same worker. A real `postern serve` and SMTP client.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, workerPid, type ClusterProcess } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { MAX_BUNDLE_CERTIFICATES } from '../../engine/certificates/tls-files.ts';

async function noRestartsNorWatchdog(c: ClusterProcess, pid: number): Promise<void> {
  const status = await c.cluster();
  assert.deepEqual(status.processes.map((p) => p.restarts), status.processes.map(() => 0), 'no process restarted');
  assert.equal(await workerPid(c, 0), pid, 'the same worker');
  assert.equal(c.logs.filter((l) => /hang|not beaten|watchdog/i.test(String(l.msg))).length, 0, 'no watchdog line');
}

test('postern serve: a CA bundle of many certificates is read giving way, one of too many refused; no process is killed by its watchdog', { timeout: 300_000 }, async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  const c = await startCluster({
    config: `${ONE_WORKER}  - name: sub
    listen: 127.0.0.1:{PORT:sub}
    tls: { mode: starttls, cert: ./server.crt, key: ./server.key, clientCertificates: request, caFiles: [./ca.crt] }
    limits: { greetingDelayMs: 0 }
`,
    files: { 'server.crt': await readFile(pki.server.cert, 'utf8'), 'server.key': await readFile(pki.server.key, 'utf8'), 'ca.crt': ca },
  });
  try {
    const bundle = join(c.dir, 'ca.crt');
    const first = await c.waitFor('every process on the first generation', async () => {
      const r = (await c.cluster()).reload;
      return Object.keys(r.processes).length === 2 && r.converged && r;
    });
    const pid = await workerPid(c, 0);
    const replace = async (text: string): Promise<void> => {
      await writeFile(`${bundle}.new`, text);
      await rename(`${bundle}.new`, bundle);
    };

    // As many as a bundle may hold: taken, a second or so of parsing in slices.
    await replace(ca.repeat(MAX_BUNDLE_CERTIFICATES));
    await c.waitFor('the full bundle taken by every process', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && Object.entries(r.processes).every(([k, p]) => p.generation > first.processes[k]!.generation && !p.refused) && r;
    }, 120_000);
    await noRestartsNorWatchdog(c, pid);

    // Five times that: refused at its count, before any certificate is parsed.
    await replace(ca.repeat(5 * MAX_BUNDLE_CERTIFICATES));
    const refused = await c.waitFor('the oversized bundle refused by every process', async () => {
      const r = (await c.cluster()).reload;
      return Object.values(r.processes).every((p) => p.refused) && r;
    }, 120_000);
    for (const p of Object.values(refused.processes)) assert.match(String(p.lastError), /ca\.crt: holds 5000 certificates, more than the 1000/);
    await noRestartsNorWatchdog(c, pid);

    const s = await SmtpTestClient.connect(c.port('sub'));
    await s.read(30_000);
    assert.equal((await s.command('EHLO client.test', 30_000)).code, 250, 'the running generation answers');
    s.destroy();
  } finally {
    await c.stop();
  }
});
