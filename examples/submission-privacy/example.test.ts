// submission-privacy, with this folder's postern.yaml and scripts: alice submits with her client certificate;
// the next hop (a test SMTP server standing in for the recipient's MX) gets the message without the laptop's
// trace fields, with the certificate named, signed for example.com — and dkimpy (python3-dkim, independent of
// Postern) verifies the signature with the published key, and refuses it once a signed header is changed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startExample, smtpClient, type ExampleServer } from '../../test/helpers/example.ts';
import { startSink, type Sink } from '../../test/helpers/sink.ts';
import { dkimKeyPair, verifyDkim, type DkimKeyPair } from '../../test/helpers/dkim.ts';
import { recordAttempts, type AttemptLog } from '../../test/helpers/attempts.ts';
import { useScratchDir } from '../../test/helpers/scratch.ts';

const scratch = useScratchDir('postern-privacy-');
let ex: ExampleServer;
let mx: Sink;
let key: DkimKeyPair;
let attempts: AttemptLog;

before(async () => {
  mx = await startSink();
  key = dkimKeyPair('rsa');
  const keyFile = await scratch.file('example-com.key', key.privateKey);
  ex = await startExample('submission-privacy', () => ({}), (doc) => {
    // What only the test knows: where the key is, and that the next hop is the test's server.
    doc.setIn(['delivery', 'enabled'], true);
    doc.setIn(['delivery', 'dkim', 'example-com', 'privateKey'], keyFile);
    doc.setIn(['delivery', 'route'], { smarthost: { host: '127.0.0.1', port: mx.port } });
  });
  attempts = recordAttempts(ex.running.queue!);
});
after(async () => {
  await ex?.stop();
  await mx?.close();
});

const LAPTOP_MESSAGE = [
  'Received: from [192.168.1.20] (laptop.home.lan [192.168.1.20])',
  '\tby laptop.home.lan (Postfix) with ESMTP id 4AB12; Mon, 1 Jan 2024 09:00:00 +0100',
  'X-Originating-IP: [192.168.1.20]',
  'User-Agent: Mozilla Thunderbird',
  'Authentication-Results: submit.example.com; auth=pass smtp.auth=ceo@example.com',
  'From: Alice <alice@example.com>',
  'To: <friend@example.net>',
  'Subject: Lunch',
  'Date: Mon, 1 Jan 2024 09:00:00 +0100',
  'Message-ID: <lunch-1@laptop.home.lan>',
  '',
  'Noon at the usual place?',
  '',
].join('\r\n');

test('the laptop\'s trace is gone, the certificate is named, and the copy the next hop got verifies with dkimpy', async () => {
  const c = await smtpClient(ex, { client: 'alice' });
  const r = await c.sendMail('alice@example.com', ['friend@example.net'], LAPTOP_MESSAGE);
  await c.quit();
  assert.equal(r.code, 250, r.text);
  const id = /queued as (\w+)/.exec(r.text)![1]!;
  const e = await attempts.next((x) => x.id === id, { past: true, timeoutMs: 15_000 });
  assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);

  const got = mx.messages.find((m) => m.data.toString().includes(` id ${id}`))!;
  const text = got.data.toString();
  const head = text.slice(0, text.indexOf('\r\n\r\n') + 2);
  // Order: the signature, Postern's Received (the only one), the fields the script added, the client's rest.
  assert.match(head, /^DKIM-Signature: v=1; a=rsa-sha256; c=relaxed\/relaxed; d=example\.com;[^]*? s=submit2026;/);
  assert.match(head, /\r\nReceived: from client\.example \([^)]* \[127\.0\.0\.1\]\)\r\n\t\(using TLSv1\.[23] with cipher [^)]+\)\r\n\t\(Client CN "alice", Issuer "[^"]+" \(verified OK\)\)\r\n\t\(Authenticated sender: alice@example\.com\)\r\n\tby submit\.example\.com \(Postern\) with ESMTPSA /);
  assert.equal(head.match(/^Received:/gm)?.length, 1, 'only Postern\'s Received header is left');
  for (const gone of ['192.168.1.20', 'laptop.home.lan (Postfix)', 'X-Originating-IP', 'Thunderbird', 'ceo@example.com']) {
    assert.ok(!head.includes(gone), `${gone} is gone`);
  }
  assert.match(head, new RegExp(`\\r\\nX-Postern-Client-Cert: ${ex.pki.clients.alice.fingerprintSha256}\\r\\n` +
    'Authentication-Results: submit\\.example\\.com; auth=pass \\(TLS client certificate\\) smtp\\.auth=alice@example\\.com\\r\\n' +
    'From: Alice <alice@example\\.com>\\r\\n'));
  assert.ok(text.endsWith('\r\n\r\nNoon at the usual place?\r\n'));

  const records = { 'submit2026._domainkey.example.com.': key.txt };
  assert.deepEqual(await verifyDkim(got.data, records), [true]);
  assert.deepEqual(await verifyDkim(Buffer.from(text.replace('Subject: Lunch', 'Subject: Dinner')), records), [false]);
  assert.deepEqual(await verifyDkim(Buffer.from(text.replace('From: Alice <alice@example.com>', 'From: Alice <ceo@example.com>')), records), [false]);
});

test('a message with two From: fields, or none, or a colleague\'s From:, is refused at DATA, not signed', async () => {
  for (const [head, refusal] of [
    ['From: Alice <alice@example.com>\r\nFrom: <ceo@bank.example>\r\n', '550 5.6.0 Message must have exactly one From: header field, not 2'],
    ['', '550 5.6.0 Message must have exactly one From: header field, not 0'],
    ['From: The CEO <ceo@example.com>\r\n', '550 5.7.1 <ceo@example.com>: From: header address rejected: not owned by user alice@example.com'],
  ] as const) {
    const c = await smtpClient(ex, { client: 'alice' });
    const r = await c.sendMail('alice@example.com', ['friend@example.net'], `${head}To: <friend@example.net>\r\nSubject: s\r\n\r\nbody\r\n`);
    await c.quit();
    assert.equal(r.text, refusal);
  }
});
