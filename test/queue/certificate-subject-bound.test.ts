// A client certificate's subject is the client's to choose, tens of KB if it likes: the queue keeps at most 512
// characters of it (and of its issuer) per message, while the SMTP hooks' scripts see the whole name.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { configYaml, testListener, testServerTls } from '../helpers/config.ts';
import { makeTestPki } from '../helpers/pki.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { startTestServer } from '../helpers/postern.ts';
import { createSelfSignedCertificate } from '../../engine/certificates/index.ts';

const MAIN = fileURLToPath(new URL('../../engine/cli/main.ts', import.meta.url));

test('a 20,000-character certificate subject: scripts see it whole, the queued envelope keeps 512 characters and "..."', { timeout: 90_000 }, async () => {
  const pki = await makeTestPki();
  const name = `device-${'x'.repeat(20_000)}`;
  const device = await createSelfSignedCertificate({ commonName: name });
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.test'], listeners: [testListener('in', { tls: testServerTls(pki, { clientCertificates: 'request' }) })] }),
    scripts: { 'rcptto.ts': `export default (ctx: RcptToContext) => ctx.connection.clientCertificate?.subject.dn === ${JSON.stringify(`CN=${name}`)} ? undefined : reject('not the whole name');` },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('in'));
    await c.hello({ starttls: { ca: await readFile(pki.ca.cert, 'utf8'), cert: device.cert, key: device.key } });
    const r = await c.sendMail('a@example.test', ['b@example.test']);
    assert.equal(r.code, 250, r.text);
    await c.quit();
    const id = /queued as (\w+)/.exec(r.text)![1]!;
    const shown = execFileSync(process.execPath, [MAIN, 'queue', 'show', id, '--json', '-c', join(server.dir, 'postern.yaml')], { timeout: 30_000 }).toString('utf8');
    const envelope = JSON.parse(shown) as { session: { clientCertificate: { subject: string; issuer: string } } };
    const { subject, issuer } = envelope.session.clientCertificate;
    assert.equal(subject, `CN=${name}`.slice(0, 512) + '...');
    assert.equal(issuer, subject, 'self-signed: the issuer is the subject, cut the same way');
  } finally {
    await server.stop();
  }
});
