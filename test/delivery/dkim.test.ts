// DKIM signing of outbound mail: the key a predelivery verdict names, else the sender domain's default (for a
// logged-in client's mail), else none; RSA and Ed25519. The next hop (a real SMTP sink) receives messages that dkimpy (python3-dkim, an
// independent verifier, given the public keys directly) verifies, and that fail once a signed header changes.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery, deliveredCopy } from '../helpers/dkim-delivery.ts';
import { submitMessage } from '../helpers/smtp-client.ts';
import { useScratchDir } from '../helpers/scratch.ts';
import { loadDkimKey } from '../../engine/delivery/dkim.ts';
import type { DeliveryConfig } from '../../engine/config/schema.ts';

const scratch = useScratchDir('postern-dkim-');

const PREDELIVERY = `
export default (ctx) => {
  if (ctx.message.sender.endsWith('@example.org')) return deliver({ dkim: 'org-ed25519' });
  if (ctx.message.sender.startsWith('unsigned@')) return deliver({ dkim: null });
  if (ctx.message.sender.startsWith('nokey@')) return deliver({ dkim: 'no-such-key' });
  if (ctx.message.sender.startsWith('proto@')) return deliver({ dkim: 'constructor' });
  if (ctx.message.sender.startsWith('relayed@')) return deliver({ dkim: 'com-rsa' });
};`;

const setup = useSigningDelivery({
  'com-rsa': { type: 'rsa', domain: 'example.com', selector: 'rsa2026', senderDomains: ['Example.COM'] },
  'org-ed25519': { type: 'ed25519', domain: 'example.org', selector: 'ed2026' },
}, { 'rcptto.ts': 'export default () => accept();', 'predelivery.ts': PREDELIVERY });

const MESSAGE = 'From: Someone <someone@example.com>\r\nTo: <friend@example.net>\r\nSubject: signed\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nHello.\r\n.dot line\r\n';

const delivered = (from: string): Promise<Buffer> =>
  deliveredCopy(setup.server, setup.sink, from, ['friend@example.net'], MESSAGE.replace('someone@example.com', from));

test('the sender domain\'s default key (RSA) signs; the next hop\'s copy verifies with dkimpy, and fails once a signed header changes', async () => {
  const data = await delivered('someone@example.com');
  const text = data.toString();
  assert.match(text, /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com;[^]*? s=rsa2026;/);
  assert.match(text, /^DKIM-Signature:[^]*?\r\nReceived: from client\.example/, 'the signature first, then our Received header');
  assert.deepEqual(await verifyDkim(data, setup.records), [true]);
  assert.deepEqual(await verifyDkim(Buffer.from(text.replace('Subject: signed', 'Subject: changed')), setup.records), [false]);
  assert.deepEqual(await verifyDkim(Buffer.from(text.replace('Hello.', 'Hullo.')), setup.records), [false], 'the body is covered too');
  assert.doesNotMatch(text.slice(0, text.indexOf('\r\nReceived:')), /[;\s]l=/, 'all of it: no l= tag, so nothing can be appended');
  assert.deepEqual(await verifyDkim(Buffer.from(text + 'Appended.\r\n'), setup.records), [false]);
});

test('a predelivery verdict chooses the Ed25519 key; dkimpy verifies it and fails on a changed From', async () => {
  const data = await delivered('someone@example.org');
  const text = data.toString();
  assert.match(text, /^DKIM-Signature: v=1; a=ed25519-sha256;[^]*?d=example\.org;/);
  assert.deepEqual(await verifyDkim(data, setup.records), [true]);
  assert.deepEqual(await verifyDkim(Buffer.from(text.replace('From: Someone <someone@example.org>', 'From: Someone <ceo@example.org>')), setup.records), [false]);
});

test('deliver({ dkim: null }) sends unsigned, whatever the default; so is mail from a domain without a key', async () => {
  for (const from of ['unsigned@example.com', 'someone@elsewhere.test']) {
    const data = await delivered(from);
    assert.ok(!data.toString().includes('DKIM-Signature'), `${from}: unsigned`);
  }
});

test('mail a client sent without logging in is not signed by its sender domain\'s key (anyone may write a sender of ours), and says so; a key the script names signs it', async () => {
  const { server: s, sink } = setup;
  const sent = async (from: string): Promise<{ id: string; data: string }> => {
    const id = await submitMessage(s.port(), from, ['friend@example.net'], MESSAGE.replace('someone@example.com', from)); // no AUTH
    const e = await s.nextAttempt((x) => x.id === id, { past: true });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    return { id, data: sink.messages.find((m) => m.data.toString().includes(` id ${id}`))!.data.toString() };
  };
  const forged = await sent('ceo@example.com');
  assert.ok(!forged.data.includes('DKIM-Signature'), 'an internet client\'s ceo@example.com went out unsigned');
  assert.ok(s.logs.some((l) => l.id === forged.id && l.dkim === 'unsigned' && /not DKIM-signed: its client did not log in/.test(String(l.msg))), 'and the log says why');
  const relayed = await sent('relayed@example.com');
  assert.match(relayed.data, /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com;/);
  assert.deepEqual(await verifyDkim(Buffer.from(relayed.data), setup.records), [true]);
});

test('a verdict naming a key that does not exist defers the delivery (4.7.0), nothing is sent', async () => {
  const { server: s, sink } = setup;
  const before = sink.messages.length;
  const id = await s.send('nokey@example.com', ['friend@example.net'], MESSAGE);
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'temporary');
  assert.match(e.outcomes[0]!.reply, /no DKIM key named "no-such-key" under delivery\.dkim/);
  // A name of Object.prototype's is no key either (the table is looked up by own names only).
  const proto = await s.send('proto@example.com', ['friend@example.net'], MESSAGE);
  const p = await s.nextAttempt((x) => x.id === proto, { past: true });
  assert.match(p.outcomes[0]!.reply, /no DKIM key named "constructor" under delivery\.dkim/);
  assert.equal(sink.messages.length, before);
});

test('key files: an EC key and a short RSA key are refused with file and key name, and nothing of the key is shown', async () => {
  const ec = execFileSync('openssl', ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const short = execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:512'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const delivery = (file: string) => ({ dkim: { k: { domain: 'example.com', selector: 's', privateKey: file, senderDomains: [] } } }) as unknown as DeliveryConfig;
  const ecFile = await scratch.file('ec.key', ec);
  await assert.rejects(loadDkimKey(delivery(ecFile), 'k'), { message: `${ecFile}: delivery.dkim.k.privateKey: a ec key; DKIM signs with RSA or Ed25519 keys` });
  const shortFile = await scratch.file('short.key', short);
  await assert.rejects(loadDkimKey(delivery(shortFile), 'k'), { message: `${shortFile}: delivery.dkim.k.privateKey: an RSA key of 512 bits is too short for DKIM (at least 1024; RFC 8301)` });
  const text = await scratch.file('text.key', 'not a key\n');
  await assert.rejects(loadDkimKey(delivery(text), 'k'), { message: `${text}: delivery.dkim.k.privateKey: not a PEM private key` });
});
