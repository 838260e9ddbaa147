// A script's reply text reaches the client as one line: line breaks of any kind (CR, LF, NEL, U+2028/2029)
// and other controls become spaces, so a verdict cannot split the reply (a forged "250" after its 550) nor
// carry terminal controls to whoever reads the client's transcript. Real SMTP on 127.0.0.1.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { SmtpTestClient } from '../helpers/smtp-client.ts';
import { configYaml, testListener } from '../helpers/config.ts';

test('verdict texts with CR LF, NEL, C1 controls and Unicode line separators stay one clean line', async () => {
  const server = await startTestServer({
    config: configYaml({ localDomains: ['example.com'], listeners: [testListener('in', { tls: { mode: 'none' } })] }),
    scripts: {
      'rcptto.ts': `const TEXTS = {
  crlf: 'No\\r\\n250 2.1.5 forged',
  nel: 'No\\u0085250 forged',
  c1: 'No\\u009b31m red',
  ls: 'No\\u2028250 forged\\u2029end',
};
export default function (ctx) { return reject(TEXTS[ctx.address.localPart]); }`,
    },
  });
  try {
    const c = await SmtpTestClient.connect(server.port('in'));
    await c.hello();
    assert.equal((await c.command('MAIL FROM:<a@example.org>')).code, 250);
    const expected: Record<string, string> = {
      crlf: '550 5.7.1 No 250 2.1.5 forged', nel: '550 5.7.1 No 250 forged', c1: '550 5.7.1 No 31m red', ls: '550 5.7.1 No 250 forged end',
    };
    for (const [local, line] of Object.entries(expected)) {
      const r = await c.command(`RCPT TO:<${local}@example.com>`);
      assert.equal(r.text, line, local);
    }
    // Nothing else arrived: the next command's reply is its own.
    assert.equal((await c.command('NOOP')).code, 250);
    await c.quit();
  } finally {
    await server.stop();
  }
});
