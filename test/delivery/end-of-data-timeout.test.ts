// The reply to the message's final dot was given commandTimeoutMs (5 minutes by default), as every other reply, and
// nodemailer's idle timeout as long. A next hop that scans mail before it answers (a before-queue content filter,
// an antivirus under load) may take longer; RFC 5321 §4.5.3.2.6 has the client wait 10 minutes for that reply,
// because giving up then leaves the message with the next hop and the retry sends it again (Postfix
// smtp_data_done_timeout, 600 s). Each such message arrived twice. Now that reply has delivery.endOfDataTimeoutMs
// (10 minutes), whatever commandTimeoutMs is; it is still bounded.
// The test keeps commandTimeoutMs short and the next hop's verdict several times longer, well within the new limit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startScriptedPeer } from '../helpers/scripted-peer.ts';
import { fakeResolver, startDeliveryServer } from '../helpers/delivery-server.ts';
import { configYaml, testListener } from '../helpers/config.ts';

const COMMAND_MS = 500;

async function server(port: number, endOfDataTimeoutMs: number): ReturnType<typeof startDeliveryServer> {
  return startDeliveryServer({
    config: configYaml({
      listeners: [testListener('in')],
      delivery: {
        enabled: true, route: { mx: true, port }, tls: { mode: 'none' }, retrySchedule: [3600],
        commandTimeoutMs: COMMAND_MS, endOfDataTimeoutMs,
      },
    }),
    scripts: { 'rcptto.ts': 'export default () => accept();' },
    resolver: fakeResolver({ 'dest.test': [{ exchange: 'mx.dest.test', priority: 10 }] }, { 'mx.dest.test': ['127.0.0.1'] }),
  });
}

test('a next hop slower than commandTimeoutMs to answer the final dot, within endOfDataTimeoutMs: delivered once', async () => {
  let verdicts = 0;
  const peer = await startScriptedPeer({
    endOfData: (s) => {
      // Six command timeouts, without a byte meanwhile (as a scanning host sends none).
      setTimeout(() => { verdicts++; s.write('250 2.0.0 queued after a long scan\r\n'); }, 6 * COMMAND_MS);
      return 'answered';
    },
  });
  const s = await server(peer.port, 120_000);
  try {
    const id = await s.send('a@origin.test', ['b@dest.test']);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'delivered', e.outcomes[0]!.reply);
    assert.equal(verdicts, 1);
  } finally {
    await s.stop();
    peer.close();
  }
});

test('a next hop that never answers the final dot: deferred once endOfDataTimeoutMs has passed (it may have it)', async () => {
  const peer = await startScriptedPeer({ endOfData: () => 'answered' });
  const s = await server(peer.port, 1000);
  try {
    const id = await s.send('a@origin.test', ['b@dest.test']);
    const e = await s.nextAttempt((x) => x.id === id, { past: true, timeoutMs: 60_000 });
    assert.equal(e.outcomes[0]!.status, 'temporary');
    assert.match(e.outcomes[0]!.reply, /may have it/);
  } finally {
    await s.stop();
    peer.close();
  }
});
