// A data script asked by Postfix (real sockets, the policy protocol) has ctx.message as on a listener, as the
// declared DataContext says; Postfix sends no body, so text() fails closed with an error saying so — not the
// script's own TypeError on a ctx.message that was not there.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startTestServer } from '../helpers/postern.ts';
import { PolicyClient, rcptRequest } from './helpers/policy-client.ts';

test('message.text() behind Postfix: a clear error, the failure action, and a script that checks first still decides', async () => {
  const s = await startTestServer({
    config: 'policyServices:\n  - name: main\n    listen: 127.0.0.1:0\n',
    scripts: {
      'data.ts': `
export default async function (ctx) {
  if (ctx.transaction.sender.localPart === 'careful' && ctx.connection.source === 'postfix-policy') return reject('no body to read: ' + typeof ctx.message.text);
  const body = await ctx.message.text(4096);
  if (body.includes('confidential')) return reject('confidential');
}`,
    },
  });
  try {
    const client = await PolicyClient.connect({ port: Number(s.policyAddresses.get('main')!.split(':').pop()) });
    const ask = (sender: string) => client.ask(rcptRequest({ protocol_state: 'END-OF-MESSAGE', sender, size: 1234 }));
    assert.equal(await ask('careful@example.org'), 'action=550 5.7.1 no body to read: function');
    assert.equal(await ask('reader@example.org'), 'action=DEFER_IF_PERMIT Service temporarily unavailable');
    client.close();
    const failure = s.logs.find((l) => String(l.msg).startsWith('policy script data failed'));
    assert.equal(failure?.err, 'Error: message.text(): a Postfix policy request carries no message body (ctx.connection.source is "postfix-policy")');
    assert.equal(failure?.line, 4);
  } finally { await s.stop(); }
});
