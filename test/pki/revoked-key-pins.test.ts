// A key whose certificate `postern pki revoke` revoked, pinned again (`pins add` with the laptop's certificate, or
// `pins learn` of the connection its thief made since): a pin names the account whatever the chain verdict, so the
// stolen key would log in again, in any certificate. Refused, naming the revocation.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { run } from '../helpers/example.ts';
import { postern, startPkiServer } from './helpers.ts';
import { here, hereJson } from './in-process.ts';

let pki: TestPki;
before(async () => { pki = await makeTestPki(); });

test('pins add of a revoked certificate\'s key, in that certificate or one made elsewhere: refused', async () => {
  const { server, config } = await startPkiServer(pki);
  try {
    // The issue, and the pins add after the first, run their command's function in this process (the same code).
    const laptop = await hereJson<{ files: { cert: string; key: string } }>(here.issue('alice@example.com', { device: 'laptop', config, json: true }));
    const out = await mkdtemp(join(tmpdir(), 'postern-revoked-key-'));
    const made = await run('openssl', ['req', '-x509', '-key', laptop.files.key, '-subj', '/CN=alice@example.com', '-days', '2', '-out', join(out, 'elsewhere.crt')]);
    assert.equal(made.code, 0, made.output);
    assert.equal((await postern(['pki', 'revoke', 'alice@example.com', '--all', '--reason', 'keyCompromise', '-c', config])).code, 0);
    for (const cert of [laptop.files.cert, join(out, 'elsewhere.crt')]) {
      const add = cert === laptop.files.cert
        ? await postern(['pins', 'add', 'alice@example.com', cert, '--listener', 'pinned', '-c', config])
        : await here.pinsAdd('alice@example.com', cert, { listener: 'pinned', config });
      assert.equal(add.code, 1, add.stdout);
      assert.match(add.stderr, /^postern: that key's certificate \(serial [0-9a-f]+, alice@example\.com, device laptop\) was revoked on \S+ \(keyCompromise\): pinned, it would log in again; issue a new certificate instead$/m);
    }
    const other = await here.pinsAdd('bob@example.com', pki.clients.alice.cert, { listener: 'pinned', config });
    assert.equal(other.code, 0, `a key never revoked is pinned as before: ${other.stderr}`);
  } finally {
    await server.stop();
  }
});
