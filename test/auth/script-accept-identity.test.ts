// Whom an auth script's accept() logs in. A bare accept() (a script that checked a certificate or a token, and
// named nobody) took the authzid the client asked for, so `AUTH EXTERNAL <base64 of ceo@…>` with any certificate
// the script liked logged in as the CEO; and it took the PLAIN/LOGIN name as the client wrote its case, so
// `Carol@…`, `carol@…` and `CAROL@…` were three identities, each with its own limits.messagesPerIdentity count.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { SmtpTestClient, TlsClientOptions } from '../helpers/smtp-client.ts';
import { clientTlsOptions } from '../helpers/pki.ts';
import { INVALID, b64, plain, startSubmission, type Submission } from './helpers/submission.ts';

const OK = '235 2.7.0 Authentication successful';
const TOO_MUCH = /^450 4\.7\.1 /;

let sub: Submission;
let alice: TlsClientOptions;

before(async () => {
  sub = await startSubmission('{ authFailuresPerIp: 1000, authFailuresBeforeDelay: 100, messagesPerIdentity: { count: 2, windowSeconds: 3600 } }', {
    auth: '{ mechanisms: [EXTERNAL, PLAIN, LOGIN], required: true }',
    // A device script (any certificate it was shown) and an app-token script (a token for any name), as written
    // without a thought for the authzid; and a master-user script that names the account it admits.
    scripts: {
      'auth.ts': `export default (ctx) => {
        if (ctx.auth.mechanism === 'EXTERNAL') return ctx.connection.clientCertificate ? accept() : undefined;
        if (ctx.auth.password === 'app-token') return accept();
        if (ctx.auth.password === 'master-token') return accept({ username: ctx.auth.authzid });
        if (ctx.auth.password === 'named-token') return accept({ username: 'Dave@Example.COM' });
      };`,
    },
  });
  alice = await clientTlsOptions(sub.pki, 'alice');
});
after(() => sub.server.stop());

const tlsClient = (cert?: TlsClientOptions): Promise<SmtpTestClient> => sub.tlsClient(cert);

/** The user a session logged in as, from the spooled envelope of a message it sends. */
async function loggedInAs(c: SmtpTestClient, sender: string): Promise<string | null> {
  const r = await c.sendMail(sender, ['friend@example.com']);
  assert.equal(r.code, 250, r.text);
  return (await sub.server.runtime.spool.readEnvelope(/queued as (\S+)/.exec(r.text)![1]!)).session.authenticatedUser;
}

test("a bare accept() of EXTERNAL never logs in as the authzid the client asked for: alice's certificate asking for the CEO gets 535", async () => {
  const c = await tlsClient(alice);
  assert.equal((await c.command(`AUTH EXTERNAL ${b64('ceo@example.com')}`)).text, INVALID);
  assert.equal((await c.command('MAIL FROM:<ceo@example.com>')).code, 530, 'not logged in');
  // Her own identity, asked for or implied, is what the script accepted.
  assert.equal((await c.command(`AUTH EXTERNAL ${b64('Alice@Example.com')}`)).text, OK);
  assert.equal(await loggedInAs(c, 'alice@example.com'), 'alice@example.com');
  await c.quit();
  const d = await tlsClient(alice);
  assert.equal((await d.command('AUTH EXTERNAL =')).text, OK);
  assert.equal(await loggedInAs(d, 'alice@example.com'), 'alice@example.com');
  await d.quit();
  const reasons = sub.server.logs.filter((l) => l.msg === 'authentication failed').map((l) => l.reason);
  assert.ok(reasons.includes('script accept without a username, and none the client proved'), JSON.stringify(reasons));
});

test('a bare accept() of PLAIN or LOGIN: a foreign authzid, or a name that is no plain account, is 535; a script that names the account admits it', async () => {
  const c = await tlsClient();
  assert.equal((await c.command(plain('carol@example.com', 'app-token', 'ceo@example.com'))).text, INVALID);
  assert.equal((await c.command(plain('carol example', 'app-token'))).text, INVALID);
  assert.equal((await c.command(plain('carol@example.com\u2028X-Spam: no', 'app-token'))).text, INVALID);
  // U+212A KELVIN SIGN lowercases (and normalizes) to k: a name of the script's directory, never kate's account.
  assert.equal((await c.command(plain('\u212Aate@example.com', 'app-token'))).text, INVALID);
  // Acting for another account is for a script to allow by name (Dovecot's master users).
  assert.equal((await c.command(plain('carol@example.com', 'master-token', 'CEO@example.com'))).text, OK);
  assert.equal(await loggedInAs(c, 'ceo@example.com'), 'ceo@example.com');
  await c.quit();
  // A name typed on a Mac comes decomposed (NFD): the one account of its composed form.
  const d = await tlsClient();
  assert.equal((await d.command(plain('Jos\u00e9@example.com'.normalize('NFD'), 'app-token'))).text, OK);
  assert.equal(await loggedInAs(d, 'jose@example.com'), 'jos\u00e9@example.com');
  await d.quit();
});

test("one account whatever its case: Carol@, carol@ and CAROL@ share one messagesPerIdentity count, and a script's named account is lowercased", async () => {
  const seen: Array<string | null> = [];
  for (const name of ['Carol@Example.com', 'carol@example.com']) {
    const c = await tlsClient();
    assert.equal((await c.command(plain(name, 'app-token'))).text, OK);
    seen.push(await loggedInAs(c, 'carol@example.com'));
    await c.quit();
  }
  assert.deepEqual(seen, ['carol@example.com', 'carol@example.com']);
  const c = await tlsClient();
  await c.command('AUTH LOGIN');
  await c.command(b64('CAROL@EXAMPLE.COM'));
  assert.equal((await c.command(b64('app-token'))).text, OK);
  assert.match((await c.command('MAIL FROM:<carol@example.com>')).text, TOO_MUCH, 'the third message of the one account');
  await c.quit();
  const d = await tlsClient();
  assert.equal((await d.command(plain('anyone', 'named-token'))).text, OK);
  assert.equal(await loggedInAs(d, 'dave@example.com'), 'dave@example.com');
  await d.quit();
});
