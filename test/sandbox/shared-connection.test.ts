/**
 * Connection facts cross into an isolate once per connection key: scripts see them frozen, see every
 * change (a new key), and an isolate that has kept too many forgets them and is sent them again.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ScriptFailure } from '../../engine/sandbox/index.ts';
import { connectionKey } from '../../engine/smtp/script-context.ts';
import type { ConnectionInfo } from '../../engine/sandbox/api/index.ts';
import { authContext, js, recordingHost } from '../helpers/sandbox-fixtures.ts';
import { withSandbox } from '../helpers/sandbox.ts';

/** The facts as the host builds them, before they are frozen for a script. */
type Writable<T> = { -readonly [K in keyof T]: T[K] };
const sample = (): Writable<ConnectionInfo> => authContext().connection;

test('the connection key changes with every fact that can change within a connection', () => {
  // Fixed for the life of a connection, so its id stands for them.
  const fixedById = new Set(['id', 'source', 'remoteAddress', 'remotePort', 'localAddress', 'localPort', 'listener']);
  const changes: Record<string, (c: Writable<ConnectionInfo>) => void> = {
    helo: (c) => { c.helo = 'other.example'; },
    auth: (c) => { c.auth = { username: 'alice', mechanism: 'EXTERNAL' }; },
    tls: (c) => { c.tls = { ...c.tls!, sni: 'other.example' }; },
    clientCertificate: (c) => { c.clientCertificate = { ...c.clientCertificate!, verified: false, verifyError: 'revoked' }; },
    certificateIdentity: (c) => { c.certificateIdentity = 'bob'; },
  };
  for (const field of Object.keys(sample())) {
    if (fixedById.has(field)) continue;
    assert.ok(changes[field], `connectionKey() must cover the new ConnectionInfo field "${field}"`);
    const changed = sample();
    changes[field]!(changed);
    assert.notEqual(connectionKey(changed), connectionKey(sample()), field);
  }
  const other = sample();
  other.id = 'another';
  assert.notEqual(connectionKey(other), connectionKey(sample()));
  assert.equal(connectionKey(sample()), connectionKey(sample()));
});

test('scripts see the kept facts, frozen, and the new ones once the key changes', async () => {
  await withSandbox({
    host: recordingHost(),
    isolates: 1,
    // A call stopped by the fast path's limit (a busy machine) legitimately makes the host send the facts
    // again, which this test would take for a failure to keep them; 50 ms makes that vanishingly rare.
    fastPathMs: 50,
    scripts: [
      js('mailfrom', 'export default (ctx) => accept({ text: `${ctx.connection.helo} ${ctx.connection.clientCertificate.subject.CN} ${ctx.address}` })'),
      js('rcptto', 'export default (ctx) => { ctx.connection.helo = "changed"; }'),
      js('data', 'export default (ctx) => accept({ text: Object.keys(ctx).join(",") })'),
    ],
  }, async (sandbox) => {
    const c = sample();
    const key = connectionKey(c);
    assert.deepEqual(await sandbox.invoke('mailfrom', { connection: c, address: 'a' }, 'c1', key), { verdict: 'accept', text: 'laptop.example.com alice a' });
    // Same key: the host's object is not even looked at again.
    assert.deepEqual(await sandbox.invoke('mailfrom', { connection: { ...c, helo: 'ignored' }, address: 'b' }, 'c1', key), { verdict: 'accept', text: 'laptop.example.com alice b' });
    await assert.rejects(sandbox.invoke('rcptto', { connection: c }, 'c1', key), (e) => e instanceof ScriptFailure && /read.only|Cannot assign/.test(e.message));
    const renamed = { ...c, helo: 'renamed.example' };
    assert.deepEqual(await sandbox.invoke('mailfrom', { connection: renamed, address: 'c' }, 'c1', connectionKey(renamed)), { verdict: 'accept', text: 'renamed.example alice c' });
    assert.deepEqual(await sandbox.invoke('data', { connection: c, transaction: {}, data: {} }, 'c1', key), { verdict: 'accept', text: 'connection,transaction,data' });
    // Without a key the context crosses whole, as always.
    assert.deepEqual(await sandbox.invoke('mailfrom', { connection: { ...c, helo: 'whole' }, address: 'd' }, 'c1'), { verdict: 'accept', text: 'whole alice d' });
  });
});

test('an isolate that kept many connections forgets them and is sent them again', async () => {
  await withSandbox({ host: recordingHost(), isolates: 1, scripts: [js('helo', 'export default (ctx) => accept({ text: ctx.connection.id })')] }, async (sandbox) => {
    for (let i = 0; i < 600; i++) {
      const c = { ...sample(), id: `conn-${i % 300}` };
      assert.deepEqual(await sandbox.invoke('helo', { connection: c }, c.id, connectionKey(c)), { verdict: 'accept', text: c.id });
    }
    const heap = (await sandbox.stats()).isolates[0]!.heapUsedBytes!;
    assert.ok(heap < 8 * 1024 * 1024, `isolate heap ${heap} bytes`);
  });
});

test('a client certificate crosses once per isolate; a different chain verdict is a different certificate', async () => {
  await withSandbox({
    host: recordingHost(),
    isolates: 1,
    scripts: [js('helo', 'export default (ctx) => { const c = ctx.connection.clientCertificate; return accept({ text: c ? `${ctx.connection.id} ${c.subject.CN} ${c.verified} ${c.verifyError} ${Object.isFrozen(c)} ${c.pem.length}` : `${ctx.connection.id} none` }); }')],
  }, async (sandbox) => {
    const base = sample();
    const pemLength = base.clientCertificate!.pem!.length;
    for (let i = 0; i < 300; i++) { // past the number of kept certificates: forgotten and sent again
      const c = { ...base, id: `c${i}`, clientCertificate: { ...base.clientCertificate!, fingerprint: { ...base.clientCertificate!.fingerprint, sha256: String(i % 150).padStart(64, '0') } } };
      assert.deepEqual(await sandbox.invoke('helo', { connection: c }, c.id), { verdict: 'accept', text: `c${i} alice true null true ${pemLength}` });
    }
    const revoked = { ...base, id: 'r', clientCertificate: { ...base.clientCertificate!, verified: false, verifyError: 'revoked' as const, verifyErrorCode: 'CERT_REVOKED' } };
    assert.deepEqual(await sandbox.invoke('helo', { connection: revoked }, 'r'), { verdict: 'accept', text: `r alice false revoked true ${pemLength}` });
    assert.deepEqual(await sandbox.invoke('helo', { connection: { ...base, id: 'n', clientCertificate: null } }, 'n'), { verdict: 'accept', text: 'n none' });
    assert.deepEqual(await sandbox.invoke('helo', { connection: base }, 'again'), { verdict: 'accept', text: `${base.id} alice true null true ${pemLength}` });
  });
});
