/**
 * The account page's idle sessions end after `accounts.sessionMinutes` of real time, whatever the wall clock
 * does meanwhile. Idle time was measured on the wall clock: set back an hour (NTP step, a VM restored from
 * a snapshot), a session left signed in on a shared computer stood for that hour more than its setting (and
 * an issued .p12 with its password stayed on offer as long).
 * The server's minute is shortened to MINUTE_MS (POSTERN_SESSION_MINUTE_MS): the fault is the hour, not the minute,
 * and a real minute idle was among the suite's longest waits. Still long enough for the one request that must come
 * within it (the check that the session stands, right after signing in) on a loaded machine.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { needs, run } from '../helpers/example.ts';
import { needsFaketime, startSteppableCluster } from '../helpers/faketime.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { webSignIn } from './helpers.ts';

/** The server's minute for sessionMinutes (the product's is 60 s). */
const MINUTE_MS = 10_000;

const skip = needs('curl').skip || needsFaketime;

test('the wall clock set back an hour: a session idle past sessionMinutes is signed out all the same', { skip, timeout: 180_000 }, async () => {
  const pki = await makeTestPki();
  const s = await startSteppableCluster(`
workers: 1
users: ./users
accounts: { listen: 127.0.0.1:{PORT:accounts}, listener: submission, sessionMinutes: 1 }
listeners:
  - name: submission
    listen: 127.0.0.1:{PORT:submission}
    reverseDns: false
    tls: { mode: starttls, cert: ${JSON.stringify(pki.server.cert)}, key: ${JSON.stringify(pki.server.key)} }
    limits: { greetingDelayMs: 0 }
`, { files: { users: `alice@example.com:${await hashPassword('right')}\n` }, env: { POSTERN_SESSION_MINUTE_MS: String(MINUTE_MS) } });
  try {
    await s.c.waitFor('the account page', () => s.c.logs.find((l) => l.msg === 'account page listening (HTTPS)'));
    const url = `https://127.0.0.1:${s.c.port('accounts')}`;
    const jar = join(s.c.dir, 'cookies');
    /** Where the page sends this browser: /devices signed in, /signin signed out. */
    const home = async (): Promise<string> => (await run('curl', ['-sS', '-k', '-b', jar, '-o', '/dev/null', '-w', '%{redirect_url}', `${url}/`])).stdout;
    assert.equal(await webSignIn(url, jar, 'alice@example.com', 'right'), '303');
    assert.match(await home(), /\/devices$/, 'signed in');
    s.step('-3600');
    // The server's minute of real time and a little more, idle: the length of the fault, not a timing assertion.
    await new Promise((r) => setTimeout(r, MINUTE_MS + 2000));
    assert.match(await home(), /\/signin$/, 'idle for more than sessionMinutes: signed out');
  } finally {
    await s.close();
  }
});
