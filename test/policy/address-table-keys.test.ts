// A table keyed by client address finds the client however the key is spelled: an administrator copies
// `::ffff:127.0.0.1` from `ss` on a dual-stack socket, or writes `0:0:0:0:0:0:0:1` or `2001:DB8::1`, while
// scripts have the client as `127.0.0.1` and `::1` (one spelling, canonicalIp). Before, such a deny entry
// matched no client. Real connections to a `[::]` listener, over IPv4 (mapped) and IPv6 loopback.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTable } from '../../engine/policy/lookup-tables.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';

let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
localDomains: [example.com]
tables: { deny: ./deny }
listeners:
  - { name: mx, listen: '[::]:0', reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
    files: { deny: '::FFFF:127.0.0.1  REJECT\n0:0:0:0:0:0:0:1  REJECT\n' },
    scripts: { 'mailfrom.ts': `export default (ctx) => lookup('deny', ctx.connection.remoteAddress) === 'REJECT' ? reject('denied ' + ctx.connection.remoteAddress) : accept();` },
  });
});
after(() => s?.stop());

for (const host of ['127.0.0.1', '::1']) {
  test(`a client reaching [::] over ${host} is found under its table key in another spelling`, async () => {
    const c = await SmtpTestClient.connect(s.port('mx'), { host });
    try {
      await c.hello();
      assert.match((await c.command('MAIL FROM:<a@elsewhere.example>')).text, new RegExp(`^550 5\\.7\\.1 denied ${host.replace(/\./g, '\\.')}$`));
    } finally {
      await c.quit();
    }
  });
}

test('one address written twice in two spellings is a duplicate key, reported at the later line', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-table-'));
  try {
    await writeFile(join(dir, 'deny'), '2001:db8::1 REJECT\n# the same client\n2001:DB8:0:0::1 OK\n');
    await assert.rejects(loadTable('deny', join(dir, 'deny')), /deny:3: duplicate key/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
