// Two DKIM signatures on one delivery, an RSA and an Ed25519 key (RFC 8463 §4: a verifier that does not know
// Ed25519 still finds the RSA signature it checks): by listing the sender's domain under both keys, or by a
// predelivery verdict naming both. The next hop's copy carries one signature per key, in the order given, and
// dkimpy (an independent verifier, given the public keys directly) verifies each; a changed signed header
// breaks both. A verdict naming a key twice fails closed, and `dkim: []` sends unsigned.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery, deliveredCopy } from '../helpers/dkim-delivery.ts';
import { parseConfig } from '../../engine/config/load-config.ts';

const PREDELIVERY = `
export default (ctx) => {
  if (ctx.message.sender.startsWith('both@')) return deliver({ dkim: ['org-ed25519', 'org-rsa'] });
  if (ctx.message.sender.startsWith('twice@')) return deliver({ dkim: ['org-rsa', 'org-rsa'] });
  if (ctx.message.sender.startsWith('none@')) return deliver({ dkim: [] });
};`;

const setup = useSigningDelivery({
  'com-rsa': { type: 'rsa', domain: 'example.com', selector: 'rsa2026', senderDomains: ['example.com'] },
  'com-ed25519': { type: 'ed25519', domain: 'example.com', selector: 'ed2026', senderDomains: ['EXAMPLE.com'] },
  'org-rsa': { type: 'rsa', domain: 'example.org', selector: 'rsa2026' },
  'org-ed25519': { type: 'ed25519', domain: 'example.org', selector: 'ed2026' },
}, { 'rcptto.ts': 'export default () => accept();', 'predelivery.ts': PREDELIVERY });

const MESSAGE = 'From: Someone <FROM>\r\nTo: <friend@example.net>\r\nSubject: signed twice\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n\r\nHello.\r\n';

const delivered = (from: string): Promise<Buffer> =>
  deliveredCopy(setup.server, setup.sink, from, ['friend@example.net'], MESSAGE.replace('FROM', from));

/** The a= and s= of each DKIM-Signature field, top first. */
function signatures(text: string): string[] {
  const header = text.slice(0, text.indexOf('\r\n\r\n'));
  return [...header.matchAll(/^DKIM-Signature:[^]*?(?=\r\n[^ \t])/gm)].map((m) => {
    const field = m[0].replace(/\r\n[ \t]+/g, ' ');
    return `${/ a=([^;]+);/.exec(field)![1]} ${/ s=([^;]+);/.exec(field)![1]}`;
  });
}

test('a domain listed under an RSA and an Ed25519 key is signed with both, in the order the keys are declared; dkimpy verifies each', async () => {
  const data = await delivered('someone@example.com');
  const text = data.toString();
  assert.deepEqual(signatures(text), ['rsa-sha256 rsa2026', 'ed25519-sha256 ed2026']);
  assert.deepEqual(await verifyDkim(data, setup.records), [true, true]);
  assert.deepEqual(await verifyDkim(Buffer.from(text.replace('Subject: signed twice', 'Subject: changed')), setup.records), [false, false]);
  // Each signature stands alone: without the other one's record, the other still verifies.
  const onlyRsa = { ...setup.records };
  delete onlyRsa['ed2026._domainkey.example.com.'];
  assert.deepEqual(await verifyDkim(data, onlyRsa), [true, false]);
});

test('a verdict naming two keys signs with both, in its order; naming one twice fails closed (deferred, nothing sent); [] sends unsigned', async () => {
  const both = await delivered('both@example.org');
  assert.deepEqual(signatures(both.toString()), ['ed25519-sha256 ed2026', 'rsa-sha256 rsa2026']);
  assert.deepEqual(await verifyDkim(both, setup.records), [true, true]);

  const none = await delivered('none@example.com');
  assert.ok(!none.toString().includes('DKIM-Signature'), 'dkim: [] overrides the domain\'s keys');

  const { server: s, sink } = setup;
  const before = sink.messages.length;
  const id = await s.send('twice@example.org', ['friend@example.net'], MESSAGE.replace('FROM', 'twice@example.org'));
  const e = await s.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'temporary');
  assert.equal(sink.messages.length, before);
});

test('configuration: a domain under more than 8 keys is refused at the line of the ninth', () => {
  const keys = Array.from({ length: 9 }, (_, i) => `    k${i}: { domain: example.com, selector: s${i}, privateKey: /k${i}, senderDomains: [example.com] }`).join('\n');
  assert.throws(() => parseConfig(`
listeners:
  - { name: a, listen: "127.0.0.1:25" }
delivery:
  dkim:
${keys}
`, 'postern.yaml', '/tmp'), /postern\.yaml:14:\d+: delivery\.dkim\.k8\.senderDomains\[0\]: example\.com is listed under more than 8 keys \(one signature each\): delivery\.dkim\.k0, [^]*delivery\.dkim\.k7 already sign it/);
});
