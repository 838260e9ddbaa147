// `postern pins add` and `pins learn --yes` of a key that already names another account: refused, naming the
// account and where (as the account page refuses it without naming it), unless --force, which pins it with the
// same lines as a warning. Pinned for a second account too, the first account's device signs in as the second:
// here for real, the key of a certificate pki.dir issued to alice logs in as bob once forced.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { until } from '../helpers/wait.ts';
import { externalLogin, issueDevice, startPkiServer, type PkiServer } from './helpers.ts';
import { here } from './in-process.ts';
import { readSightings } from '../../engine/pki/index.ts';

let pki: TestPki;
let s: PkiServer;
/** The configuration with a Postfix policy service of its own pin table beside the listener's (for the CLI only). */
let withPolicy = '';
let policyPins = '';

before(async () => {
  pki = await makeTestPki();
  s = await startPkiServer(pki);
  policyPins = join(s.server.dir, 'policy-pins');
  await writeFile(policyPins, '');
  withPolicy = join(s.server.dir, 'with-policy.yaml');
  const config = (await readFile(s.config, 'utf8')).replace(`tables: { pins: ${s.pins} }`, `tables: { pins: ${s.pins}, policypins: ${policyPins} }`);
  assert.notEqual(config, await readFile(s.config, 'utf8'));
  await writeFile(withPolicy, `${config}\npolicyServices:\n  - { name: postfix, listen: 127.0.0.1:0, certificateIdentity: { pins: policypins } }\n`);
});
after(() => s?.server.stop());

const refusal = /^postern: that key already names another account:$/m;

test('the key of a certificate pki.dir issued to another account: refused naming it; --force pins it, with a warning, and alice\'s device then signs in as bob', async () => {
  const laptop = await issueDevice(s.config, 'alice@example.com', 'laptop');
  const refused = await here.pinsAdd('bob@example.com', laptop.files.cert, { listener: 'pinned', config: s.config });
  assert.equal(refused.code, 1, refused.stdout);
  assert.match(refused.stderr, refusal);
  assert.match(refused.stderr, /^ {2}alice@example\.com: issued by \S+ \(serial [0-9a-f]+, device laptop\)$/m);
  assert.match(refused.stderr, /pinned for bob@example\.com too, the device of alice@example\.com would sign in as bob@example\.com/);
  assert.doesNotMatch(await readFile(s.pins, 'utf8'), /bob@example\.com/, 'nothing pinned');
  assert.equal(await externalLogin(s.server, 'pinned', pki, laptop), 535, 'not pinned: names no one on the pinned listener');

  const forced = await here.pinsAdd('bob@example.com', laptop.files.cert, { listener: 'pinned', config: s.config, force: true });
  assert.equal(forced.code, 0, forced.stderr);
  assert.match(forced.stderr, /^postern: warning: that key also names another account \(pinned anyway: --force\):\n {2}alice@example\.com: issued by /m);
  await until('the forced pin reloaded', async () => await externalLogin(s.server, 'pinned', pki, laptop) === 235);
});

test('a key pinned for another account in another pin table (a policy service\'s): refused naming it and the line', async () => {
  const add = await here.pinsAdd('carol@example.com', pki.clients.bob.cert, { listener: 'postfix', config: withPolicy });
  assert.equal(add.code, 0, add.stderr);
  const refused = await here.pinsAdd('dave@example.com', pki.clients.bob.cert, { listener: 'pinned', config: withPolicy });
  assert.equal(refused.code, 1, refused.stdout);
  assert.match(refused.stderr, refusal);
  assert.match(refused.stderr, new RegExp(`^ {2}carol@example\\.com: pinned in ${policyPins.replace(/[.]/g, '\\.')}:\\d+$`, 'm'));
  const same = await here.pinsAdd('Carol@example.com', pki.clients.bob.cert, { listener: 'pinned', config: withPolicy });
  assert.equal(same.code, 0, `the same account in another table is no other account: ${same.stderr}`);
  assert.equal(same.stderr, '');
});

test('a certificate the server has seen name another account (its pin since removed): pins add and pins learn --yes refuse, naming it', async () => {
  const cert = { cert: await readFile(pki.clients.ecdsa.cert, 'utf8'), key: await readFile(pki.clients.ecdsa.key, 'utf8') };
  assert.equal((await here.pinsAdd('erin@example.com', pki.clients.ecdsa.cert, { listener: 'pinned', config: s.config })).code, 0);
  // Waited for without a handshake: a sighting is recorded once a minute, and one made before the reload names no one.
  await until('the pin reloaded', () => s.server.runtime.generation.tables.get('pins')?.get(pki.clients.ecdsa.pinSha256) != null);
  assert.equal(await externalLogin(s.server, 'pinned', pki, cert), 235);
  const data = join(s.server.dir, 'data');
  await until('the sighting is written', async () => [...(await readSightings(data)).values()].some((x) => x.pinSha256 === pki.clients.ecdsa.pinSha256 && x.identity === 'erin@example.com'));
  assert.equal((await here.pinsRemove('erin@example.com', { config: s.config })).code, 0);
  const refused = await here.pinsAdd('frank@example.com', pki.clients.ecdsa.cert, { listener: 'pinned', config: s.config });
  assert.equal(refused.code, 1, refused.stdout);
  assert.match(refused.stderr, /^ {2}erin@example\.com: seen by the server naming it \(listener pinned, last \S+, connection \S+\)$/m);
  const connection = [...(await readSightings(data)).values()].find((x) => x.pinSha256 === pki.clients.ecdsa.pinSha256)!.lastConnection;
  const preview = await here.pinsLearn(connection, 'frank@example.com', { config: s.config });
  assert.equal(preview.code, 2, preview.stderr);
  assert.match(preview.stdout, /the key already names erin@example\.com \(seen by the server naming it .*\): adding it needs --force/);
  const learn = await here.pinsLearn(connection, 'frank@example.com', { config: s.config, yes: true });
  assert.equal(learn.code, 1, learn.stdout);
  assert.match(learn.stderr, refusal);
  assert.doesNotMatch(await readFile(s.pins, 'utf8'), /frank@/);
  const again = await here.pinsLearn(connection, undefined, { config: s.config, yes: true });
  assert.equal(again.code, 0, `learnt for the account it named: ${again.stderr}`);
});
