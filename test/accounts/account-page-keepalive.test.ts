// A connection kept alive across a revocation: its TLS verdict is the handshake's, so the page checks the
// certificate against the CRLs loaded now, and no longer offers a certificate sign-in on that connection.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { issueDevice, revokeDevice } from '../../engine/pki/index.ts';
import { until } from '../helpers/wait.ts';
import { startAccounts, USERS } from './helpers.ts';

function get(agent: https.Agent, url: string): Promise<{ body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => { body += c; });
      res.on('end', () => resolve({ body, reused: req.reusedSocket }));
    });
    req.on('error', reject);
  });
}

test('a certificate revoked while its connection stays open names no account on that connection', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-accounts-keepalive-'));
  const s = await startAccounts(dir);
  const device = await issueDevice(s.caDir, { identity: USERS.alice, device: 'desk' });
  // One connection, kept: the page's certificate is the test PKI's "localhost"; the device's is presented.
  const agent = new https.Agent({
    keepAlive: true, maxSockets: 1, ca: await readFile(s.pki.ca.cert, 'utf8'), servername: 'localhost', cert: device.certPem, key: device.keyPem,
  });
  try {
    const first = await get(agent, `${s.url}/signin`);
    assert.match(first.body, /presented a certificate for <b>alice@example\.com<\/b>/);
    await revokeDevice(s.caDir, { serial: device.record.serial }, { reason: 'keyCompromise' });
    await until('the page to see the revocation', async () => {
      const again = await get(agent, `${s.url}/signin`);
      assert.equal(again.reused, true, 'the same connection, its handshake from before the revocation');
      return /names no account here \(revoked\)/.test(again.body);
    });
  } finally {
    agent.destroy();
    await s.server.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
