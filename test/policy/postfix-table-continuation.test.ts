// A postfix-format table as postmap reads it: a line that starts with whitespace continues the entry before it
// (comment and blank lines in between skipped), so a migrated smtpd_sender_login_maps with its long lists of
// addresses loads unchanged. Before, every such table was refused ("no entry to continue", also when there
// was one). Each key's value is compared with what Postfix's own postmap finds in the same file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTable } from '../../engine/policy/lookup-tables.ts';
import { listPins, removePin } from '../../engine/pki/index.ts';
import { needs, run } from '../helpers/example.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { clientTlsOptions, makeTestPki, type TestPki } from '../helpers/pki.ts';

let dir: string;
let pki: TestPki;
let server: TestServer;

const senders = [
  '# sender login map, continued the Postfix way',
  'alice@example.com  alice@example.com,',
  '    sales@example.com,',
  '# a comment inside the entry',
  '',
  '\tinfo@example.com',
  'bob@example.com    bob@example.com',
  'carol@example.com',
  '   carol@example.com',
].join('\n') + '\n';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'postern-continuation-'));
  await writeFile(join(dir, 'main.cf'), ''); // postmap -c needs one
  await writeFile(join(dir, 'senders'), senders);
  pki = await makeTestPki();
  server = await startTestServer({
    files: {
      // The device's further senders on a continuation line.
      devices: `# device: laptop; added 2026-12-01\n${pki.clients.selfsigned.pinBase64Url} carol@example.com\n  sales@example.com\nkeep-me  other\n`,
    },
    config: `
localDomains: [example.com]
tables: { devices: ./devices }
listeners:
  - name: sub
    listen: 127.0.0.1:0
    reverseDns: false
    tls: { mode: starttls, cert: ${pki.server.cert}, key: ${pki.server.key}, clientCertificates: request }
    auth: { mechanisms: [EXTERNAL], required: true }
    certificateIdentity: { pins: devices, autoLogin: true }
    senderLogin: { enforce: true }
    limits: { greetingDelayMs: 0 }
`,
  });
});
after(async () => {
  await server?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('every key has the value postmap finds in the same file', needs('postmap'), async () => {
  const table = await loadTable('senders', join(dir, 'senders'));
  for (const key of ['alice@example.com', 'bob@example.com', 'carol@example.com', 'sales@example.com']) {
    const r = await run('postmap', ['-c', dir, '-q', key, `texthash:${join(dir, 'senders')}`]);
    const postfix = r.code === 0 ? r.stdout.replace(/\n$/, '') : null; // exit 1: not found
    assert.equal(table.get(key), postfix, key);
  }
  assert.equal(table.get('alice@example.com'), 'alice@example.com,    sales@example.com,\tinfo@example.com');
});

test('a continuation with no entry before it is still an error, at its line', async () => {
  await writeFile(join(dir, 'broken'), '# only a comment\n  continued\n');
  await assert.rejects(loadTable('broken', join(dir, 'broken')), { message: `${join(dir, 'broken')}:2: line starts with whitespace but there is no entry to continue` });
});

test('a pin line continued: the device may send as the sender on the next line; pins remove takes both lines', async () => {
  const c = await SmtpTestClient.connect(server.port('sub'));
  await c.hello({ starttls: await clientTlsOptions(pki, 'selfsigned') });
  assert.equal((await c.command('MAIL FROM:<sales@example.com>')).code, 250);
  await c.quit();
  const file = join(server.dir, 'devices');
  assert.deepEqual((await listPins(file)).map((p) => [p.identity, p.senders, p.line, p.lastLine]), [['carol@example.com', ['sales@example.com'], 2, 3]]);
  await removePin(file, { identity: 'carol@example.com' });
  assert.equal(await readFile(file, 'utf8'), 'keep-me  other\n');
});
