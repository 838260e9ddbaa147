// A listener may load a published copy of the CA's CRL (copied to /etc/postern, or fetched from the CA's web server)
// rather than the CA's own ca.crl. Even a faithful copy was taken for a listener that "does not load its CRL" (a
// warning at start). Once the account page revoked a device, the copy lacked the revocation: the reload was taken
// with that warning and the revoked phone still logged in (AUTH EXTERNAL 235), and a start refused the configuration,
// so the queue process the supervisor restarts (a crash, SIGKILL here) never came back (no account page, no
// delivery) until someone republished the copy. Now the listener keeps serving: the CA's own CRL, which holds everything the copy
// holds and more, is loaded in its place, so the revoked certificate is refused all the same, and a warning names the
// copy and the serials it lacks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initCa, issueDevice } from '../../engine/pki/index.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { startCluster } from '../helpers/cluster.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { USERS, PASSWORDS } from './helpers.ts';
import { PageClient } from './page-client.ts';

test('a device revoked on the page with the listener loading a copy of the CA\'s CRL: refused, and the queue process still restarts', async () => {
  const scratch = await mkdtemp(join(tmpdir(), 'postern-crl-copy-'));
  const pki = await makeTestPki(); // the server certificate
  const ca = await initCa(join(scratch, 'ca'), { name: 'Accounts Test CA' });
  const phone = await issueDevice(ca.paths.dir, { identity: USERS.alice, device: 'phone' });
  await mkdir(join(scratch, 'published'));
  const copy = join(scratch, 'published', 'ca.crl');
  await copyFile(ca.paths.crl, copy);
  const q = JSON.stringify;
  const c = await startCluster({
    config: `
workers: 1
users: ./users
pki: { dir: ${q(ca.paths.dir)} }
accounts: { listen: 127.0.0.1:{PORT:accounts}, listener: submission }
listeners:
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${q(pki.server.cert)}, key: ${q(pki.server.key)}, clientCertificates: request, caFiles: [${q(ca.paths.caCert)}], crlFiles: [${q(copy)}] }
    certificateIdentity: { field: emailAddress }
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
`,
    files: { users: `${USERS.alice}:${await hashPassword(PASSWORDS.alice)}\n` },
  });
  try {
    const serverCa = await readFile(pki.ca.cert, 'utf8');
    const external = async (): Promise<number> => {
      const client = await SmtpTestClient.connect(c.port('submission'));
      try {
        await client.hello({ starttls: { ca: serverCa, cert: phone.certPem, key: phone.keyPem, servername: 'localhost' } });
        return (await client.command('AUTH EXTERNAL =')).code;
      } finally {
        client.socket.destroy();
      }
    };
    await c.waitFor('the account page', () => c.logs.find((l) => l.msg === 'account page listening (HTTPS)'));
    assert.equal(c.logs.filter((l) => String(l.msg).includes('does not load its CRL')).length, 0, 'a faithful copy: nothing to say');
    assert.equal(await external(), 235, 'the phone logs in before (the test can fail)');

    const owner = new PageClient(`https://127.0.0.1:${c.port('accounts')}`, serverCa);
    assert.equal((await owner.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
    const id = /<tr data-device="([^"]+)"><td>phone</.exec((await owner.request('GET', '/devices')).body)?.[1];
    assert.ok(id);
    assert.equal((await owner.post(`/devices/${id}/revoke`, { reason: 'keyCompromise' })).status, 200);

    const serial = phone.record.serial.toLowerCase();
    const warning = await c.waitFor('the warning naming the copy', () => c.logs.find((l) => String(l.msg).includes(copy) && String(l.msg).toLowerCase().includes(serial)));
    assert.match(String(warning.msg), /older than the CA's own CRL/);
    await c.waitFor('every process on the reload', async () => {
      const r = (await c.cluster()).reload;
      return r.converged && Object.values(r.processes).every((p) => p.lastError === null && p.reloads >= 1);
    });
    assert.equal((await c.cluster()).reload.lastError, null);
    assert.notEqual(await external(), 235, 'the revoked phone, on the listener loading the old copy');

    const before = (await c.cluster()).processes.find((p) => p.role === 'queue')!.pid!;
    process.kill(before, 'SIGKILL');
    await c.waitFor('a new queue process serving the page', async () => {
      const queue = (await c.cluster()).processes.find((p) => p.role === 'queue');
      return queue && queue.pid !== before && queue.ready && c.logs.some((l) => l.msg === 'account page listening (HTTPS)' && l.pid === queue.pid);
    });
    assert.notEqual(await external(), 235, 'the revoked phone, after the restart');
    const said = c.logs.filter((l) => String(l.msg).includes(copy));
    assert.equal(said.length, 1, `said once for the server: ${JSON.stringify(said)}`);
    assert.equal(said[0]!.level, 40, 'warn');
  } finally {
    await c.stop();
    await rm(scratch, { recursive: true, force: true });
  }
});
