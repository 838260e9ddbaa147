// A page session signed in by certificate stands only while a new sign-in with that certificate would name the
// same account, as an open SMTP session follows its certificate's account (test/smtp/certificate-verdict-since.test.ts).
// Before, the check of a session signed in by a field was only `field !== 'none'`: a reload that made the listener
// name another account from the certificate (certificateIdentity.field from emailAddress to CN) left the session
// signed in as the old account, able to issue itself devices, when a new sign-in with that certificate is mallory.
// Node's https client with a device certificate of the server's CA (engine/pki), one keep-alive connection.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { certificateSession, requestsOn, startAccounts, USERS, type AccountsSetup } from './helpers.ts';
import { issueDevice } from '../../engine/pki/index.ts';

let s: AccountsSetup;
let scratch: string;
let agent: https.Agent;
let request: ReturnType<typeof requestsOn>;
let config = '';
let usual = '';

before(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'postern-accounts-identity-'));
  s = await startAccounts(scratch);
  // Its emailAddress (and SAN e-mail) names alice; its CN is "mallory", another account once the listener reads the CN.
  const device = await issueDevice(s.caDir, { identity: 'mallory', emails: [USERS.alice], device: 'laptop' });
  agent = new https.Agent({ keepAlive: true, maxSockets: 1, cert: device.certPem, key: device.keyPem, rejectUnauthorized: false });
  request = requestsOn(agent, s.url);
  config = join(s.server.dir, 'postern.yaml');
  usual = await readFile(config, 'utf8');
});
after(async () => {
  agent?.destroy();
  await s?.server.stop();
  await rm(scratch, { recursive: true, force: true });
});

/** The configuration with each `from` replaced by its `to`, reloaded (and taken by the page). */
async function reloadWith(...changes: [from: string, to: string][]): Promise<void> {
  let text = usual;
  for (const [from, to] of changes) {
    assert.ok(text.includes(from), `${from} in the configuration`);
    text = text.replace(from, to);
  }
  await writeFile(config, text);
  const reloaded = await s.server.reloader.reload('test');
  assert.equal(reloaded.ok, true, JSON.stringify(reloaded));
}

async function reloadUsual(): Promise<void> {
  await writeFile(config, usual);
  assert.equal((await s.server.reloader.reload('test')).ok, true);
}

test('certificateIdentity.field reloaded to another field: the session stays while it names the same account, ends once it names another', async () => {
  const { cookies } = await certificateSession(request);
  try {
    await reloadWith(['field: emailAddress', 'field: sanEmail']);
    assert.equal((await request('/devices', { cookies })).status, 200, 'sanEmail names alice too: still signed in');
    const logged = s.server.logs.length;
    await reloadWith(['field: emailAddress', 'field: CN']);
    const look = await request('/signin');
    assert.doesNotMatch(look.body, /presented a certificate for <b>alice@example\.com<\/b>/, 'a new sign-in would not be alice');
    const after = await request('/devices', { cookies });
    assert.equal(after.location, '/signin', 'the CN names mallory: alice\'s session must end');
    assert.ok(s.server.logs.slice(logged).some((l) => l.msg === 'account page: session ended (its password or certificate is no longer valid)' && l.via === 'certificate'));
  } finally {
    await reloadUsual();
  }
});
