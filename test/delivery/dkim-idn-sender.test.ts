// Which DKIM key signs is chosen by the envelope sender's domain (`senderDomains`). An ASCII transaction carries
// `alice@xn--bcher-kva.example`, an SMTPUTF8 one `alice@bücher.example` (engine/smtp/envelope-path.ts): a key
// listing the domain one way signed only the transactions that spelled it that way, and the others went unsigned
// (DMARC then failed for the domain's own mail, depending on the client). Domains now compare by their A-labels.
// Real next hop; dkimpy verifies the signature.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { verifyDkim } from '../helpers/dkim.ts';
import { useSigningDelivery, deliveredCopy, DKIM_LOGIN } from '../helpers/dkim-delivery.ts';
import { SmtpTestClient, authPlainAnyPassword } from '../helpers/smtp-client.ts';
import { parseConfig } from '../../engine/config/load-config.ts';

const setup = useSigningDelivery({
  ulabels: { type: 'ed25519', domain: 'xn--bcher-kva.example', selector: 'sel', senderDomains: ['Bücher.example'] },
  alabels: { type: 'ed25519', domain: 'xn--mnchen-3ya.example', selector: 'sel', senderDomains: ['XN--MNCHEN-3YA.example'] },
});

const message = (from: string): string => `From: <${from}>\r\nTo: <bob@example.net>\r\nSubject: hi\r\n\r\nhello\r\n`;

function assertSigned(copy: Buffer, domain: string): void {
  assert.match(copy.toString(), new RegExp(`^DKIM-Signature:[^]*?d=${domain.replace(/\./g, '\\.')};`, 'm'), `${domain}: signed`);
}

test('an ASCII transaction\'s A-label sender is signed by the key that lists its domain in U-labels', async () => {
  const copy = await deliveredCopy(setup.server, setup.sink, 'alice@xn--bcher-kva.example', ['bob@example.net'], message('alice@xn--bcher-kva.example'));
  assertSigned(copy, 'xn--bcher-kva.example');
  assert.deepEqual(await verifyDkim(copy, setup.records), [true]);
});

test('an SMTPUTF8 transaction\'s U-label sender is signed by the key that lists its domain in A-labels', async () => {
  const c = await SmtpTestClient.connect(setup.server.port());
  await c.hello();
  assert.equal((await c.command(authPlainAnyPassword(DKIM_LOGIN))).code, 235);
  assert.equal((await c.command('MAIL FROM:<alice@münchen.example> SMTPUTF8')).code, 250);
  assert.equal((await c.command('RCPT TO:<bob@example.net>')).code, 250);
  assert.equal((await c.command('DATA')).code, 354);
  const r = await c.command(`${message('alice@xn--mnchen-3ya.example')}.`);
  await c.quit();
  const id = /queued as ([0-9a-z]+)/.exec(r.text)![1]!;
  const e = await setup.server.nextAttempt((x) => x.id === id, { past: true });
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
  const copy = setup.sink.messages.find((m) => m.data.toString().includes(` id ${id}`))!.data;
  assertSigned(copy, 'xn--mnchen-3ya.example');
  assert.deepEqual(await verifyDkim(copy, setup.records), [true]);
});

test('one domain listed twice under one key, as U-labels and as A-labels, is refused at its line (a mistake for another domain)', () => {
  assert.throws(() => parseConfig(`
listeners:
  - { name: a, listen: "127.0.0.1:25" }
delivery:
  dkim:
    one: { domain: xn--bcher-kva.example, selector: a, privateKey: /k1, senderDomains: [Bücher.example, XN--BCHER-KVA.example.] }
`, 'postern.yaml', '/tmp'), /postern\.yaml:6:\d+: delivery\.dkim\.one\.senderDomains\[1\]: XN--BCHER-KVA\.example\. is listed twice under delivery\.dkim\.one/);
});
