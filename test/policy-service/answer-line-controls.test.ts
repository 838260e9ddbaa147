// The `policy answer` line carries what Postfix passed on from its client (an SMTPUTF8 sender may hold C1
// controls or bidi overrides) or what any local client of the service sent: such characters are written as
// \u{…} (JSON escapes C0 controls only; U+009B is a terminal's CSI) and a value of any length is cut.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';
import { until } from '../helpers/wait.ts';

const UNSHOWABLE = /[\u0080-\u009f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;

test('a refused request with C1 controls and bidi overrides in its attributes: none reach the log line', async () => {
  const s = await startTestServer({
    config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
    scripts: { 'rcptto.ts': 'export default () => reject();' },
  });
  try {
    const c = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
    const answer = await c.ask(rcptRequest({
      sender: 'a\u009b2J\u202eevil@example.org', recipient: `b\u0085${'r'.repeat(5000)}@elsewhere.example`,
      client_name: 'host\u2066.example.org', queue_id: 'Q\u009b1', protocol_state: 'RCPT',
    }));
    assert.match(answer, /^action=5/);
    c.close();
    await until('the policy answer line', () => s.logs.some((l) => l.msg === 'policy answer' && l.decision === 'reject'));
    const line = s.logs.find((l) => l.msg === 'policy answer' && l.decision === 'reject')!;
    assert.doesNotMatch(JSON.stringify(line), UNSHOWABLE, JSON.stringify(line));
    assert.equal(line.sender, 'a\\u{9b}2J\\u{202e}evil@example.org');
    assert.ok(String(line.recipient).length < 300, 'a 5000-character recipient is cut');
  } finally { await s.stop(); }
});
