// What the account page takes back is refused by the page at once, before a reload brings the CRL or pin table in
// (revoked-here.ts). A key removed as lost or stolen is refused in any certificate: also in a certificate of another CA
// of the listener's (a company CA the page cannot revoke in), whose emailAddress names the account. That was kept in
// the queue process's memory only: the queue process restarted (a crash, SIGKILL here; the supervisor starts another,
// a real `postern serve`) and the laptop's stolen certificate signed in on the page again (by its field), and could
// issue itself new devices. A certificate the page revoked in its own CA stays refused either way: the new process
// builds from the CA's CRL on disk, written (durably) before the page answered.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initCa, issueDevice } from '../../engine/pki/index.ts';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { startCluster } from '../helpers/cluster.ts';
import { requestsOn, startAccounts, USERS, PASSWORDS } from './helpers.ts';
import { PageClient } from './page-client.ts';

test('what the page revoked or removed as stolen stays refused there after the queue process restarts', async () => {
  const scratch = await mkdtemp(join(tmpdir(), 'postern-revoked-here-'));
  const pki = await makeTestPki(); // its CA: the company CA; alice's certificate names alice@example.com
  const ca = await initCa(join(scratch, 'ca'), { name: 'Accounts Test CA' });
  const phone = await issueDevice(ca.paths.dir, { identity: USERS.alice, device: 'phone' });
  const laptop = { certPem: await readFile(pki.clients.alice.cert, 'utf8'), keyPem: await readFile(pki.clients.alice.key, 'utf8') };
  const pins = join(scratch, 'device-pins');
  await writeFile(pins, '# pins registered on the account page\n');
  const q = JSON.stringify;
  const c = await startCluster({
    config: `
workers: 1
users: ./users
tables: { devicepins: ${q(pins)} }
pki: { dir: ${q(ca.paths.dir)} }
accounts: { listen: 127.0.0.1:{PORT:accounts}, listener: submission }
listeners:
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${q(pki.server.cert)}, key: ${q(pki.server.key)}, clientCertificates: require, caFiles: [${q(ca.paths.caCert)}, ${q(pki.ca.cert)}], crlFiles: [${q(ca.paths.crl)}, ${q(pki.crl)}] }
    certificateIdentity: { field: emailAddress, pins: devicepins }
    auth: { mechanisms: [EXTERNAL, PLAIN], required: true }
`,
    files: { users: `${USERS.alice}:${await hashPassword(PASSWORDS.alice)}\n` },
  });
  try {
    const pageCa = await readFile(pki.ca.cert, 'utf8');
    await c.waitFor('the account page', () => c.logs.find((l) => l.msg === 'account page listening (HTTPS)'));
    const url = `https://127.0.0.1:${c.port('accounts')}`;
    /** What the page's sign-in says to a new connection presenting `device`'s certificate. */
    const signInPage = async (device: { certPem: string; keyPem: string }): Promise<string> => {
      const agent = new https.Agent({ keepAlive: false, ca: pageCa, cert: device.certPem, key: device.keyPem, servername: 'localhost' });
      try {
        return (await requestsOn(agent, url)('/signin')).body;
      } finally {
        agent.destroy();
      }
    };
    const signsIn = new RegExp(`presented a certificate for <b>${USERS.alice}</b>`);
    assert.match(await signInPage(phone), signsIn);
    assert.match(await signInPage(laptop), signsIn);

    const owner = new PageClient(url, pageCa);
    assert.equal((await owner.signIn(USERS.alice, PASSWORDS.alice)).status, 303);
    assert.equal((await owner.post('/devices/add', { device: 'laptop', key: laptop.certPem })).status, 200);
    const idOf = async (device: string): Promise<string> => {
      const id = new RegExp(`<tr data-device="([^"]+)"><td>${device}<`).exec((await owner.request('GET', '/devices')).body)?.[1];
      assert.ok(id, device);
      return id;
    };
    assert.equal((await owner.post(`/devices/${await idOf('phone')}/revoke`, { reason: 'keyCompromise' })).status, 200);
    assert.equal((await owner.post(`/devices/${await idOf('laptop')}/remove`, { reason: 'keyCompromise' })).status, 200);
    assert.doesNotMatch(await signInPage(phone), signsIn, 'the revoked phone, at once');
    assert.doesNotMatch(await signInPage(laptop), signsIn, 'the stolen laptop key, at once');

    const before = (await c.cluster()).processes.find((p) => p.role === 'queue')!.pid!;
    process.kill(before, 'SIGKILL');
    await c.waitFor('a new queue process serving the page', async () => {
      const queue = (await c.cluster()).processes.find((p) => p.role === 'queue');
      return queue && queue.pid !== before && queue.ready && c.logs.some((l) => l.msg === 'account page listening (HTTPS)' && l.pid === queue.pid);
    });
    assert.doesNotMatch(await signInPage(phone), signsIn, 'the revoked phone, after the restart');
    assert.doesNotMatch(await signInPage(laptop), signsIn, 'the stolen laptop key, after the restart');
  } finally {
    await c.stop();
    await rm(scratch, { recursive: true, force: true });
  }
});

test('a file of what the page took back that is not what it writes stops the start, naming the file (a page without it would let a stolen key in)', async () => {
  const scratch = await mkdtemp(join(tmpdir(), 'postern-revoked-here-bad-'));
  try {
    const dataDir = join(scratch, 'data');
    await mkdir(join(dataDir, 'accounts'), { recursive: true });
    const file = join(dataDir, 'accounts', 'revoked-here.json');
    await writeFile(file, '{"certificates": ["ab"');
    await assert.rejects(startAccounts(scratch, {}, {}, dataDir), (err: Error) => {
      assert.match(err.message, new RegExp(`^${file}: not what the account page writes \\(.*\\): move it away to start without what it revoked$`));
      return true;
    });
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
});
