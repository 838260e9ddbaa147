// Our Received header is 7-bit for a message that is not SMTPUTF8 (RFC 5322; RFC 6531 allows UTF-8 only
// in an SMTPUTF8 transaction): a UTF-8 HELO name that is a valid IDN is written as its A-labels (xn--…),
// any other non-ASCII character of the HELO, of a certificate's subject or issuer, as "?" (as Postfix's
// printable()). An SMTPUTF8 transaction keeps the UTF-8 and says so: `with UTF8SMTP`, `UTF8SMTPS`
// (RFC 6531 §3.7.7). Real client: python smtplib sending UTF-8 commands, STARTTLS with a client
// certificate whose names are UTF-8; the spooled header is read back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { makeTestPki, type TestPki } from '../helpers/pki.ts';
import { createCertificateAuthority, issueClientCertificate } from '../../engine/certificates/index.ts';

const run = promisify(execFile);
let server: TestServer;
let pki: TestPki;
let clientCert = '';
let clientKey = '';

before(async () => {
  pki = await makeTestPki();
  const root = await createCertificateAuthority({ commonName: 'Ünïcode Root', keyType: 'ecdsa' });
  const leaf = await issueClientCertificate(root, { commonName: 'Zoë Müller', keyType: 'ecdsa' });
  server = await startTestServer({
    files: { 'root.crt': root.cert },
    config: `
localDomains: [example.com]
listeners:
  - name: mx
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request, caFiles: [root.crt] }
    limits: { greetingDelayMs: 0 }
`,
  });
  clientCert = join(server.dir, 'client.crt');
  clientKey = join(server.dir, 'client.key');
  await writeFile(clientCert, leaf.cert);
  await writeFile(clientKey, leaf.key);
});
after(() => server?.stop());

/**
 * One python smtplib session: EHLO `helo` (UTF-8 on the wire), STARTTLS with the client certificate if
 * `tls`, then one message per entry of `smtputf8` (MAIL FROM with SMTPUTF8 or not). The spooled Received
 * headers, raw bytes.
 */
async function receivedHeaders(helo: string, tls: boolean, smtputf8: boolean[]): Promise<Buffer[]> {
  const py = `
import smtplib, ssl, sys, json
helo, tls, utf8s = sys.argv[2], sys.argv[3] == '1', json.loads(sys.argv[6])
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.command_encoding = 'utf-8'
s.ehlo(helo)
if tls:
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    ctx.check_hostname = False
    ctx.load_cert_chain(sys.argv[5], sys.argv[7])
    s.starttls(context=ctx)
    s.ehlo(helo)
for utf8 in utf8s:
    code, msg = s.mail('sender@example.org', ['SMTPUTF8'] if utf8 else [])
    assert code == 250, msg
    code, msg = s.rcpt('b@example.com')
    assert code == 250, msg
    code, msg = s.data(b'Subject: hi\\r\\n\\r\\nhello\\r\\n')
    assert code == 250, msg
    print(msg.decode())
s.quit()
`;
  const { stdout } = await run('python3', ['-c', py, String(server.port('mx')), helo, tls ? '1' : '0', pki.ca.cert, clientCert, JSON.stringify(smtputf8), clientKey]);
  const ids = stdout.trim().split('\n').map((line) => /queued as (\S+)/.exec(line)![1]!);
  return Promise.all(ids.map((id) => server.runtime.spool.readMessage(id)));
}

/** Our Received header (the first field) of a spooled message's bytes. */
function firstField(head: Buffer): Buffer {
  const text = head.toString('latin1');
  const end = text.search(/\r\n(?![ \t])/);
  return head.subarray(0, end);
}

const isSevenBit = (b: Buffer): boolean => b.every((byte) => byte < 0x80);

test('not SMTPUTF8, over TLS with a certificate named in UTF-8: an IDN HELO as its A-label, the names with "?", 7-bit', { timeout: 120_000 }, async () => {
  const [head] = await receivedHeaders('mx.bücher.example', true, [false]);
  const received = firstField(head!);
  assert.ok(isSevenBit(received), received.toString());
  const text = received.toString();
  assert.match(text, /^Received: from mx\.xn--bcher-kva\.example \(unknown \[127\.0\.0\.1\]\)/);
  assert.match(text, /\(Client CN "Zo\? M\?ller", Issuer "\?n\?code Root" \(verified OK\)\)/);
  assert.match(text, /with ESMTPS id /);
});

test('not SMTPUTF8: a UTF-8 HELO that is no domain name has "?" for each non-ASCII character', { timeout: 120_000 }, async () => {
  const [head] = await receivedHeaders('bad_näme', false, [false]);
  const received = firstField(head!);
  assert.ok(isSevenBit(received), received.toString());
  assert.match(received.toString(), /^Received: from bad_n\?me \(unknown/);
});

test('SMTPUTF8 keeps the UTF-8 and says UTF8SMTPS; the next message of the same session, not SMTPUTF8, is 7-bit again', { timeout: 120_000 }, async () => {
  const [utf8, plain] = await receivedHeaders('mx.bücher.example', true, [true, false]);
  const first = firstField(utf8!).toString('utf8');
  assert.match(first, /^Received: from mx\.bücher\.example \(/);
  assert.match(first, /Client CN "Zoë Müller", Issuer "Ünïcode Root"/);
  assert.match(first, /with UTF8SMTPS id /);
  const second = firstField(plain!);
  assert.ok(isSevenBit(second), second.toString());
  assert.match(second.toString(), /from mx\.xn--bcher-kva\.example .*with ESMTPS id /s);
});
