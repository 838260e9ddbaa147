// Expiry and last seen. A certificate seen lately that expires within pki.warnDays is logged once a day,
// exported as postern_client_certificate_expiry_seconds{identity,device} and listed first by `pki list`.
// The last-seen records: one file per process, merged on read; a record is rewritten at most once a
// minute; a restarted process keeps its first-seen times. Concurrent commands do not lose an update.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { createCrl } from '../../engine/certificates/index.ts';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { until } from '../helpers/wait.ts';
import { postern, posternJson, startPkiServer, type PkiServer } from './helpers.ts';
import { ExpiryWatch, initCa, issueDevice, readInventory, readSightings, SightingRecorder, SIGHTING_MS, MAX_NAMELESS_RECORDS } from '../../engine/pki/index.ts';
import type { Logger } from '../../engine/logging/logger.ts';
import { registry } from '../../engine/metrics/metrics.ts';

let pki: TestPki;
let s: PkiServer;

before(async () => {
  pki = await makeTestPki();
  s = await startPkiServer(pki);
});
after(() => s.server.stop());

test('a certificate expiring within warnDays, once seen: one warning a day, the gauge, and first in pki list', async () => {
  const soon = await posternJson<{ certificate: { serial: string; fingerprintSha256: string }; files: { pem: string } }>(
    ['pki', 'issue', 'frank@example.com', '--device', 'old-laptop', '--days', '3', '-c', s.config]);
  const later = await posternJson<{ certificate: { serial: string } }>(['pki', 'issue', 'aaron@example.com', '--device', 'desk', '-c', s.config]);
  const pem = await readFile(soon.files.pem, 'utf8');
  const client = await SmtpTestClient.connect(s.server.port('submission'));
  await client.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: pem, key: pem, servername: 'localhost' } });
  await client.quit();
  await until('the sighting is written', async () => (await readSightings(join(s.server.dir, 'data'))).has(soon.certificate.fingerprintSha256));

  const watch = s.server.certificates.expiry!;
  const warned = () => s.server.logs.filter((l) => l.msg === 'client certificate expires soon' && l.serial === soon.certificate.serial);
  const expiring = await watch.check();
  assert.deepEqual(expiring.map((c) => [c.identity, c.device]), [['frank@example.com', 'old-laptop']]);
  assert.equal(warned().length, 1);
  assert.equal(warned()[0]!.level, 40, 'a warning');
  assert.equal(warned()[0]!.expiresInDays, 2);
  // Checked again the same day: no second warning.
  await watch.check();
  assert.equal(warned().length, 1);
  // A day later it is logged again.
  await watch.check(Date.now() + 86400_000 + 1000, performance.now() + 86400_000 + 1000);
  assert.equal(warned().length, 2);

  const gauge = (await registry.getSingleMetric('postern_client_certificate_expiry_seconds')!.get()).values;
  const frank = gauge.find((v) => v.labels.identity === 'frank@example.com');
  assert.equal(frank?.labels.device, 'old-laptop');
  assert.ok(frank!.value > 86400 && frank!.value <= 3 * 86400, String(frank?.value));

  const list = await posternJson<{ certificates: Array<{ serial: string; expiringSoon: boolean }> }>(['pki', 'list', '-c', s.config]);
  assert.equal(list.certificates[0]!.serial, soon.certificate.serial, 'the expiring one first');
  assert.equal(list.certificates[0]!.expiringSoon, true);
  assert.equal(list.certificates.find((c) => c.serial === later.certificate.serial)?.expiringSoon, false);
  const text = await postern(['pki', 'list', '-c', s.config]);
  assert.match(text.stdout.split('\n')[1]!, /^! +frank@example\.com +old-laptop /);
  assert.match(text.stdout, /! expires within 14 days/);
});

test("a stranger's expired certificate (it names no one) raises no warning and no gauge series; a device's keeps its owner once expired", async () => {
  // `expired` is from the test CA, which this server does not trust: to it, a made-up certificate any client could present.
  const stranger = pki.clients.expired;
  const client = await SmtpTestClient.connect(s.server.port('submission'));
  await client.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: await readFile(stranger.cert, 'utf8'), key: await readFile(stranger.key, 'utf8'), servername: 'localhost' } });
  await client.quit();
  const data = join(s.server.dir, 'data');
  await until('the sighting is written', async () => (await readSightings(data)).has(stranger.fingerprintSha256));
  assert.equal((await readSightings(data)).get(stranger.fingerprintSha256)!.identity, null);

  const expiring = await s.server.certificates.expiry!.check();
  assert.equal(expiring.find((c) => c.fingerprintSha256 === stranger.fingerprintSha256), undefined);
  assert.equal(s.server.logs.filter((l) => l.serial === stranger.serial).length, 0, 'no warning about it');
  const gauge = (await registry.getSingleMetric('postern_client_certificate_expiry_seconds')!.get()).values;
  assert.equal(gauge.filter((v) => v.labels.identity === '').length, 0, 'no series without an identity');

  // A certificate that named someone and later names no one (expired, unpinned) is still that person's.
  const dir = await mkdtemp(join(tmpdir(), 'postern-known-as-'));
  const recorder = new SightingRecorder(dir, 'single', { delayMs: 10 });
  const base = { fingerprintSha256: 'ab'.repeat(32), pinSha256: 'cd'.repeat(32), serial: '01', subject: 'CN=dev', issuer: 'CN=ca',
    notAfter: new Date(Date.now() - 86400_000).toISOString(), listener: 'submission', lastConnection: 'c1' };
  recorder.seen({ ...base, identity: 'erin@example.com', verdict: 'verified' }, Date.now() - 2 * SIGHTING_MS, performance.now() - 2 * SIGHTING_MS);
  recorder.seen({ ...base, identity: null, verdict: 'expired', lastConnection: 'c2' });
  await recorder.close();
  const [seen] = (await readSightings(dir)).values();
  assert.equal(seen!.identity, null);
  assert.equal(seen!.knownAs, 'erin@example.com');
  await rm(dir, { recursive: true, force: true });
});

/** The `i`-th of a flood of certificates' sightings (`identity` null: a made-up certificate that names nobody). */
const floodRecord = (i: number, identity: string | null) => ({
  fingerprintSha256: i.toString(16).padStart(64, '0'), pinSha256: 'cd'.repeat(32), serial: String(i), subject: `CN=${i}`, issuer: 'CN=ca',
  notAfter: new Date().toISOString(), listener: 'mx', identity, verdict: identity ? 'verified' : 'self-signed', lastConnection: `c${i}`,
});

test('sightings: certificates that never named anyone keep at most MAX_NAMELESS_RECORDS records, the latest; named ones are not pushed out', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-nameless-'));
  const recorder = new SightingRecorder(dir, 'single', { delayMs: 10 });
  const start = Date.now() - 3600_000;
  const record = floodRecord;
  recorder.seen(record(0, 'owner@example.com'), start);
  const flood = MAX_NAMELESS_RECORDS + 100;
  for (let i = 1; i <= flood; i++) recorder.seen(record(i, null), start + i);
  await recorder.close();
  const seen = await readSightings(dir);
  assert.equal(seen.size, MAX_NAMELESS_RECORDS + 1);
  assert.equal(seen.get(record(0, null).fingerprintSha256)?.identity, 'owner@example.com', 'the oldest record, but it named someone');
  assert.ok(!seen.has(record(100, null).fingerprintSha256), 'the oldest nameless ones went');
  assert.ok(seen.has(record(flood, null).fingerprintSha256));
  await rm(dir, { recursive: true, force: true });
});

test('sightings: a file that cannot be read keeps the records in memory to the same bounds (they were pruned only on the way to a write)', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-unreadable-seen-'));
  try {
    // A folder where the file should be (root reads any file; a folder fails reading and writing alike).
    await mkdir(join(dir, 'certificates', 'seen-single.json'), { recursive: true });
    const warnings: unknown[] = [];
    const recorder = new SightingRecorder(dir, 'single', { delayMs: 3_600_000, retryMs: 3_600_000, onError: (err) => warnings.push(err) });
    const start = Date.now() - 3600_000;
    const flood = MAX_NAMELESS_RECORDS + 100;
    for (let i = 1; i <= flood; i++) recorder.seen(floodRecord(i, null), start + i, 0);
    await assert.rejects(recorder.flush(), /EISDIR/);
    // seenRecently() answers from the records' marks: a forgotten record has none.
    assert.equal(recorder.seenRecently(floodRecord(1, null).fingerprintSha256, 0), false, 'the oldest nameless records are forgotten unwritten');
    assert.equal(recorder.seenRecently(floodRecord(100, null).fingerprintSha256, 0), false);
    assert.equal(recorder.seenRecently(floodRecord(101, null).fingerprintSha256, 0), true, 'the latest MAX_NAMELESS_RECORDS are kept');
    assert.equal(recorder.seenRecently(floodRecord(flood, null).fingerprintSha256, 0), true);
    // The folder gone, the next write has the kept records.
    await rm(join(dir, 'certificates', 'seen-single.json'), { recursive: true });
    await recorder.close();
    assert.equal((await readSightings(dir)).size, MAX_NAMELESS_RECORDS);
    assert.deepEqual(warnings, []);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('sightings: per-process files merged on read, at most one write a minute per certificate, first-seen kept across a restart', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-seen-'));
  try {
    const base = { pinSha256: 'p', serial: '01', subject: 'CN=x', issuer: 'CN=ca', notAfter: '2030-01-01T00:00:00.000Z', identity: 'x@example.com', verdict: 'verified' };
    const t0 = Date.parse('2026-01-01T00:00:00Z');
    const w0 = new SightingRecorder(dataDir, 'worker-0', { delayMs: 10 });
    const w1 = new SightingRecorder(dataDir, 'worker-1', { delayMs: 10 });
    w0.seen({ ...base, fingerprintSha256: 'aa', listener: 'submission', lastConnection: 'c1' }, t0, t0);
    w1.seen({ ...base, fingerprintSha256: 'aa', listener: 'submissions', lastConnection: 'c2' }, t0 + 5000);
    w1.seen({ ...base, fingerprintSha256: 'bb', listener: 'submissions', lastConnection: 'c3' }, t0 + 6000);
    await Promise.all([w0.flush(), w1.flush()]);
    assert.deepEqual((await readdir(join(dataDir, 'certificates'))).sort(), ['seen-worker-0.json', 'seen-worker-1.json']);
    let merged = await readSightings(dataDir);
    assert.deepEqual([merged.get('aa')!.firstSeen, merged.get('aa')!.lastSeen, merged.get('aa')!.listener],
      [new Date(t0).toISOString(), new Date(t0 + 5000).toISOString(), 'submissions']);
    assert.equal(merged.size, 2);

    // Within a minute of the last record, a sighting changes nothing (no write); after it, one write.
    // seenRecently() tells a caller so before it builds a record.
    assert.deepEqual([w0.seenRecently('aa', t0 + SIGHTING_MS - 1), w0.seenRecently('aa', t0 + SIGHTING_MS), w0.seenRecently('cc', t0)], [true, false, false]);
    const before = await readFile(w0.file, 'utf8');
    w0.seen({ ...base, fingerprintSha256: 'aa', listener: 'submission', lastConnection: 'c4' }, t0 + SIGHTING_MS - 1, t0 + SIGHTING_MS - 1);
    await w0.flush();
    assert.equal(await readFile(w0.file, 'utf8'), before);
    w0.seen({ ...base, fingerprintSha256: 'aa', listener: 'submission', lastConnection: 'c5' }, t0 + SIGHTING_MS, t0 + SIGHTING_MS);
    await w0.close();
    await w1.close();
    merged = await readSightings(dataDir);
    assert.equal(merged.get('aa')!.lastConnection, 'c5');

    // A replaced worker 0 starts with an empty memory: its file keeps the first sighting.
    const again = new SightingRecorder(dataDir, 'worker-0', { delayMs: 10 });
    again.seen({ ...base, fingerprintSha256: 'aa', listener: 'submission', lastConnection: 'c6' }, t0 + 10 * SIGHTING_MS);
    await again.close();
    const mine = JSON.parse(await readFile(again.file, 'utf8')) as { certificates: Record<string, { firstSeen: string; lastSeen: string }> };
    assert.equal(mine.certificates.aa!.firstSeen, new Date(t0).toISOString());
    assert.equal(mine.certificates.aa!.lastSeen, new Date(t0 + 10 * SIGHTING_MS).toISOString());
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('the wall clock stepped: warnings and sightings are paced by elapsed time, so a step back silences neither and a step forward is no day', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-seen-clock-'));
  try {
    const DAY = 86400_000;
    const wall = Date.now();
    const elapsed = performance.now();
    const base = { pinSha256: 'p', serial: '0c', subject: 'CN=g', issuer: 'CN=ca', notAfter: new Date(wall + 3 * DAY).toISOString(), identity: 'gina@example.com', verdict: 'verified', listener: 'submission' };
    const w = new SightingRecorder(dataDir, 'single', { delayMs: 10 });
    w.seen({ ...base, fingerprintSha256: 'cc', lastConnection: 'c1' }, wall, elapsed);
    // Set back a day, then a minute goes by: the device seen again is recorded (it was not, for a day).
    // (A millisecond past the minute: performance.now() has a fraction, and (t + 60000) - t can come out under 60000.)
    w.seen({ ...base, fingerprintSha256: 'cc', lastConnection: 'c2' }, wall - DAY + SIGHTING_MS, elapsed + SIGHTING_MS + 1);
    await w.close();
    assert.equal((await readSightings(dataDir)).get('cc')!.lastConnection, 'c2');

    const logs: Array<{ msg: string; serial?: string }> = [];
    const logger = { warn: (fields: { serial?: string }, msg: string) => logs.push({ ...fields, msg }) } as unknown as Logger;
    const watch = new ExpiryWatch({ dataDir, logger, warnDays: () => 14, names: async () => ({ byFingerprint: new Map(), byPin: new Map() }) });
    const warnings = (): number => logs.filter((l) => l.serial === '0c').length;
    await watch.check(wall, elapsed);
    assert.equal(warnings(), 1);
    // Set forward two days, an hour later: no day has passed, no second warning.
    await watch.check(wall + 2 * DAY, elapsed + 3600_000);
    assert.equal(warnings(), 1, 'a step forward is no day');
    // Set back two days, a day and an hour later: a day has passed, it is warned about again.
    await watch.check(wall - 2 * DAY + DAY + 3600_000, elapsed + DAY + 3600_000);
    assert.equal(warnings(), 2, 'a step back silences nothing');
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('CRLs of the listeners: their remaining life is a gauge, and one that runs out within warnDays or has is a warning once a day', async () => {
  // The server's own watch reads the listeners' crlFiles: the CA folder's CRL, a year ahead.
  await s.server.certificates.expiry!.check();
  const crlGauge = async () => (await registry.getSingleMetric('postern_crl_next_update_seconds')!.get()).values;
  const served = (await crlGauge()).find((v) => v.labels.file === join(s.ca, 'ca.crl'));
  assert.equal(served?.labels.issuer, 'CN=Example Mail CA');
  assert.ok(served!.value > 300 * 86400, String(served?.value));

  const dir = await mkdtemp(join(tmpdir(), 'postern-crl-watch-'));
  try {
    const DAY = 86400_000;
    const soon = join(dir, 'soon.crl');
    const gone = join(dir, 'gone.crl');
    // CRL times are whole seconds: the clock the watch is given is too, and no bound is near a day's edge.
    const wall = Math.floor(Date.now() / 1000) * 1000;
    await writeFile(soon, await createCrl(pki.authorities.ca, [], { nextUpdate: new Date(wall + 2 * DAY - 3600_000) }));
    await writeFile(gone, await createCrl(pki.authorities.otherCa, [], { thisUpdate: new Date(wall - 10 * DAY), nextUpdate: new Date(wall - DAY - 3600_000) }));
    const logs: Array<{ msg: string; file?: string; expiresInDays?: number }> = [];
    const logger = { warn: (fields: object, msg: string) => logs.push({ ...fields, msg }) } as unknown as Logger;
    const watch = new ExpiryWatch({ dataDir: dir, logger, warnDays: () => 14, names: async () => ({ byFingerprint: new Map(), byPin: new Map() }), crlFiles: () => [soon, gone, soon] });
    const elapsed = performance.now();
    await watch.check(wall, elapsed);
    assert.deepEqual(logs.map((l) => [l.file, l.msg, l.expiresInDays]), [
      [soon, 'CRL expires soon: replace it (postern pki crl) before every certificate of its CA fails', 1],
      [gone, 'CRL has expired: every certificate of its CA fails (CRL_HAS_EXPIRED) until it is replaced', -2],
    ]);
    const gauge = await crlGauge();
    assert.ok(gauge.find((v) => v.labels.file === soon)!.value > DAY / 1000);
    assert.ok(gauge.find((v) => v.labels.file === gone)!.value < 0);
    await watch.check(wall + 3600_000, elapsed + 3600_000);
    assert.equal(logs.length, 2, 'once a day');
    await watch.check(wall + DAY + 1000, elapsed + DAY + 1000);
    assert.equal(logs.length, 4);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('sightings: a write that fails (the file cannot be replaced) is tried again, and later sightings are still written', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'postern-seen-fault-'));
  try {
    const errors: unknown[] = [];
    const w = new SightingRecorder(dataDir, 'worker-0', { delayMs: 10, retryMs: 50, onError: (e) => errors.push(e) });
    // A directory where the file goes: the rename over it fails, as a write on a broken disk would.
    await mkdir(w.file, { recursive: true });
    const t0 = Date.parse('2026-03-01T00:00:00Z');
    const base = { pinSha256: 'p', serial: '01', subject: 'CN=a', issuer: 'CN=ca', notAfter: '2027-01-01T00:00:00.000Z', identity: null, verdict: 'verified' };
    w.seen({ ...base, fingerprintSha256: 'aa', listener: 'submission', lastConnection: 'c1' }, t0);
    await assert.rejects(w.flush());
    await until('the failure is told', () => errors.length >= 1);
    await rm(w.file, { recursive: true });
    // The retry writes the record that failed, and a new sighting is written too.
    await until('the failed record is written by the retry', async () => (await readSightings(dataDir)).has('aa'));
    w.seen({ ...base, fingerprintSha256: 'bb', listener: 'submission', lastConnection: 'c2' }, t0 + 1000);
    await w.flush();
    assert.deepEqual([...(await readSightings(dataDir)).keys()].sort(), ['aa', 'bb']);
    await w.close();
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('concurrent issues (a CLI and a web page at once) are serialised: both recorded, the CRL numbered once each', async () => {
  const dir = join(await mkdtemp(join(tmpdir(), 'postern-lock-')), 'ca');
  try {
    await initCa(dir);
    const issued = await Promise.all(['a', 'b', 'c', 'd'].map((n) => issueDevice(dir, { identity: `${n}@example.com`, device: 'laptop', p12Password: 'x' })));
    const inv = await readInventory(dir);
    assert.deepEqual(inv.certificates.map((c) => c.identity).sort(), ['a@example.com', 'b@example.com', 'c@example.com', 'd@example.com']);
    assert.deepEqual(issued.map((d) => d.crl.number).sort(), [2, 3, 4, 5]);
    assert.equal(inv.crlNumber, 5);
    assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith('.')), [], 'no lock or temporary file left');
  } finally {
    await rm(join(dir, '..'), { recursive: true, force: true });
  }
});
