// A users-file account whose name a certificate or a pin line cannot carry (a space in it, say): the page refuses
// to add a device for it with a message the user can act on, and logs why for the administrator. It was a 500
// ("Internal Server Error") when issuing, and the pin form showed the certificate tool's own wording.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { generateKeyPairSync } from 'node:crypto';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { startAccounts, type AccountsSetup } from './helpers.ts';
import { PageClient } from './page-client.ts';

let s: AccountsSetup;
let dir = '';
const CAROL = 'carol smith';
const PASSWORD = 'a long enough secret';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-accounts-name-'));
  s = await startAccounts(dir);
  const users = await readFile(join(dir, 'users'), 'utf8');
  await writeFile(join(dir, 'users'), `${users}${CAROL}:${await hashPassword(PASSWORD)}\n`);
  assert.equal((await s.server.reloader.reload('test')).ok, true);
});
after(async () => {
  await s?.server.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('an account named with a space: issuing and pinning are refused with a clear message (400) and a logged reason; nothing is written', async () => {
  const carol = new PageClient(s.url, await readFile(s.pki.ca.cert, 'utf8'));
  assert.equal((await carol.signIn(CAROL, PASSWORD)).status, 303);
  const key = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'pem' }).toString();
  const pinsBefore = await readFile(s.pinsFile, 'utf8');
  for (const [path, form] of [['/devices/issue', { device: 'laptop' }], ['/devices/add', { device: 'phone', key }]] as const) {
    const logged = s.server.logs.length;
    const r = await carol.post(path, form);
    assert.equal(r.status, 400, `${path}: ${r.body.slice(0, 300)}`);
    assert.match(r.body, /Devices cannot be added to the account &quot;carol smith&quot;: its name has characters a certificate cannot carry \(only letters, digits and \. _ % \+ @ - are allowed\)\. Ask the administrator to rename the account\./, path);
    const line = s.server.logs.slice(logged).find((l) => String(l.msg).startsWith('account page: a device cannot be added to this account'));
    assert.ok(line, `${path}: the administrator's log line`);
    assert.equal(line.level, 40);
    assert.equal(line.by, CAROL);
    assert.match(String(line.msg), /its name cannot be put in a certificate or a pin table: identity "carol smith": use letters, digits/);
  }
  assert.equal(await readFile(s.pinsFile, 'utf8'), pinsBefore, 'nothing pinned');
  assert.match((await carol.request('GET', '/devices')).body, /No devices yet\./);
});
