// The exemption from limits.authFailuresPerAccount of the address a user logged in from must not be undone by a
// stranger who fills the memory store (store.maxKeys) with other keys: else anyone could lock the user out again.
// Real sockets from distinct loopback addresses, a real server.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { hash } from '@node-rs/argon2';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { INVALID, plain, submissionConfig } from './helpers/submission.ts';

const DEFERRED = '454 4.7.0 Temporary authentication failure, try again later';
const OK = '235 2.7.0 Authentication successful';
const PASSWORD = 'alice-Secret-1';

async function tlsClient(server: TestServer, ca: string, from: string): Promise<SmtpTestClient> {
  const c = await SmtpTestClient.connect(server.port('sub'), { localAddress: from });
  await c.hello({ starttls: { ca } });
  return c;
}

test('a stranger fills the memory store (store.maxKeys) with guesses at made-up names: the address alice logged in from still passes her account\'s lock', async () => {
  const pki = await makeTestPki();
  const ca = await readFile(pki.ca.cert, 'utf8');
  // Cheap hashes, so that a thousand guesses take little time (each guess is one verification).
  const cheap = (password: string) => hash(password, { memoryCost: 64, timeCost: 1, parallelism: 1 });
  const s = await startTestServer({
    config: `store: { maxKeys: 1000 }\n${submissionConfig(pki, '{ authFailuresPerIp: 100000, authFailuresPerAccount: 5, authFailuresBeforeDelay: 100000 }')}`,
    files: { users: `alice@example.com:${await cheap(PASSWORD)}\n` },
  });
  try {
    const own = await tlsClient(s, ca, '127.0.0.2');
    assert.equal((await own.command(plain('alice@example.com', PASSWORD))).text, OK);
    own.destroy();
    // The flood: 1,200 names no one has, one failed guess each (each a key of its own in the store), three to a
    // connection (the server closes a connection after a few errors).
    for (let i = 0; i < 1200; i += 3) {
      const flooder = await tlsClient(s, ca, '127.0.6.1');
      for (let j = i; j < i + 3; j++) assert.equal((await flooder.command(plain(`nobody-${j}@example.com`, 'x'))).text, INVALID);
      flooder.destroy();
    }
    // Then the account is locked by five guesses from elsewhere.
    for (let i = 1; i <= 5; i++) {
      const c = await tlsClient(s, ca, `127.0.7.${i}`);
      assert.equal((await c.command(plain('alice@example.com', `guess-${i}`))).text, INVALID);
      c.destroy();
    }
    const stranger = await tlsClient(s, ca, '127.0.7.50');
    assert.equal((await stranger.command(plain('alice@example.com', PASSWORD))).text, DEFERRED);
    stranger.destroy();
    // Alice, from the address she logged in from, is not locked out.
    const again = await tlsClient(s, ca, '127.0.0.2');
    assert.equal((await again.command(plain('alice@example.com', PASSWORD))).text, OK);
    again.destroy();
  } finally {
    await s.stop();
  }
});
