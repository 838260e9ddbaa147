// A DKIM key file replaced, broken or removed under a running server. Rotated: the next delivery is signed
// with the new key (dkimpy verifies it with the new record only). Broken or removed: the reload is refused,
// naming the file and key and showing nothing of the key, and the running generation keeps signing with the
// key it had. A real next hop records the bytes; dkimpy (python3-dkim) verifies them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startSink, type Sink } from '../helpers/sink.ts';
import { startDeliveryServer, type DeliveryServer } from '../helpers/delivery-server.ts';
import { dkimKeyPair, verifyDkim, type DkimKeyPair } from '../helpers/dkim.ts';
import { deliveredCopy, DKIM_LOGIN } from '../helpers/dkim-delivery.ts';
import { LOGIN_ANYONE } from '../helpers/smtp-client.ts';
import { configYaml, smarthostDelivery, testListener } from '../helpers/config.ts';

let sink: Sink;
let s: DeliveryServer;
let first: DkimKeyPair;

before(async () => {
  first = dkimKeyPair('rsa');
  sink = await startSink();
  s = await startDeliveryServer({
    files: { 'com.key': first.privateKey },
    config: configYaml({
      hostname: 'postern.test',
      listeners: [testListener('in', { auth: { mechanisms: ['PLAIN'] } })], // logged in: the sender domain's key signs
      delivery: smarthostDelivery(sink.port, {
        retrySchedule: [3600],
        dkim: { com: { domain: 'example.com', selector: 'sel', privateKey: 'com.key', senderDomains: ['example.com'] } },
      }),
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();', 'auth.ts': LOGIN_ANYONE },
    login: DKIM_LOGIN,
  });
});
after(async () => {
  await s?.stop();
  await sink?.close();
});

/**
 * `text`, with empty lines added so that it is no shorter than `file` is now: a file cut short is taken only once
 * unchanged for 2 s (SHRUNK_SETTLE_MS, tested in test/reload/half-written.test.ts), idle time here.
 */
async function noShorter(file: string, text: string): Promise<string> {
  const now = await readFile(file).catch(() => Buffer.alloc(0)); // gone: anything is longer
  const short = now.length - Buffer.byteLength(text);
  return short > 0 ? text + '\n'.repeat(short) : text;
}

const record = (pair: DkimKeyPair) => ({ 'sel._domainkey.example.com.': pair.txt });

const delivered = (): Promise<Buffer> =>
  deliveredCopy(s, sink, 'a@example.com', ['b@example.net'], 'From: <a@example.com>\r\nTo: <b@example.net>\r\nSubject: key\r\n\r\nbody\r\n');

const nextReload = () => new Promise<{ ok: boolean; errors: string[] }>((resolve) => { const off = s.reloader.onReload((o) => { off(); resolve(o); }); });

test('a rotated key file signs the next delivery; the old record no longer verifies it', async () => {
  assert.deepEqual(await verifyDkim(await delivered(), record(first)), [true]);
  const second = dkimKeyPair('ed25519');
  const reloaded = nextReload();
  await writeFile(join(s.dir, 'com.key'), await noShorter(join(s.dir, 'com.key'), second.privateKey));
  assert.equal((await reloaded).ok, true);
  const copy = await delivered();
  assert.match(copy.toString(), /^DKIM-Signature: v=1; a=ed25519-sha256;/);
  assert.deepEqual(await verifyDkim(copy, record(second)), [true]);
  first = second;
});

for (const [how, breakIt] of [
  ['replaced by something that is not a key', async (file: string) => writeFile(file, await noShorter(file, 'not a key\n'))],
  ['removed', (file: string) => rm(file)],
] as const) {
  test(`a key file ${how}: the reload is refused naming it, and mail is still signed with the key the server had`, async () => {
    assert.deepEqual(await verifyDkim(await delivered(), record(first)), [true]); // the running generation has read it
    const file = join(s.dir, 'com.key');
    const refused = nextReload();
    await breakIt(file);
    const outcome = await refused;
    assert.equal(outcome.ok, false);
    assert.match(outcome.errors.join('\n'), new RegExp(`${file.replace(/[.]/g, '\\.')}: delivery\\.dkim\\.com\\.privateKey: (not a PEM private key|cannot be read \\(ENOENT\\))`));
    assert.doesNotMatch(outcome.errors.join('\n'), /PRIVATE KEY|not a key/);
    assert.deepEqual(await verifyDkim(await delivered(), record(first)), [true]);
    const restored = nextReload();
    await writeFile(file, await noShorter(file, first.privateKey));
    assert.equal((await restored).ok, true);
  });
}
