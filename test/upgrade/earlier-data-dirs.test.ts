// An upgrade as an administrator makes one: the data directory (and CA folder, pin table) an earlier tree left
// when it was killed with mail in its queue (test/upgrade/fixtures/<commit>, see its README), then this release's
// `postern serve` on it. Every message acknowledged and not finished is delivered (at least once), none
// delivered before is sent again, held ones stay held, revocations and pins stay in force, and nothing about
// the spool is logged as unreadable or damaged.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { startCluster, ONE_WORKER, TWO_WORKERS, deliveryToSink, type ClusterProcess } from '../helpers/cluster.ts';
import { startSink } from '../helpers/sink.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { runInProcess } from '../helpers/cli-in-process.ts';
import { queueListCommand } from '../../engine/cli/queue.ts';
import { here } from '../pki/in-process.ts';
import { useScratchDir } from '../helpers/scratch.ts';

const scratch = useScratchDir('postern-upgrade-');

const FIXTURES = new URL('./fixtures/', import.meta.url).pathname;

interface Expected { commit: string; deliveredBefore: string[]; toDeliver: string[]; held: string[]; pki: boolean }

/** Listeners (after the cluster's `in` listener) for a fixture's CA and pin table, as the docs set them up, and the keys naming those. */
function pkiConfig(root: string): string {
  const tls = `cert: ${join(root, 'server.crt')}, key: ${join(root, 'server.key')}, clientCertificates: request`;
  return `  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, ${tls}, caFiles: [${join(root, 'ca/ca.crt')}], crlFiles: [${join(root, 'ca/ca.crl')}] }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { field: emailAddress }
  - name: pinned
    listen: 127.0.0.1:{PORT:pinned}
    reverseDns: false
    tls: { mode: starttls, ${tls} }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: pins }
pki: { dir: ${join(root, 'ca')} }
tables: { pins: ${join(root, 'pins')} }
`;
}

/** AUTH EXTERNAL's reply code on `listener` with this certificate and key (one PEM file, or two). */
async function externalLogin(c: ClusterProcess, listener: string, cert: string, key = cert): Promise<number> {
  const client = await SmtpTestClient.connect(c.port(listener));
  try {
    await client.hello({ starttls: { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8'), servername: 'localhost' } });
    return (await client.command('AUTH EXTERNAL =')).code;
  } finally {
    client.destroy();
  }
}

const device = (root: string, name: string): string => join(root, 'ca/devices', readdirSync(join(root, 'ca/devices')).find((f) => f.includes(`-${name}-`) && f.endsWith('.pem'))!);

for (const commit of readdirSync(FIXTURES).filter((n) => /^[0-9a-f]{7,}$/.test(n))) {
  const expected = JSON.parse(readFileSync(join(FIXTURES, commit, 'expected.json'), 'utf8')) as Expected;
  test(`the data directory of ${commit}, killed with mail queued, held and under way: delivered by this release, holds${expected.pki ? ', revocations and pins' : ''} kept`, async () => {
    const root = mkdtempSync(join(scratch.path, `postern-upgrade-${commit}-`));
    cpSync(join(FIXTURES, commit), root, { recursive: true });
    const sink = await startSink({});
    // As many workers as the tree had spools for (fewer-workers.test.ts is about fewer); one for the one-process tree.
    const workerSpools = readdirSync(join(root, 'data/spool')).filter((n) => n.startsWith('worker-')).length;
    const c = await startCluster({ config: `${workerSpools > 1 ? TWO_WORKERS : ONE_WORKER}${expected.pki ? pkiConfig(root) : ''}${deliveryToSink(sink.port)}`, dataDir: join(root, 'data') });
    try {
      const subjects = (): string[] => sink.messages.map((m) => /^Subject: (\S+)/m.exec(m.data.toString())![1]!);
      await c.waitFor('every unfinished message delivered', () => expected.toDeliver.every((s) => subjects().includes(s)));
      // Everything in the fixture was due long ago, so one scan takes it all: a message sent now and delivered comes after it.
      const fresh = await SmtpTestClient.connect(c.port('in'));
      await fresh.read(30_000);
      await fresh.command('EHLO client.test', 30_000);
      assert.equal((await fresh.sendMail('sender@example.test', ['after@example.test'], 'Subject: after\r\n\r\nx\r\n')).code, 250);
      fresh.destroy();
      await c.waitFor('the message sent after the start', () => subjects().includes('after'));
      for (const s of [...expected.deliveredBefore, ...expected.held]) assert.ok(!subjects().includes(s), `${s} must not be delivered`);
      // The commands read with this process's copy of their code (postern queue list, pki list, pki issue): a process less each.
      const list = await runInProcess(() => queueListCommand({ json: true, config: join(c.dir, 'postern.yaml') }));
      assert.equal(list.code, 0, list.stderr);
      const queued = (JSON.parse(list.stdout) as { messages: Array<{ held: unknown }> }).messages;
      assert.equal(queued.length, expected.held.length, list.stdout);
      assert.ok(queued.every((m) => m.held), 'only the held messages are left, held');
      // A message the old tree was still receiving when it was killed (never acknowledged) may be removed, with a
      // warning: seen once in three fresh-clone runs (removedOrphans: 1). Anything else about the spool is trouble.
      const spoolTrouble = c.logs.filter((l) => Number(l.level) >= 40 && /spool|journal|unreadable|damaged|quarantine/i.test(String(l.msg))
        && String(l.msg) !== 'removed unacknowledged spool files');
      assert.deepEqual(spoolTrouble, []);

      if (!expected.pki) return;
      assert.equal(await externalLogin(c, 'submission', device(root, 'laptop')), 235, 'the CA\'s device that was not revoked logs in');
      assert.equal(await externalLogin(c, 'submission', device(root, 'phone')), 535, 'the revoked one does not');
      assert.equal(await externalLogin(c, 'pinned', join(root, 'bob.crt'), join(root, 'bob.key')), 235, 'a pinned key logs in');
      assert.equal(await externalLogin(c, 'pinned', join(root, 'eve.crt'), join(root, 'eve.key')), 535, 'a pin removed stays removed');
      const yaml = join(c.dir, 'postern.yaml');
      const listed = JSON.parse((await here.list({ json: true, config: yaml })).stdout) as { certificates: Array<{ device: string; status: string }> };
      assert.deepEqual(listed.certificates.map((x) => [x.device, x.status]).sort(), [['laptop', 'valid'], ['phone', 'revoked']]);
      // This release's next change to the CA: the earlier revocation stays in the CRL it signs, under a higher number.
      const crlNumber = (): number => Number(/X509v3 CRL Number:\s*\n\s*(\d+)/.exec(execFileSync('openssl', ['crl', '-in', join(root, 'ca/ca.crl'), '-noout', '-text'], { encoding: 'utf8' }))![1]);
      const before = crlNumber();
      const issued = await here.issue('alice@example.test', { device: 'tablet', config: yaml });
      assert.equal(issued.code, 0, issued.stderr);
      assert.ok(crlNumber() > before);
      await c.waitFor('the new CRL loaded', async () => await externalLogin(c, 'submission', device(root, 'tablet')) === 235);
      assert.equal(await externalLogin(c, 'submission', device(root, 'phone')), 535);
    } finally {
      await c.stop();
      await sink.close();
    }
  });
}
