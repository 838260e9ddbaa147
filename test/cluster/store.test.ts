// `store:` memory under `postern serve` is the supervisor's, shared by every worker: with 2 workers,
// limits.messagesPerIdentity and a script's rate() hold for the sum of both workers' counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hashPassword } from '../../engine/auth/password-hash.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startCluster, workerOf, type ClusterProcess } from '../helpers/cluster.ts';

const RCPTTO = `export default async function (ctx) {
  const r = await rate("rcpt:" + ctx.address.address, 2, 3600);
  if (!r.allowed) return defer("Too many messages to " + ctx.address.address, { code: 450, enhanced: "4.7.1" });
}
`;
const CONFIG = `
workers: 2
workerChoice: roundRobin
users: ./users
localDomains: [example.net]
sandbox: { timeoutMs: 2000 }
listeners:
  - name: in
    listen: 127.0.0.1:{PORT:in}
    reverseDns: false
    auth: { mechanisms: [PLAIN], required: true }
    limits: { greetingDelayMs: 0, messagesPerIdentity: { count: 3, windowSeconds: 3600 } }
`;

async function login(c: ClusterProcess): Promise<SmtpTestClient> {
  const client = await SmtpTestClient.connect(c.port('in'));
  await client.hello();
  const r = await client.command(`AUTH PLAIN ${Buffer.from('\0alice@example.com\0alice-Password-1').toString('base64')}`);
  assert.equal(r.code, 235, r.text);
  return client;
}

/** The final reply, or the RCPT refusal (the limits refuse there): callers assert which. */
async function send(client: SmtpTestClient, rcpt: string): Promise<string> {
  const r = await client.sendMail('alice@example.com', [rcpt], undefined, { refusedOk: true });
  if (r.code !== 250) assert.equal((await client.command('RSET')).code, 250);
  return r.text;
}

test('with 2 workers, limits.messagesPerIdentity and a script rate() count the messages of both', async () => {
  const c = await startCluster({
    config: CONFIG, scripts: { 'rcptto.js': RCPTTO },
    files: { users: `alice@example.com:${await hashPassword('alice-Password-1')}\n` },
  });
  try {
    // Two connections open at once, on the two workers. Round robin puts two in a row on different workers, unless
    // the other's heartbeat was late at the hand-over (a loaded machine): then another is opened.
    const a = await login(c);
    let b = await login(c);
    for (let tries = 0; await workerOf(c, b) === await workerOf(c, a); tries++) {
      assert.ok(tries < 20, 'a session on the other worker');
      b.destroy();
      b = await login(c);
    }
    assert.match(await send(a, 'x@example.net'), /^250 2\.0\.0 Ok: queued as/);
    assert.match(await send(b, 'x@example.net'), /^250 2\.0\.0 Ok: queued as/);
    const accepted = await c.waitFor('both acceptances logged', () => {
      const lines = c.logs.filter((l) => /: accepted from=<alice@example\.com>/.test(String(l.msg)));
      return lines.length === 2 && lines;
    });
    assert.equal(new Set(accepted.map((l) => l.pid)).size, 2, 'the two messages went through different workers');
    // rate() for x@example.net (2) is used up by the two workers together.
    assert.equal(await send(a, 'x@example.net'), '450 4.7.1 Too many messages to x@example.net');
    // Alice's third MAIL FROM was counted (the limit counts MAIL FROMs); the fourth is refused on either worker.
    assert.equal(await send(b, 'y@example.net'), '450 4.7.1 Error: too much mail from alice@example.com, try again later');
    assert.equal(await send(a, 'y@example.net'), '450 4.7.1 Error: too much mail from alice@example.com, try again later');
    await a.quit();
    await b.quit();
  } finally {
    await c.stop();
  }
});

// The calls one hook makes at once go to the supervisor in one message (shared-store.ts): run there in
// their order, each counted exactly once, one refused while the other of the same key is allowed.
const PAIR_RCPTTO = `export default async function (ctx) {
  const key = "pair:" + ctx.address.address;
  const [a, b, seen] = await Promise.all([rate(key, 3, 3600), rate(key, 3, 3600), counter("seen").add(1, 3600)]);
  if (!a.allowed || !b.allowed) return defer("over: " + a.count + " " + a.allowed + " " + b.count + " " + b.allowed + " seen " + seen, { code: 450, enhanced: "4.7.1" });
}
`;

test('with workers, the store calls of one hook go together and count in order, each once', async () => {
  const c = await startCluster({ config: CONFIG.replace('workers: 2', 'workers: 1'), scripts: { 'rcptto.js': PAIR_RCPTTO },
    files: { users: `alice@example.com:${await hashPassword('alice-Password-1')}\n` } });
  try {
    const a = await login(c);
    assert.equal((await a.command('MAIL FROM:<alice@example.com>')).code, 250);
    assert.equal((await a.command('RCPT TO:<p@example.net>')).code, 250); // counts 1 and 2
    assert.equal((await a.command('RCPT TO:<p@example.net>')).text, '450 4.7.1 over: 3 true 3 false seen 2');
    assert.equal((await a.command('RCPT TO:<p@example.net>')).text, '450 4.7.1 over: 3 false 3 false seen 3');
    assert.equal((await a.command('RCPT TO:<q@example.net>')).code, 250);
    await a.quit();
  } finally {
    await c.stop();
  }
});
