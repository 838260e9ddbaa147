// A table keyed by domain or address finds an IDN however either side spells it. An ASCII transaction carries
// `user@xn--bcher-kva.example`, an SMTPUTF8 one `user@bücher.example` (engine/smtp/envelope-path.ts): a deny entry
// written in U-labels matched only the second, one in A-labels only the first, so a client passed it by choosing
// whether its MAIL FROM said SMTPUTF8. Keys are now also indexed by their A-labels (IDNA-mapped, lower case), with a
// UTF-8 local part in NFC as the envelope has it. Real client: python smtplib, with and without SMTPUTF8.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadTable } from '../../engine/policy/lookup-tables.ts';
import { startTestServer, type TestServer } from '../helpers/postern.ts';

const run = promisify(execFile);
let s: TestServer;

before(async () => {
  s = await startTestServer({
    config: `
localDomains: [example.com]
tables: { blocked: ./blocked }
listeners:
  - { name: mx, listen: 127.0.0.1:0, reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
    // U-labels, A-labels in upper case, and an address whose local part is written decomposed (NFD: e + U+0301).
    files: { blocked: 'Bücher.example  REJECT\nXN--MNCHEN-3YA.example  REJECT\njose\u0301@xn--caf-dma.example  REJECT\n' },
    scripts: {
      'rcptto.ts': `export default (ctx) => {
  const hit = lookup('blocked', ctx.address.domain) ?? lookup('blocked', ctx.address.address);
  return hit ? reject('blocked ' + ctx.address.address) : accept();
};`,
    },
  });
});
after(() => s?.stop());

/** Each recipient's RCPT reply from python smtplib, in one transaction with or without SMTPUTF8. */
async function rcptReplies(recipients: string[], smtputf8: boolean, server: TestServer = s): Promise<string[]> {
  const py = `
import smtplib, sys, json
s = smtplib.SMTP('127.0.0.1', int(sys.argv[1]), timeout=60)
s.ehlo('client.example')
s.mail('a@sender.example', ['SMTPUTF8'] if sys.argv[2] == '1' else [])
for r in json.loads(sys.argv[3]):
    c, m = s.rcpt(r); print(c, m.decode())
s.quit()
`;
  const { stdout } = await run('python3', ['-c', py, String(server.port('mx')), smtputf8 ? '1' : '0', JSON.stringify(recipients)]);
  return stdout.trim().split('\n');
}

test('an ASCII transaction\'s A-labels find a deny entry written in U-labels, and the reverse', async () => {
  assert.deepEqual(await rcptReplies(['u@xn--bcher-kva.example', 'u@xn--mnchen-3ya.example', 'jose@xn--caf-dma.example', 'u@open.example'], false), [
    '550 5.7.1 blocked u@xn--bcher-kva.example',
    '550 5.7.1 blocked u@xn--mnchen-3ya.example',
    '250 2.1.5 Accepted',
    '250 2.1.5 Accepted',
  ]);
});

test('an SMTPUTF8 transaction\'s U-labels (and fullwidth dots) find the same entries; a composed local part finds the decomposed key', async () => {
  assert.deepEqual(await rcptReplies(['u@bücher.example', 'u@münchen\u3002example', 'jos\u00e9@café.example', 'jose@café.example'], true), [
    '550 5.7.1 blocked u@bücher.example',
    '550 5.7.1 blocked u@münchen.example',
    '550 5.7.1 blocked jos\u00e9@café.example',
    '250 2.1.5 Accepted',
  ]);
});

test('one domain written twice in a table, as U-labels and as A-labels, is a duplicate key at the later line', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'postern-table-'));
  try {
    await writeFile(join(dir, 'routes'), 'bücher.example relay:a\n# the same domain\nxn--bcher-kva.example relay:b\n');
    await assert.rejects(loadTable('routes', join(dir, 'routes')), /routes:3: duplicate key/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

// The same holds for a script's own keys: `domain` is in the transaction's form (A-labels or U-labels), so a rate()
// per recipient domain keyed by it counted bücher.example twice over, once per form. `asciiDomain` is one key.
test('a rate() per recipient domain keyed by asciiDomain counts ASCII and SMTPUTF8 transactions as one domain', async () => {
  const limited = await startTestServer({
    config: `
localDomains: [bücher.example]
listeners:
  - { name: mx, listen: 127.0.0.1:0, reverseDns: false, limits: { greetingDelayMs: 0 } }
`,
    scripts: {
      'rcptto.ts': `export default async (ctx) => {
  const r = await rate('rcpt-domain:' + ctx.address.asciiDomain, 2, 3600);
  return r.allowed ? accept() : reject('limit for ' + ctx.address.asciiDomain + ' (' + ctx.address.domain + ')');
};`,
    },
  });
  try {
    assert.deepEqual([
      ...await rcptReplies(['a@xn--bcher-kva.example'], false, limited),
      ...await rcptReplies(['b@b\u00fccher.example'], true, limited),
      ...await rcptReplies(['c@XN--BCHER-KVA.example'], false, limited),
      ...await rcptReplies(['d@B\u00dcCHER.example'], true, limited),
    ], [
      '250 2.1.5 Accepted',
      '250 2.1.5 Accepted',
      '550 5.7.1 limit for xn--bcher-kva.example (xn--bcher-kva.example)',
      '550 5.7.1 limit for xn--bcher-kva.example (b\u00fccher.example)',
    ]);
  } finally {
    await limited.stop();
  }
});
