// Taking a device's access back while the server runs. `pki revoke` rewrites the CRL: the reload refuses
// new handshakes with that certificate as revoked, a session already logged in with it gets 550 at its
// next MAIL FROM, and `pki list` shows it revoked. `pins add/remove` do the same for a pin table, and
// `pins learn` pins the certificate of a connection found in the log or in the last-seen records.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { postern, posternJson, startPkiServer, type PkiServer } from './helpers.ts';
import { here, hereJson } from './in-process.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';
import { readSightings } from '../../engine/pki/index.ts';

let pki: TestPki;
let s: PkiServer;

before(async () => {
  pki = await makeTestPki();
  s = await startPkiServer(pki);
});
after(() => s.server.stop());

/** A session on `listener` with this key + certificate, logged in with AUTH EXTERNAL (or not: the reply). */
async function session(listener: string, cert: string, key: string): Promise<{ client: SmtpTestClient; auth: number; tlsLog: Record<string, unknown> | undefined }> {
  const client = await SmtpTestClient.connect(s.server.port(listener));
  const before = s.server.logs.length;
  await client.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert, key, servername: 'localhost' } });
  const auth = await client.command('AUTH EXTERNAL =');
  const tlsLog = s.server.logs.slice(before).find((l) => l.msg === 'TLS established');
  return { client, auth: auth.code, tlsLog };
}

interface Issued { certificate: { serial: string }; files: { pem: string; cert: string } }

// Each command whose output is a claim here runs once as the command line (postern, posternJson); the issues that
// set a case up and the further runs are the command's function in this process (here: the same code).

test('pki revoke: new handshakes refused as revoked after the reload, an open session refused at MAIL FROM, pki list shows it', async () => {
  const d = await hereJson<Issued>(here.issue('bob@example.com', { device: 'laptop', config: s.config, json: true }));
  const pem = await readFile(d.files.pem, 'utf8');
  const trust = () => s.server.servers.get('submission')!.trust;
  const cert = { serial: d.certificate.serial, pem: (await readFile(d.files.cert, 'utf8')).split(/(?<=-----END CERTIFICATE-----\n)/)[0]! };
  await until('the issue\'s CRL is loaded', async () => {
    // The listener has reloaded once the new CRL number is in force: a fresh session logs in.
    const { client, auth } = await session('submission', pem, pem);
    await client.quit();
    return auth === 235;
  });
  const open = await session('submission', pem, pem);
  assert.equal(open.auth, 235);
  assert.equal((await open.client.command('MAIL FROM:<bob@example.com>')).code, 250);
  assert.equal((await open.client.command('RSET')).code, 250);
  const before = await SmtpTestClient.connect(s.server.port('required'));
  assert.match((await before.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: pem, key: pem, servername: 'localhost' } })).text, /^250-/);
  await before.quit();

  const r = await posternJson<{ revoked: Array<{ serial: string; revoked: { reason: string } }>; crl: { number: number } }>(
    ['pki', 'revoke', 'bob@example.com', '--device', 'laptop', '--reason', 'keyCompromise', '-c', s.config]);
  assert.deepEqual(r.revoked.map((c) => [c.serial, c.revoked.reason]), [[d.certificate.serial, 'keyCompromise']]);
  await until('the reloaded CRL lists the certificate', () => trust().isRevoked(cert));

  // The open session: no new transaction.
  const mail = await open.client.command('MAIL FROM:<bob@example.com>');
  assert.equal(mail.text, '550 5.7.1 Client certificate has been revoked');
  await open.client.quit();
  // A new handshake: the chain verdict is "revoked", so no identity and AUTH EXTERNAL fails.
  const again = await session('submission', pem, pem);
  assert.equal(again.auth, 535);
  assert.deepEqual((again.tlsLog?.cert as { error?: string } | undefined)?.error, 'revoked');
  await again.client.quit();
  // Where a trusted certificate is required, the new handshake gets no session at all.
  const strict = await SmtpTestClient.connect(s.server.port('required'));
  const ehlo = await strict.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: pem, key: pem, servername: 'localhost' } });
  assert.equal(ehlo.text, '421 4.7.1 Client certificate not trusted (revoked)');
  await strict.waitClosed();

  const list = await hereJson<{ certificates: Array<{ serial: string; status: string }> }>(here.list({ config: s.config, json: true }));
  assert.equal(list.certificates.find((c) => c.serial === d.certificate.serial)?.status, 'revoked');
  const text = await postern(['pki', 'list', '-c', s.config]);
  assert.match(text.stdout, new RegExp(`bob@example\\.com +laptop +${d.certificate.serial} +\\S+ +revoked \\S+ \\(keyCompromise\\)`));
  // Revoking again changes nothing (the CRL is not rewritten).
  const twice = await hereJson<{ revoked: unknown[]; alreadyRevoked: unknown[]; crl: unknown }>(here.revoke(d.certificate.serial, { config: s.config, json: true }));
  assert.deepEqual([twice.revoked.length, twice.alreadyRevoked.length, twice.crl], [0, 1, null]);
});

test('pins add from a certificate file: authenticates; pins remove: the open session is refused at MAIL FROM, new ones get no identity', async () => {
  const device = await createSelfSignedCertificate({ commonName: 'carol phone' });
  const certFile = join(s.server.dir, 'carol.crt');
  await writeFile(certFile, device.cert);
  const table = () => s.server.runtime.generation.tables.get('pins')!;
  const pinHex = (await posternJson<{ added: { pinSha256: string } }>(['pins', 'add', 'carol@example.com', certFile, '--device', 'phone', '-c', s.config])).added.pinSha256;
  await until('the pin table is reloaded with the pin', () => table().get(pinHex) === 'carol@example.com');
  const open = await session('pinned', device.cert, device.key);
  assert.equal(open.auth, 235);
  assert.equal((await open.client.command('MAIL FROM:<carol@example.com>')).code, 250);
  assert.equal((await open.client.command('RSET')).code, 250);

  const listed = await hereJson<{ pins: Array<{ identity: string; device: string; pinSha256: string; lastSeen: string | null }> }>(here.pinsList({ config: s.config, json: true }));
  assert.deepEqual(listed.pins.map((p) => [p.identity, p.device, p.pinSha256]), [['carol@example.com', 'phone', pinHex]]);
  // Adding the same key again (any spelling) is refused.
  const dup = await here.pinsAdd('dave@example.com', certFile, { config: s.config });
  assert.equal(dup.code, 1);
  assert.match(dup.stderr, /already pinned, for carol@example\.com \(device phone\)/);

  const removed = await posternJson<{ removed: Array<{ pinSha256: string }> }>(['pins', 'remove', 'carol@example.com', '--device', 'phone', '-c', s.config]);
  assert.deepEqual(removed.removed.map((p) => p.pinSha256), [pinHex]);
  await until('the pin table is reloaded without the pin', () => table().get(pinHex) === null);
  assert.equal((await open.client.command('MAIL FROM:<carol@example.com>')).text, '550 5.7.1 Client certificate is no longer accepted');
  await open.client.quit();
  const again = await session('pinned', device.cert, device.key);
  assert.equal(again.auth, 535);
  await again.client.quit();
  assert.doesNotMatch(await readFile(s.pins, 'utf8'), /phone/, 'the device comment went with the pin');
});

test('pki revoke also unpins the revoked key: a listener without the CA\'s CRL (pins only) stops taking the device too', async () => {
  const d = await hereJson<Issued>(here.issue('erin@example.com', { device: 'tablet', config: s.config, json: true }));
  const pem = await readFile(d.files.pem, 'utf8');
  const table = () => s.server.runtime.generation.tables.get('pins')!;
  const pinHex = (await hereJson<{ added: { pinSha256: string } }>(here.pinsAdd('erin@example.com', d.files.cert, { device: 'tablet', config: s.config, json: true }))).added.pinSha256;
  await until('the pin table is reloaded with the pin', () => table().get(pinHex) === 'erin@example.com');
  const open = await session('pinned', pem, pem);
  assert.equal(open.auth, 235);

  const r = await posternJson<{ revoked: Array<{ serial: string }>; unpinned: Array<{ file: string; identity: string; pinSha256: string }> }>(
    ['pki', 'revoke', 'erin@example.com', '--device', 'tablet', '-c', s.config]);
  assert.deepEqual(r.revoked.map((c) => c.serial), [d.certificate.serial]);
  assert.deepEqual(r.unpinned, [{ file: s.pins, identity: 'erin@example.com', pinSha256: pinHex }]);
  await until('the pin table is reloaded without the pin', () => table().get(pinHex) === null);
  assert.equal((await open.client.command('MAIL FROM:<erin@example.com>')).text, '550 5.7.1 Client certificate is no longer accepted');
  await open.client.quit();
  const again = await session('pinned', pem, pem);
  assert.equal(again.auth, 535);
  await again.client.quit();
});

test('pins learn: shows the certificate of a logged connection, adds it with --yes; also found by connection id in the last-seen records', async () => {
  const device = await createSelfSignedCertificate({ commonName: 'dave laptop', keyType: 'ecdsa' });
  const first = await session('pinned', device.cert, device.key);
  assert.equal(first.auth, 535, 'not pinned yet');
  await first.client.quit();
  const cid = first.tlsLog!.cid as string;
  const log = join(s.server.dir, 'postern.log');
  await writeFile(log, s.server.logs.map((l) => JSON.stringify(l)).join('\n') + '\n');

  const dry = await postern(['pins', 'learn', cid, 'dave@example.com', '--device', 'laptop', '--log', log, '-c', s.config]);
  assert.equal(dry.code, 2, dry.stderr);
  assert.match(dry.stdout, /Would add to .*pins:\n {2}[A-Za-z0-9_-]{43} dave@example\.com {3}\(device laptop\)\n {2}certificate CN=dave laptop/);
  assert.doesNotMatch(await readFile(s.pins, 'utf8'), /dave/);
  const added = await hereJson<{ added: boolean; entry: { pinSha256: string } }>(here.pinsLearn(cid, 'dave@example.com', { device: 'laptop', log, yes: true, config: s.config, json: true }));
  assert.equal(added.added, true);
  await until('the pin table is reloaded with the learnt pin', () => s.server.runtime.generation.tables.get('pins')!.get(added.entry.pinSha256) === 'dave@example.com');
  const second = await session('pinned', device.cert, device.key);
  assert.equal(second.auth, 235);
  await second.client.quit();

  // Without the log: the last-seen records name the connection that was written last.
  const other = await createSelfSignedCertificate({ commonName: 'erin tablet' });
  const third = await session('pinned', other.cert, other.key);
  await third.client.quit();
  const cid3 = third.tlsLog!.cid as string;
  await until('the sighting is written', async () => [...(await readSightings(join(s.server.dir, 'data'))).values()].some((x) => x.lastConnection === cid3));
  const plan = await hereJson<{ added: boolean; subject: string; identity: string }>(here.pinsLearn(cid3, 'erin@example.com', { config: s.config, json: true }));
  assert.deepEqual([plan.added, plan.subject, plan.identity], [false, 'CN=erin tablet', 'erin@example.com']);
  // By queue id: the certificate that submitted a message still in the queue, and the account it logged in as.
  const issued = await hereJson<{ files: { pem: string }; facts: { pin: { sha256: string } } }>(here.issue('ivy@example.com', { device: 'desk', config: s.config, json: true }));
  const pem = await readFile(issued.files.pem, 'utf8');
  const sender = await session('submission', pem, pem);
  assert.equal(sender.auth, 235);
  const queued = await sender.client.sendMail('ivy@example.com', ['r@example.com']);
  await sender.client.quit();
  const queueId = /queued as (\w+)/.exec(queued.text)![1]!;
  const byQueue = await posternJson<{ pin: string; identity: string; from: string }>(['pins', 'learn', queueId, '-c', s.config]);
  assert.deepEqual(byQueue, { ...byQueue, pin: Buffer.from(issued.facts.pin.sha256, 'hex').toString('base64url'), identity: 'ivy@example.com', from: `queued message ${queueId}` });
  const unknown = await here.pinsLearn('nosuchconnection', 'x@example.com', { config: s.config });
  assert.equal(unknown.code, 1);
  assert.match(unknown.stderr, /no client certificate found for nosuchconnection/);
});
